"""ESamp's vLLM v1 logits processor: it keeps track of which batch row belongs to which ESamp run,
creates each run's state (``state.RunState``) as its first request joins, and hands every step's
rows of each run to that run, which filters, predicts, fuses, trains and records. Requests outside
an ESamp run pass through untouched; any number of runs share a step.

A request opts in through ``SamplingParams.extra_args``: the in-process backend's through
``state.request_extra`` (the caller takes a finished run's result, which frees its state, through
the worker extension, worker.py), a served request through ``esamp_*`` keys in its ``vllm_xargs``
(served.py: a run per request, its n samples its rows, freed once they have all left the batch).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Iterable

import torch

from .. import hardware
from . import internals, served
from .hooks import install_hooks
from .state import EXTRA_KEY, Capture, FailedRun, Row, RunState, check_extra

internals.prepare_environment()  # before anything imports vllm
hardware.keep_freed_memory()  # in vLLM's worker process too (where this module is loaded)

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # vLLM not installed: the module still imports, load() explains
    LogitsProcessor = object  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)
TAKEN_KEPT = 4096  # keys of taken runs remembered, so a late row of one never starts it again
SERVED_KEPT = 64  # freed served runs remembered by ``served``
SERVED_RESTING = 16  # served runs kept out of the batch while some of their requests have not joined


class VllmProcessor(LogitsProcessor):
    """vLLM v1 logits processor; does nothing for requests that are not part of an ESamp run."""

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, Row] = {}  # persistent batch index -> row
        self.runs: dict[str, RunState] = {}  # live runs by key
        self._taken: OrderedDict[str, None] = OrderedDict()
        self.capture = Capture()
        self.head = None  # set when the hooks are installed (worker extension, or a served run's first request)
        model = vllm_config.model_config if vllm_config is not None else None
        # the model as core.backends.start keys its pretrained distiller: its source and dtype
        self.model = (model.model, str(model.dtype).removeprefix("torch.")) if model is not None else None
        # served run -> (its n, the row of each request by its output list)
        self._served: dict[str, tuple[int, dict[int, int]]] = {}
        self._resting: OrderedDict[str, None] = OrderedDict()  # served runs out of the batch with rows to come
        self.served_done: deque[tuple[int, int]] = deque(maxlen=SERVED_KEPT)  # (n, rows that joined) of freed runs

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """A request's ESamp arguments are checked where vLLM takes the request (a served one: HTTP 400)."""
        extra = sampling_params.extra_args or {}
        if EXTRA_KEY in extra:
            check_extra(extra[EXTRA_KEY])
        elif served.wants_esamp(extra):
            served.prepare(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # fusion can change the most likely token

    def update_state(self, batch_update: "BatchUpdate | None") -> None:
        if batch_update is not None:
            for index, params, _prompt, _out in batch_update.added:
                args = (params.extra_args or {}) if params is not None else {}
                extra = args.get(EXTRA_KEY)
                if extra is not None and extra["run"] not in self.runs and extra["run"] not in self._taken:
                    self.runs[extra["run"]] = RunState.of(extra, self.head, model=self.model)  # a failure is kept
                elif served.RUN_KEY in args and args[served.RUN_KEY] not in self.runs:
                    self._start_served(args)
        process_dict_updates(self.rows, batch_update, self._row_of)
        if self._served and batch_update is not None and batch_update.removed:
            self._free_served()

    def _start_served(self, args: dict) -> None:
        key = args[served.RUN_KEY]
        self._served[key] = (args[served.CONFIG_KEY]["sampling"]["n"], {})  # checked by served.prepare
        if self.head is None:
            try:
                with torch.inference_mode(False):  # the head's norm enters the distiller's graph
                    self.head = install_hooks(internals.worker_model(), self.capture)
            except Exception as exc:  # noqa: BLE001 - the engine goes on
                self.runs[key] = FailedRun(f"{type(exc).__name__}: {exc}")
                log.error("ESamp cannot run served requests in this worker: %s", self.runs[key].error)
                return
        extra = {"run": key, "row": 0, "prompts": 1, "config": args[served.CONFIG_KEY]}
        self.runs[key] = RunState.of(extra, self.head, record=False, model=self.model)

    def _row_of(self, params, _prompt_ids, out: list[int]) -> Row | None:
        args = params.extra_args or {}
        if EXTRA_KEY in args:
            return Row(args[EXTRA_KEY]["run"], args[EXTRA_KEY]["row"], out)
        if args.get(served.RUN_KEY) not in self._served:
            return None
        rows = self._served[args[served.RUN_KEY]][1]
        self._resting.pop(args[served.RUN_KEY], None)
        # A request keeps its output list when vLLM preempts and resumes it: the same row again.
        return Row(args[served.RUN_KEY], rows.setdefault(id(out), len(rows)), out)

    def _free_served(self) -> None:
        """Free the served runs whose every request has joined and left the batch. A run some of whose
        requests never joined (a client that went away, or data parallelism placing them on another
        engine) rests until ``SERVED_RESTING`` later ones have; a request that joins it meanwhile goes on."""
        live = {r.run for r in self.rows.values()}
        for key, (n, rows) in list(self._served.items()):
            if key in live or key in self._resting:
                continue
            if len(rows) == n:
                self._drop_served(key)
            else:
                self._resting[key] = None
        while len(self._resting) > SERVED_RESTING:
            self._drop_served(self._resting.popitem(last=False)[0])

    def _drop_served(self, key: str) -> None:
        n, rows = self._served.pop(key)
        del self.runs[key]
        self.served_done.append((n, len(rows)))

    def served(self) -> dict:
        """What the served runs are doing: how many are live, and (n, rows) of the last ones freed; and
        how many ESamp runs of any kind hold state here (``runs``)."""
        return {"live": len(self._served) - len(self._resting), "resting": len(self._resting),
                "done": list(self.served_done), "runs": len(self.runs)}

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        by_run: dict[str, list[tuple[int, Row]]] = {}
        for i, r in sorted(self.rows.items()):
            if i < logits.shape[0] and r.run in self.runs:
                by_run.setdefault(r.run, []).append((i, r))
        for key, batch in by_run.items():
            out = self.runs[key].step(logits, batch, self.capture)
            if out is None:
                continue
            if len(batch) == logits.shape[0]:  # one run has the whole batch: no copy
                return out
            logits[torch.tensor([i for i, _ in batch], device=logits.device)] = out
        return logits

    def take(self, key: str) -> dict:
        """A finished run's result (``RunState.result``), its state freed; {"error": ...} for an unknown key."""
        run = self.runs.pop(key, None)
        self._taken[key] = None
        while len(self._taken) > TAKEN_KEPT:
            self._taken.popitem(last=False)
        if run is None:
            return {"error": f"no ESamp run {key!r} in this engine (it never started, or was taken)"}
        return run.result()

    def failed(self) -> dict[str, str]:
        """The live runs whose step failed, and how."""
        return {k: r.error for k, r in self.runs.items() if r.error is not None}


def install_at_load(runner) -> None:
    """Graph-safe capture's hooks (hooks.py), installed as the runner loads its model, before vLLM
    compiles and captures it (``internals.after_model_load``; the plugin registers this)."""
    processor = find(runner.input_batch.logitsprocs.all)
    with torch.inference_mode(False):  # the head's norm enters the distiller's graph
        processor.head = install_hooks(runner.get_model(), processor.capture, runner)


def find(processors: Iterable) -> VllmProcessor:
    """The ESamp processor among a model runner's logits processors."""
    mine = [p for p in processors if isinstance(p, VllmProcessor)]
    if len(mine) != 1:
        raise internals.VllmUnavailableError(
            f"vLLM runs {len(mine)} ESamp logits processors in this worker; expected exactly one.")
    return mine[0]

