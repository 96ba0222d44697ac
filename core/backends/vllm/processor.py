"""ESamp's vLLM v1 logits processor: it keeps track of which batch row belongs to which ESamp run,
creates each run's state (``state.RunState``) as its first request joins, and hands every step's
rows of each run to that run, which filters, predicts, fuses, trains and records. Requests outside
an ESamp run pass through untouched; any number of runs share a step.

A request opts in through ``SamplingParams.extra_args`` (``state.request_extra``). The caller
takes a finished run's result, which frees its state, through the worker extension (worker.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable

import torch

from . import internals
from .state import EXTRA_KEY, Capture, Row, RunState, check_extra

internals.prepare_environment()  # before anything imports vllm

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # vLLM not installed: the module still imports, load() explains
    LogitsProcessor = object  # type: ignore[misc,assignment]

TAKEN_KEPT = 4096  # keys of taken runs remembered, so a late row of one never starts it again


class VllmProcessor(LogitsProcessor):
    """vLLM v1 logits processor; does nothing for requests that are not part of an ESamp run."""

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, Row] = {}  # persistent batch index -> row
        self.runs: dict[str, RunState] = {}  # live runs by key
        self._taken: OrderedDict[str, None] = OrderedDict()
        self.capture = Capture()
        self.head = None  # set by the worker extension when it installs the hooks

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        """A request's ESamp arguments are checked where vLLM takes the request (a served one: HTTP 400)."""
        extra = (sampling_params.extra_args or {}).get(EXTRA_KEY)
        if extra is not None:
            check_extra(extra)

    def is_argmax_invariant(self) -> bool:
        return False  # fusion can change the most likely token

    def update_state(self, batch_update: "BatchUpdate | None") -> None:
        if batch_update is not None:
            for index, params, _prompt, _out in batch_update.added:
                extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
                if extra is not None and extra["run"] not in self.runs and extra["run"] not in self._taken:
                    self.runs[extra["run"]] = RunState.of(extra, self.head)  # a failure is kept in the state
        process_dict_updates(self.rows, batch_update, _row_of)

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


def find(processors: Iterable) -> VllmProcessor:
    """The ESamp processor among a model runner's logits processors."""
    mine = [p for p in processors if isinstance(p, VllmProcessor)]
    if len(mine) != 1:
        raise internals.VllmUnavailableError(
            f"vLLM runs {len(mine)} ESamp logits processors in this worker; expected exactly one.")
    return mine[0]


def _row_of(params, _prompt_ids, out: list[int]) -> Row | None:
    mine = (params.extra_args or {}).get(EXTRA_KEY)
    return None if mine is None else Row(mine["run"], mine["row"], out)
