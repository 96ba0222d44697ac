"""Processes started ahead of the tests that use them.

On this project's machines (2 cores) the suite's own process keeps about one core busy, and starting
a vLLM server or an app is mostly one core's work: Python processes importing vLLM, torch and
Streamlit one after another. So the suite starts them early, one at a time, in a thread of its own,
while the slow test file before theirs runs; a test that needs one finds it ready or waits for the rest
of its start. Each is still stopped when its test module is done. (Started all at the session's start,
they took three cores' work and, on 24 GiB, all the memory: one file ahead holds a few at a time.)

A start is a function of a temporary folder that returns a context manager (entered: the process is
ready; exited: it is stopped). ``fixture`` makes it a module-scoped fixture of the same name and
registers it; ``schedule`` (tests/conftest.py, once per session) plans, in the order the selected
tests will use them, the registered starts those tests use; each is begun once the suite has reached
the slow file before its own (``reached``, as each test starts) and enough memory is free (``FREE_GIB``).
A start the thread has not begun when its test needs it (a test run on its own) is made by its
fixture, as any fixture's would be.
"""

from __future__ import annotations

import threading
import time
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


FREE_GIB = 8.0  # a start ahead waits until this much memory is free: a vLLM server is 3-6 GiB of processes


class Ahead:
    """Enters scheduled starts one after another in a background thread, each once ``FREE_GIB`` of
    memory is free; ``take`` hands one over, or makes the start itself when the thread has not begun it."""

    def __init__(self, free_gib: float = FREE_GIB):
        self.free_gib = free_gib
        self._order: list[tuple[str, str]] = []
        self._after: dict[tuple[str, str], str] = {}
        self._seen: set[str] = set()
        self._reached: dict[tuple[str, str], threading.Event] = {}
        self._ready: dict[tuple[str, str], threading.Event] = {}
        self._entered: dict[tuple[str, str], tuple] = {}
        self._begun: set[tuple[str, str]] = set()  # by the thread
        self._claimed: set[tuple[str, str]] = set()  # by their takers, before the thread began them
        self._lock = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None

    def schedule(self, plan: list[tuple[tuple[str, str], str]], tmp_path_factory) -> None:
        """``plan``: (a start, the test whose start lets it begin), in the order to start them."""
        self._after = {k: test for k, test in plan if k in _starts}
        self._order = list(self._after)
        self._ready = {k: threading.Event() for k in self._order}
        self._reached = {k: threading.Event() for k in self._order}
        for key in self._order:
            if self._after[key] in self._seen:  # the first test's own start comes before the session's fixtures
                self._reached[key].set()
        if self._order:
            self._thread = threading.Thread(target=self._run, args=(tmp_path_factory,), name="ahead", daemon=True)
            self._thread.start()

    def _run(self, tmp_path_factory) -> None:
        for key in self._order:
            while not self._closing and key not in self._claimed and not (
                    self._reached[key].is_set() and free_gib() >= self.free_gib):
                time.sleep(1)
            with self._lock:
                if self._closing or key in self._claimed:
                    continue
                self._begun.add(key)
            self._entered[key] = _enter(key, tmp_path_factory)
            self._ready[key].set()

    def reached(self, test: str) -> None:
        """The suite is starting ``test`` (its node id): the starts planned after it may begin."""
        self._seen.add(test)
        for key, after in self._after.items():
            if after == test:
                self._reached[key].set()

    @contextmanager
    def take(self, key: tuple[str, str], tmp_path_factory):
        """The start's value once it is ready (started now if the thread has not begun it); stopped on exit."""
        with self._lock:
            ahead = key in self._begun
            self._claimed.add(key)
        if ahead:
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


def free_gib() -> float:
    """The memory the machine can still give (MemAvailable), in GiB; unbounded where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return float("inf")
    return kib / 2**20


def _enter(key: tuple[str, str], tmp_path_factory) -> tuple:
    """(the start's context manager, its value, None) once ready, or (None, None, why not)."""
    try:
        manager = _starts[key](tmp_path_factory.mktemp(key[1]))
        return manager, manager.__enter__(), None
    except BaseException as exc:  # noqa: BLE001 - raised again in the test that takes it
        return None, None, exc


def used_by(items) -> list[tuple[tuple[str, str], str]]:
    """The registered starts ``items`` use, in the order of the first test that uses each, each with
    the test whose start lets it begin: the first of the last slow file (marked ``slow``: long enough
    to hide a start) before the file of the first test that uses it, else that file's first test."""
    plan: list[tuple[tuple[str, str], str]] = []
    firsts: list[tuple[str, str]] = []  # (slow file, its first test's node id), in order
    for item in items:
        file = item.nodeid.split("::")[0]
        if item.get_closest_marker("slow") and (not firsts or firsts[-1][0] != file):
            firsts.append((file, item.nodeid))
        before = [test for f, test in firsts if f != file]
        if any(m.name == "skip" or (m.args and m.args[0] is True) for m in item.iter_markers()
               if m.name in ("skip", "skipif")):
            continue  # skipped for certain (vLLM not installed): nothing to start for it
        module = getattr(item, "module", None)
        for name in getattr(item, "fixturenames", ()):
            key = (module.__name__ if module else "", name)
            if key in _starts and key not in [k for k, _ in plan]:
                plan.append((key, before[-1] if before else _first_of(items, file)))
    return plan


def _first_of(items, file: str) -> str:
    return next(item.nodeid for item in items if item.nodeid.split("::")[0] == file)


AHEAD = Ahead()
