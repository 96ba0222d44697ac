"""One ESamp run's state inside vLLM's worker: created by the processor when the run's first request
joins, stepped with the run's rows of every engine step, taken (and freed) by the caller once the
run's requests have all finished.

Everything a run needs comes with its requests as one record, in process and served alike
(request.py: ``SamplingParams.extra_args[EXTRA_KEY]``, ``request_extra``): its key, the row of each request
(prompt * n + sample: the prompt's distiller), the number of prompts and the whole ``RunConfig``.
Any number of runs share an engine step; each has its own Pipeline (distillers, seeds, recorder),
so one run never sees another's rows.

The chosen token of a step is known only after vLLM samples it, so a step's signals wait
(``PendingSignals``) until the request's output list holds that token.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from ...config import EsampConfig, RunConfig
from ...esamp.distiller import Lease, SharedBank
from ...esamp.head import LMHead
from ...esamp.signals import PendingSignals
from ...esamp.steerer import Pipeline, Planned
from .. import start
from ..record import Recorder
from . import internals
from .request import check_record

log = logging.getLogger(__name__)
Banks = Callable[[EsampConfig, "list[torch.Tensor] | None"], SharedBank]  # Registry.bank


@dataclass
class Capture:
    """The states of the latest forward pass at the sampled rows, written by the model's hooks."""

    s: torch.Tensor | None = None  # (B, H) float32, first decoder layer's residual stream
    h: torch.Tensor | None = None  # (B, H) float32, LM head input
    graph_safe: bool = False  # filled by graph-safe hooks (hooks.py)


@dataclass
class Begun:
    """A run's step up to its fusion (``RunState.begin``)."""

    planned: Planned
    raw: torch.Tensor  # (R, V) the run's rows of the model's logits
    batch: list[tuple[int, "Row"]]
    t: list[int]  # the position each row is at
    in_place: bool = False  # raw is vLLM's logits or a view of their rows (no copy: what is written there stays)


@dataclass
class Row:
    run: str  # the run's key
    row: int  # prompt * n + sample
    out: list[int]  # vLLM's live list of this request's output token ids


class FailedRun:
    """A run whose state could not be made: its rows keep the model's logits, its result is the error."""

    def __init__(self, error: str):
        self.error = error

    def stage(self, *_args) -> None:
        return None

    def begin(self, *_args) -> None:
        return None

    def close(self) -> None:
        pass

    def result(self) -> dict:
        return {"error": self.error}


class RunState:
    """One run's Pipeline and what waits to be recorded, stepped by the processor."""

    def __init__(self, key: str, config: RunConfig, prompts: int, head: LMHead, record: bool = True,
                 model: tuple[str, str] | None = None, banks: Banks | None = None, ladder: Sequence[RunConfig] = ()):
        """record: keep every token's signals for ``result`` (a served run has nobody to take them);
        model: the engine's model source and dtype, for a pretrained distiller (core.backends.start);
        banks: the worker's shared distiller bank for a config and its initial weights (None: this run's own);
        ladder: the runs stepped as this one (request.py), whose results ``result`` gives rung by rung."""
        self.key = key
        self.record = record
        self.config = config
        self.prompts = prompts
        self.rungs = max(len(ladder), 1)
        initial = start.initial(*model, config.esamp) if model and config.uses_distiller else None
        shared = banks(config.esamp, initial) if banks is not None and config.uses_distiller else None
        self.pipeline = Pipeline(config, head, prompts, initial, shared, ladder)
        self.recorder = Recorder(prompts * config.sampling.n * self.rungs)
        self.pending: list[tuple[list[Row], list[int], PendingSignals]] = []  # tokens not sampled yet
        self.first_step_at: float | None = None
        self.error: str | None = None

    @classmethod
    def of(cls, extra: dict, head: LMHead | None, model: tuple[str, str] | None = None,
           banks: Banks | None = None) -> "RunState | FailedRun":
        """The state of the run a request's record describes, or a FailedRun saying why there is none."""
        try:
            if head is None:
                raise internals.VllmUnavailableError("ESamp's hooks are not installed in this vLLM worker.")
            with torch.inference_mode(False):  # vLLM updates its batch under inference mode; the distiller trains
                config, ladder = check_record(extra)
                return cls(extra["run"], config, extra["prompts"], head, extra.get("record", True), model, banks,
                           ladder)
        except Exception as exc:  # noqa: BLE001 - the engine goes on; the caller gets the message
            return FailedRun(f"{type(exc).__name__}: {exc}")

    def stage(self, logits: torch.Tensor, batch: list[tuple[int, Row]],
              capture: Capture) -> tuple[Lease, torch.Tensor] | None:
        """Before ``begin``: this step's shallow states of the run's rows for its shared bank's forward
        pass (``Pipeline.stage``); None without a distiller, or once the run has failed."""
        if self.error is not None:
            return None
        try:
            _, s, _, slots = self._rows(logits, batch, capture)
            with torch.inference_mode(False):
                return self.pipeline.stage(s.clone(), slots)
        except Exception as exc:  # noqa: BLE001 - as ``begin``
            self.fail(exc)
            return None

    def begin(self, logits: torch.Tensor, batch: list[tuple[int, Row]], capture: Capture) -> "Begun | None":
        """This run's rows of the step (batch index, row) up to their fusion (``Pipeline.plan``), which the
        registry runs with the other runs' (``core.esamp.fusion.together``) before ``end``. A failure is
        kept for the caller (None: the rows keep the model's logits)."""
        if self.error is not None:
            return None
        with self._bookkeeping():
            try:
                return self._begin(logits, batch, capture)
            except Exception as exc:  # noqa: BLE001 - keep vLLM's engine and the other runs alive
                self.fail(exc)
                return None

    def _begin(self, logits: torch.Tensor, batch: list[tuple[int, Row]], capture: Capture) -> "Begun":
        if self.record:
            self.record_sampled()
        index, s, h, slots = self._rows(logits, batch, capture)
        # vLLM's logits where the run's rows lie in a row (no copy of 16 rows x 49,152 per run and step, nor
        # a write back: 31-35 ms a step for 64 runs' 1,024 rows on a 2-core EPYC); else a copy (index_select:
        # 4x an index's gather at 512 x 49,152)
        raw = logits if index is None else logits[index] if isinstance(index, slice) else logits.index_select(0, index)
        t = [len(r.out) for _, r in batch]  # the position each row is at
        # vLLM samples under inference_mode; the distiller needs autograd, on ordinary tensors
        # (s and h enter its graph; the logits do not).
        with torch.inference_mode(False):
            planned = self.pipeline.plan(raw, s.clone(), h.clone(), torch.tensor(t), slots)
            # Training now is the same as after sampling: it reads this step's (s, h) only, and the
            # fused logits are computed with the weights from before this update.
            self.pipeline.learn(torch.ones(len(batch), dtype=torch.bool, device=logits.device))
        return Begun(planned, raw, batch, t, in_place=not isinstance(index, torch.Tensor))

    def end(self, begun: "Begun", pushed: torch.Tensor | None = None) -> torch.Tensor | None:
        """The logits to sample the run's rows from, (len(batch), V), given its push's fused rows
        (``Push.run``; run here when not given); None as ``begin``'s."""
        if self.error is not None:
            return None
        with self._bookkeeping():
            try:
                with torch.inference_mode(False):
                    prop = begun.planned.finish(self.pipeline.watch, pushed)
                if self.record:
                    self.pending.append(([r for _, r in begun.batch], begun.t, self.pipeline.signals(prop, begun.raw)))
                if self.first_step_at is None:
                    self.first_step_at = time.perf_counter()
                return self.pipeline.to_sample(prop, begun.raw)  # into vLLM's logits (or this run's copy of its rows)
            except Exception as exc:  # noqa: BLE001 - as ``begin``
                self.fail(exc)
                return None

    @contextmanager
    def _bookkeeping(self):
        """Time what the block spends outside the pipeline's own parts as the backend's bookkeeping."""
        watch = self.pipeline.watch
        t0, timed = time.perf_counter(), sum(watch.seconds.values())
        try:
            yield
        finally:
            watch.seconds["bookkeeping"] += time.perf_counter() - t0 - (sum(watch.seconds.values()) - timed)

    def fail(self, exc: Exception) -> None:
        """Stop guiding this run: its rows keep the model's logits, its result is the error."""
        self.error = f"{type(exc).__name__}: {exc}"
        if not self.record:  # a served run: nobody takes its result, the server's log says it
            log.error("ESamp failed for a served request (it goes on unguided): %s", self.error)

    @staticmethod
    def _rows(logits: torch.Tensor, batch: list[tuple[int, Row]], capture: Capture):
        """This run's (index into the batch: None for all of it in order, a slice for rows one after another,
        else a tensor; s; h; layout rows) of a step."""
        s, h = capture.s, capture.h
        if s is None or h is None or s.shape[0] != logits.shape[0] or h.shape[0] != logits.shape[0]:
            raise internals.VllmUnavailableError(
                f"ESamp's hooks saw {None if s is None else s.shape[0]} / {None if h is None else h.shape[0]} "
                f"rows but the sampler has {logits.shape[0]}; this vLLM lays out batches differently.")
        slots = torch.tensor([r.row for _, r in batch], device=logits.device)
        at = [i for i, _ in batch]
        if at == list(range(logits.shape[0])):  # every row, in order: no copy
            return None, s, h, slots
        if at == list(range(at[0], at[0] + len(at))):  # rows one after another: views, no copy
            index = slice(at[0], at[0] + len(at))
            return index, s[index], h[index], slots
        index = torch.tensor(at, device=logits.device)
        return index, s.index_select(0, index), h.index_select(0, index), slots

    def record_sampled(self, final: bool = False) -> None:
        """Record the steps whose tokens are in the output lists now (``final``: all of them; a token
        still missing was never sampled: the run stopped first)."""
        still = []
        for rows, t, pending in self.pending:
            chosen = [r.out[x] if len(r.out) > x else -1 for r, x in zip(rows, t)]
            if not final and -1 in chosen:
                still.append((rows, t, pending))
                continue
            tokens = torch.tensor(chosen)
            with self.pipeline.watch("signals"):
                signals = pending.resolve(tokens.clamp(min=0).to(pending.device))
            self.recorder.add(tokens, tokens >= 0, signals, t=t, rows=[r.row for r in rows])
        self.pending = still

    def close(self) -> None:
        """The run's state is no longer needed: its slots of a shared bank go back."""
        steerer = getattr(getattr(self, "pipeline", None), "steerer", None)
        if steerer is not None and isinstance(steerer.bank, Lease):
            steerer.bank.release()

    def result(self) -> dict:
        """Everything the caller builds the trace from, in types vLLM's RPC carries (lists, dicts,
        numbers): call once, after the run's last step. A ladder's (``rungs``): each rung's rows and
        statistics as a run of its own would have them, with an equal share of the ladder's times."""
        if self.error is not None:
            return {"error": self.error}
        self.record_sampled(final=True)
        rows, stats = self.recorder.per_row(), asdict(self.pipeline.finish(self.prompts * self.rungs))
        out = {"first_step_at": self.first_step_at, "error": None}
        if self.rungs == 1:
            return out | {"rows": rows, "stats": stats}
        each, p = self.recorder.rows // self.rungs, self.prompts
        share = {"esamp_seconds": stats["esamp_seconds"] / self.rungs,
                 "parts": {k: v / self.rungs for k, v in stats["parts"].items()}}
        return out | {"rungs": [
            {"rows": {name: v[k * each:(k + 1) * each] for name, v in rows.items()},
             "stats": {name: v[k * p:(k + 1) * p] if isinstance(v, list) else share[name] for name, v in stats.items()}}
            for k in range(self.rungs)]}
