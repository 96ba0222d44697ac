"""tests/ahead.py: starts made ahead in order, handed over ready, errors raised where they are taken,
and what nobody took stopped at the end."""

import threading
from contextlib import contextmanager

import pytest

import ahead

EVENTS: list[str] = []
GATE = threading.Event()  # the first start waits for it: a take that comes early waits for the start


@contextmanager
def _running(name: str, fail: bool = False):
    EVENTS.append(f"start {name}")
    if name == "first":
        assert GATE.wait(30)
    if fail:
        raise RuntimeError(f"{name} did not start")
    yield f"{name} ready"
    EVENTS.append(f"stop {name}")


def first(folder):
    assert folder.is_dir()
    return _running("first")


def second(folder):
    return _running("second", fail=True)


def third(folder):
    return _running("third")


for start in (first, second, third):
    ahead.fixture(start)  # registered under this module's name, as the test files' fixtures are
KEYS = [(__name__, s.__name__) for s in (first, second, third)]


def test_starts_are_made_in_order_and_handed_over_ready(tmp_path_factory):
    EVENTS.clear()
    GATE.clear()
    starts = ahead.Ahead(free_gib=0)
    starts.schedule(KEYS + [("elsewhere", "unregistered")], tmp_path_factory)
    threading.Timer(0.2, GATE.set).start()
    with starts.take(KEYS[0], tmp_path_factory) as value:  # taken before its start is done: waits
        assert value == "first ready"
    assert "stop first" in EVENTS
    with pytest.raises(RuntimeError, match="second did not start"):  # the start's error, where it is taken
        with starts.take(KEYS[1], tmp_path_factory):
            pass
    starts.close()  # third was never taken: stopped here
    assert [e for e in EVENTS if e.startswith("start")] == ["start first", "start second", "start third"]
    assert EVENTS[-1] == "stop third" and "stop second" not in EVENTS  # one after another, the failed one never ran


def test_a_start_nobody_scheduled_is_made_when_taken(tmp_path_factory):
    EVENTS.clear()
    GATE.set()
    starts = ahead.Ahead()
    with starts.take(KEYS[2], tmp_path_factory) as value:
        assert value == "third ready" and EVENTS == ["start third"]
    assert EVENTS == ["start third", "stop third"]
    starts.close()


def test_a_start_waits_for_free_memory_and_its_taker_makes_it_when_there_is_none(tmp_path_factory):
    EVENTS.clear()
    GATE.set()
    starts = ahead.Ahead(free_gib=float("inf"))  # never that much free: nothing starts ahead
    starts.schedule(KEYS[2:], tmp_path_factory)
    with starts.take(KEYS[2], tmp_path_factory) as value:  # made here, by its taker
        assert value == "third ready"
    starts.close()  # the thread, still waiting for memory, gives up
    assert EVENTS == ["start third", "stop third"]
    assert 0 < ahead.free_gib()  # this machine says what it has free


def test_the_starts_a_session_schedules_are_those_its_tests_use_in_their_order(request):
    class Item:
        def __init__(self, names, skip=False):
            self.module, self.fixturenames = request.module, names
            self._skip = skip

        def iter_markers(self):
            return [pytest.mark.skipif(True, reason="").mark] if self._skip else []

    items = [Item(["tmp_path"]), Item(["third", "tmp_path"]), Item(["second"], skip=True), Item(["first", "third"])]
    assert ahead.used_by(items) == [KEYS[2], KEYS[0]]
