"""tests/ahead.py: starts made ahead in order, handed over ready, errors raised where they are taken,
and what nobody took stopped at the end."""

import threading
import time
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
    starts.reached("a::test")  # reached before the plan is made (the session's first test): it counts
    starts.schedule([(KEYS[0], "a::test"), (KEYS[1], "b::test"), (KEYS[2], "b::test"),
                     (("elsewhere", "unregistered"), "a::test")], tmp_path_factory)
    threading.Timer(0.2, GATE.set).start()
    with starts.take(KEYS[0], tmp_path_factory) as value:  # taken before its start is done: waits
        assert value == "first ready"
    assert "stop first" in EVENTS
    time.sleep(1.5)
    assert "start second" not in EVENTS  # not before the suite reaches the test it waits for
    starts.reached("b::test")
    starts.reached("a::test")  # again, after the plan: the unregistered start planned after it is no matter
    with pytest.raises(RuntimeError, match="second did not start"):  # the start's error, where it is taken
        with starts.take(KEYS[1], tmp_path_factory):
            pass
    for _ in range(300):  # third begins once second has failed
        if "stop third" in EVENTS or "start third" in EVENTS:
            break
        time.sleep(0.1)
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
    starts.schedule([(KEYS[2], "a::test")], tmp_path_factory)
    starts.reached("a::test")
    with starts.take(KEYS[2], tmp_path_factory) as value:  # made here, by its taker
        assert value == "third ready"
    starts.close()  # the thread, still waiting for memory, gives up
    assert EVENTS == ["start third", "stop third"]
    assert 0 < ahead.free_gib()  # this machine says what it has free


def test_the_starts_a_session_schedules_are_those_its_tests_use_in_their_order(request):
    class Item:
        def __init__(self, file, names, skip=False, slow=True):
            self.module, self.fixturenames, self.nodeid = request.module, names, f"{file}::test_{len(names)}"
            self._skip, self._slow = skip, slow

        def iter_markers(self):
            return [pytest.mark.skipif(True, reason="").mark] if self._skip else []

        def get_closest_marker(self, name):
            return pytest.mark.slow.mark if name == "slow" and self._slow else None

    items = [Item("a.py", ["tmp_path"]), Item("b.py", ["third", "tmp_path"]), Item("c.py", ["second"], skip=True),
             Item("d.py", [], slow=False), Item("e.py", ["first", "third"])]
    # each may begin with the first test of the last slow file before its first user's (d.py is quick)
    assert ahead.used_by(items) == [(KEYS[2], "a.py::test_1"), (KEYS[0], "c.py::test_1")]
    assert ahead.used_by(items[1:2]) == [(KEYS[2], "b.py::test_2")]  # in the first file: with its first test
