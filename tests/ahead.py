"""Processes started ahead of the tests that use them.

On this project's machines (2 cores) the suite's own process keeps about one core busy, and starting
a vLLM server or an app is mostly one core's work: Python processes importing vLLM, torch and
Streamlit one after another. So the suite starts them early, one at a time, in a thread of its own,
while the first test files run; a test that needs one finds it ready or waits for the rest of its
start. Each is still stopped when its test module is done.

A start is a function of a temporary folder that returns a context manager (entered: the process is
ready; exited: it is stopped). ``fixture`` makes it a module-scoped fixture of the same name and
registers it; ``schedule`` (tests/conftest.py, once per session) starts, in the order the selected
tests will use them, the registered starts those tests use. A start nobody scheduled (a test run on its
own) happens when its fixture is set up, as any fixture's would.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Callable

import pytest

Start = Callable[[Path], AbstractContextManager]
_starts: dict[tuple[str, str], Start] = {}  # (test module, fixture name) -> its start


def fixture(start: Start):
    """``start`` as a module-scoped fixture of its name, started ahead when the session schedules it."""
    key = (start.__module__, start.__name__)
    _starts[key] = start

    @pytest.fixture(scope="module", name=start.__name__)
    def started(tmp_path_factory):
        with AHEAD.take(key, tmp_path_factory) as value:
            yield value

    started.__doc__ = start.__doc__
    return started


class Ahead:
    """Enters scheduled starts one after another in a background thread; ``take`` hands one over."""

    def __init__(self):
        self._order: list[tuple[str, str]] = []
        self._ready: dict[tuple[str, str], threading.Event] = {}
        self._entered: dict[tuple[str, str], tuple] = {}
        self._closing = False
        self._thread: threading.Thread | None = None

    def schedule(self, keys: list[tuple[str, str]], tmp_path_factory) -> None:
        self._order = [k for k in keys if k in _starts]
        self._ready = {k: threading.Event() for k in self._order}
        if self._order:
            self._thread = threading.Thread(target=self._run, args=(tmp_path_factory,), name="ahead", daemon=True)
            self._thread.start()

    def _run(self, tmp_path_factory) -> None:
        for key in self._order:
            if self._closing:
                self._entered[key] = (None, None, RuntimeError("the session ended before this start"))
            else:
                self._entered[key] = _enter(key, tmp_path_factory)
            self._ready[key].set()

    @contextmanager
    def take(self, key: tuple[str, str], tmp_path_factory):
        """The start's value once it is ready (started now if it was not scheduled); stopped on exit."""
        if key in self._ready:
            self._ready[key].wait()
            manager, value, error = self._entered.pop(key)
        else:
            manager, value, error = _enter(key, tmp_path_factory)
        if error is not None:
            raise error
        try:
            yield value
        finally:
            manager.__exit__(None, None, None)

    def close(self) -> None:
        """At the session's end: stop what was started and never taken (a test deselected by -x)."""
        self._closing = True
        if self._thread is not None:
            self._thread.join()
        for manager, _, error in self._entered.values():
            if error is None:
                manager.__exit__(None, None, None)
        self._entered.clear()


def _enter(key: tuple[str, str], tmp_path_factory) -> tuple:
    """(the start's context manager, its value, None) once ready, or (None, None, why not)."""
    try:
        manager = _starts[key](tmp_path_factory.mktemp(key[1]))
        return manager, manager.__enter__(), None
    except BaseException as exc:  # noqa: BLE001 - raised again in the test that takes it
        return None, None, exc


def used_by(items) -> list[tuple[str, str]]:
    """The registered starts ``items`` use, in the order of the first test that uses each."""
    keys: list[tuple[str, str]] = []
    for item in items:
        module = getattr(item, "module", None)
        if any(m.name == "skip" or (m.args and m.args[0] is True) for m in item.iter_markers()
               if m.name in ("skip", "skipif")):
            continue  # skipped for certain (vLLM not installed): nothing to start for it
        for name in getattr(item, "fixturenames", ()):
            key = (module.__name__ if module else "", name)
            if key in _starts and key not in keys:
                keys.append(key)
    return keys


AHEAD = Ahead()
