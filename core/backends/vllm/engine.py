"""One long-lived vLLM engine per loaded model, shared by every caller: a driver thread steps it
while any request is unfinished, and callers from any thread add their requests, abort them and
wait for them between steps. vLLM batches whatever is unfinished at each step (continuous
batching), so runs from many sessions generate together and none waits for another to finish.
A prompt's samples (in every rung of a ladder: ``loop.requests_of``) go in together, in one step (where
their rows outnumber vLLM's slots, they wait for room together, the callers' prompts in turn:
``Engine._admit``), so that a run's tokens do not depend on the load.

Only the driver thread touches vLLM's ``LLMEngine`` (it is not thread-safe): everything else
reaches it through ``Engine.call`` or the queue that ``submit`` and ``abort`` fill.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

from ... import openmp
from . import internals

log = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """vLLM's engine failed; the model has to be loaded again."""


@dataclass
class Request:
    id: str
    prompt: list[int]  # token ids
    params: Any  # vllm.SamplingParams


@dataclass
class Submission:
    """Requests submitted together, followed by the driver: each of ``groups`` (a prompt's samples) goes
    in at one step, as soon as there is room in vLLM's batch for all of it (vLLM's prefix cache shares
    the prompt among the requests of one step: internals, fact 14)."""

    groups: list[list[Request]]
    keys: tuple[str, ...] = ()  # the ESamp runs among the requests (``Engine``'s ``failed`` names them)
    ids: dict[str, list[int]] = field(default_factory=dict)  # request id -> its output token ids so far
    outputs: dict[str, Any] = field(default_factory=dict)  # request id -> its last RequestOutput
    steps: int = 0  # engine steps since the first request went in
    error: BaseException | None = None
    _unfinished: set[str] = field(default_factory=set)
    _waiting: deque = field(default_factory=deque)  # groups not in yet (``Engine._admit``)
    _admitted: int = 0  # groups let in
    _rows: int = 0  # rows held for them (``Engine._held``)
    _since: int = 0  # the engine step it came at
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self):
        self._unfinished = {r.id for group in self.groups for r in group}

    @property
    def queued(self) -> bool:
        """None of its requests is in yet: they wait for room in vLLM's batch (``Engine._admit``)."""
        return not self._admitted and bool(self._waiting) and not self.finished

    @property
    def finished(self) -> bool:
        return not self._unfinished or self.error is not None

    def wait(self, timeout: float) -> None:
        """Until the next engine step has been seen (or ``timeout`` seconds)."""
        with self._changed:
            if not self.finished:
                self._changed.wait(timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()


class Engine:
    """vLLM's ``LLM`` with the driver thread; ``failed()`` (optional) names the submissions whose
    work failed inside the engine after a step, so that they stop at once."""

    def __init__(self, llm, failed: Callable[[], dict[str, str]] | None = None):
        self.llm = llm
        self._core = llm.llm_engine
        self._failed = failed
        self._cv = threading.Condition()
        self._todo: list[Callable[[], None]] = []
        self._owner: dict[str, Submission] = {}  # unfinished request id -> its submission
        self._live: list[Submission] = []
        # A prompt's samples go in together (``_admit``): where rows outnumber vLLM's slots, a sample let in
        # alone would run ahead while its others wait for room, its distiller seeing that answer alone, and
        # the run's tokens would depend on the load.
        self._room = internals.admission_limit(llm)  # vLLM's rows a step (None: not known, no waiting)
        if self._room is None:
            log.warning("This vLLM does not say how many requests it runs a step (internals.py, fact 12): where "
                        "rows outnumber its slots, a run's answers may start apart and its tokens depend on the load.")
        self._held: dict[str, int] = {}  # request id -> rows it holds of ``_room``
        self._rows = 0  # their sum
        self._admitting: deque[Submission] = deque()  # submissions with groups not in yet
        self._steps = 0  # engine steps so far
        self._dead: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="esamp-vllm-engine", daemon=True)
        self._thread.start()

    @property
    def steps(self) -> int:
        """Engine steps so far (every caller's): what a benchmark counts around its calls."""
        return self._steps

    def submit(self, sub: Submission) -> Submission:
        """Add ``sub``'s requests at the next step; returns it (follow it with ``wait`` and ``finished``).
        The calling thread's OpenMP threads go first (``core.openmp``): it waits while
        the driver computes, whose kernels run slower while another thread's team is kept."""
        openmp.release_team()
        self._queue(lambda: self._start(sub))
        return sub

    def abort(self, sub: Submission, error: BaseException | None = None) -> None:
        """Abort ``sub``'s unfinished requests (and the ones not in yet); ``error`` is kept on it."""
        self._queue(lambda: self._end(sub, error))

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(llm)`` on the driver thread, between two steps; returns its result or raises its error."""
        done: Future = Future()

        def run() -> None:
            try:
                done.set_result(fn(self.llm))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        self._queue(run)
        return done.result()

    def close(self) -> None:
        """Shut vLLM's engine down (its process too) and stop the driver; runs still going fail."""
        def shut(llm) -> None:
            llm.llm_engine.engine_core.shutdown()
            self._die(EngineDeadError("the model was closed"))

        try:
            self.call(shut)
        except EngineDeadError:
            pass  # closed already

    def _queue(self, action: Callable[[], None]) -> None:
        with self._cv:
            if self._dead is not None:
                raise EngineDeadError(f"The vLLM engine stopped: {self._dead}") from self._dead
            self._todo.append(action)
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._todo and self._dead is None and not self._core.has_unfinished_requests() \
                        and not self._admitting:
                    self._cv.wait()
                if self._dead is not None:
                    break
                todo, self._todo = self._todo, []
            for action in todo:
                action()
            if self._dead is not None:  # closed by one of them
                break
            self._admit()
            if not self._core.has_unfinished_requests():
                continue
            try:
                outputs = self._core.step()
                failed = self._failed() if self._failed else {}
            except BaseException as exc:  # noqa: BLE001 - every caller hears of it
                log.exception("the vLLM engine failed")
                self._die(exc)
                return
            self._dispatch(outputs, failed)

    def _dispatch(self, outputs, failed: dict[str, str]) -> None:
        for out in outputs:
            sub = self._owner.get(out.request_id)
            if sub is None:
                continue
            sub.ids.setdefault(out.request_id, []).extend(out.outputs[0].token_ids)
            sub.outputs[out.request_id] = out
            if out.finished:
                self._owner.pop(out.request_id, None)
                sub._unfinished.discard(out.request_id)
                rows = self._held.pop(out.request_id, 0)
                self._rows -= rows
                sub._rows -= rows
        self._steps += 1
        for sub in list(self._live):
            sub.steps += bool(sub._admitted)
            problem = next((failed[k] for k in sub.keys if k in failed), None)
            if problem is not None:
                self._end(sub, RuntimeError(f"ESamp failed inside vLLM: {problem}"))
            elif not sub._unfinished:
                self._live.remove(sub)
            sub._notify()

    def _start(self, sub: Submission) -> None:
        self._live.append(sub)
        sub._waiting.extend(sub.groups)
        sub._since = self._steps
        self._admitting.append(sub)

    def _admit(self) -> None:
        """Let groups in, each with room held for all its rows. Where every waiting one fits in vLLM's batch
        beside the rows in it, all go in. Else they go in while they fit (or the batch is empty: a prompt
        with more samples than vLLM's slots), the submission with the fewest prompts in first, the earliest
        among equals, so that every session's first answers start; one that came at this step takes its
        later prompts' room only from the next step where another's rows are in (the sessions that press
        Generate with it reach the driver a step or two apart)."""
        self._admitting = deque(sub for sub in self._admitting if sub._waiting)
        if self._room is None or self._rows + sum(_rows(g) for sub in self._admitting for g in sub._waiting) \
                <= self._room:
            for sub in self._admitting:
                while sub._waiting:
                    self._let_in(sub)
            self._admitting.clear()
            return
        while self._admitting:
            idle = not self._core.has_unfinished_requests()  # (room held, none in: a leak)
            ready = [sub for sub in self._admitting if idle or not sub._admitted or sub._since < self._steps
                     or sub._rows == self._rows]
            if not ready:
                return
            sub = min(ready, key=lambda x: x._admitted)  # (min keeps the earliest of equals)
            if self._rows + _rows(sub._waiting[0]) > self._room and not idle:
                return  # (in order: a later, smaller group does not pass it)
            self._let_in(sub)
            self._admitting = deque(sub for sub in self._admitting if sub._waiting)

    def _let_in(self, sub: Submission) -> None:
        """``sub``'s next group in, with room held for its rows."""
        group = sub._waiting.popleft()
        for r in group:
            self._held[r.id] = r.params.n
        rows = _rows(group)
        self._rows += rows
        sub._rows += rows
        sub._admitted += 1
        try:
            for r in group:
                self._add(sub, r)
        except Exception as exc:  # noqa: BLE001 - e.g. vLLM refusing a request's parameters
            self._end(sub, exc)

    def _add(self, sub: Submission, request: Request) -> None:
        self._owner[request.id] = sub
        self._core.add_request(request.id, {"prompt_token_ids": request.prompt}, request.params)

    def _end(self, sub: Submission, error: BaseException | None) -> None:
        started = [i for i in sub._unfinished if self._owner.get(i) is sub]
        if started:
            self._core.abort_request(started)
        for i in started:
            del self._owner[i]
        for i in sub._unfinished:
            self._rows -= self._held.pop(i, 0)
        sub._rows = 0
        sub._waiting.clear()
        sub._unfinished.clear()
        if error is not None and sub.error is None:
            sub.error = error
        if sub in self._live:
            self._live.remove(sub)
        sub._notify()

    def _die(self, exc: BaseException) -> None:
        """On the driver thread: every caller hears of ``exc``, and the driver stops."""
        with self._cv:
            self._dead = exc
            todo, self._todo = self._todo, []
        for sub in self._live:
            sub.error = sub.error or EngineDeadError(f"The vLLM engine stopped: {exc}")
            sub._notify()
        self._live.clear()
        self._admitting.clear()
        for action in todo:  # calls waiting for an answer get the error
            action()


def _rows(group: list[Request]) -> int:
    """The rows of a group (vLLM makes a request of n samples n)."""
    return sum(r.params.n for r in group)
