"""Every ESamp run of one vLLM worker: started when its first request joins the batch, stepped with
its rows, then taken by its caller (an in-process run) or freed once its requests have all left (a
served one). Both model runners' processors (processor.py: V1, mrv2.py: Model Runner V2) are thin
adapters over one ``Registry``: they tell it which request joins, which rows of a step are whose,
and hand it the step's logits; the registry does everything else.

A request belongs to a run through one record in ``SamplingParams.extra_args[request.EXTRA_KEY]``
(request.py: its run, its row, the run's config): written by the in-process loop, or from a served
request's ``vllm_xargs`` where vLLM takes the request (``request.validate_params``). A row's
``out`` is that request's output tokens so far, read as a sequence (V1: vLLM's own list; MRV2: a
view of the runner's per-slot buffer).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Sequence

import torch
from transformers import AutoTokenizer

from ...config import EsampConfig
from ...esamp.distiller import Lease, SharedBank, bank_key, weights_dtype
from ...esamp.fusion import together
from ...esamp.head import LMHead
from ...esamp.steerer import Background
from ...esamp.words import word_starts
from .. import hardware
from . import internals
from .hooks import install_hooks
from .request import EXTRA_KEY
from .state import Begun, Capture, FailedRun, Row, RunState

log = logging.getLogger(__name__)
TAKEN_KEPT = 4096  # keys of taken runs remembered, so a late row of one never starts it again
SERVED_KEPT = 64  # freed served runs remembered by ``served``
SERVED_RESTING = 16  # served runs kept out of the batch while some of their requests have not joined


class Registry:
    """The runs of one worker, the hooks' capture they read, and the LM head they project through."""

    def __init__(self, vllm_config=None):
        self.runs: dict[str, RunState | FailedRun] = {}  # live runs by key
        self._taken: OrderedDict[str, None] = OrderedDict()
        self.capture = Capture()
        self.banks: dict[tuple, SharedBank] = {}  # by ``bank_key``: every run's distillers, stepped together
        self._background: dict[int, Background] = {}  # a bank's (by id) that overlaps its update
        self._learning: dict[int, list] = {}  # a bank's update in the background: the runs it trains
        self.head = None  # set when the hooks are installed (worker extension, or a served run's first request)
        model = vllm_config.model_config if vllm_config is not None else None
        # the model as core.backends.start keys its pretrained distiller: its source and dtype
        self.model = (model.model, str(model.dtype).removeprefix("torch.")) if model is not None else None
        self._tokenizer = (model.tokenizer, model.trust_remote_code) if model is not None else None  # its source
        # served run (a request vLLM fans out: its record has no row) -> (its n, each child's row by the
        # identity its processor gave it)
        self._served: dict[str, tuple[int, dict[object, int]]] = {}
        self._resting: OrderedDict[str, None] = OrderedDict()  # served runs out of the batch with rows to come
        self.served_done: deque[tuple[int, int]] = deque(maxlen=SERVED_KEPT)  # (n, rows that joined) of freed runs

    def join(self, params, out: Sequence[int], ident: object) -> Row | None:
        """A request enters the batch: its Row (starting its run if it is the first), or None when it
        is not part of an ESamp run. ``ident``: the same object whenever the same request (re)joins."""
        extra = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
        if extra is None:
            return None
        key, row = extra["run"], extra["row"]
        if key not in self.runs and key not in self._taken:
            self._start(extra)
        if row is not None:
            return Row(key, row, out)
        n, rows = self._served[key]
        self._resting.pop(key, None)
        # A seeded child's row is its index in the request, whenever it joins (a run's rows in the same
        # order every time); a request that vLLM preempts and resumes keeps its identity: the same row.
        if ident not in rows:
            index = internals.child_index(params.seed, extra["config"]["sampling"]["seed"], n)
            rows[ident] = index if index is not None and index not in rows.values() else len(rows) % n
        return Row(key, rows[ident], out)

    def _start(self, extra: dict) -> None:
        """Start a run (a failure is kept as a FailedRun: its rows keep the model's logits). A served
        engine's first run installs the hooks (an in-process engine's are installed as it loads), and
        this process's malloc keeps freed memory from then on (hardware.keep_freed_memory: not at
        import, since every vLLM process of the environment loads this plugin, ESamp or not)."""
        hardware.keep_freed_memory()
        self._settle()  # no slot of a bank is leased while its update may still write it
        key = extra["run"]
        if extra["row"] is None:
            self._served[key] = (extra["config"]["sampling"]["n"], {})  # checked by validate_params
        if self.head is None:
            try:
                self.install(internals.worker_model())
            except Exception as exc:  # noqa: BLE001 - the engine goes on
                self.runs[key] = FailedRun(f"{type(exc).__name__}: {exc}")
                log.error("ESamp cannot run in this worker: %s", self.runs[key].error)
                return
        self.runs[key] = RunState.of(extra, self.head, model=self.model, banks=self.bank)

    def install(self, model, runner=None) -> LMHead:
        """Install the hooks that fill ``capture`` on ``model`` (once; hooks.py) and keep the LM head the
        runs project through, with the model's word starts (what a push between words moves) read from
        its tokenizer; where that fails they stay unread, and a run that pushes between words fails saying so."""
        if self.head is None:
            with torch.inference_mode(False):  # the head's norm enters the distiller's graph
                head = install_hooks(model, self.capture, runner)
            self.head = replace(head, starts=self._word_starts(head))
        return self.head

    def _word_starts(self, head: LMHead) -> torch.Tensor | None:
        if self._tokenizer is None:
            return None
        try:
            tokenizer = AutoTokenizer.from_pretrained(self._tokenizer[0], trust_remote_code=self._tokenizer[1])
            return word_starts(tokenizer, head.weight.shape[0]).to(head.weight.device)
        except (OSError, ValueError) as exc:
            log.error("ESamp cannot read the model's tokenizer for its word starts: %s", exc)
            return None

    def bank(self, cfg: EsampConfig, initial: list[torch.Tensor] | None) -> SharedBank:
        """The bank whose every step predicts and trains the distillers of all runs with ``cfg``'s kind of
        distiller (``bank_key``): one forward pass and one update a step, however many runs share it."""
        w = self.head.weight
        overlap = cfg.overlap if cfg.overlap is not None else w.device.type == "cuda"  # as a Steerer's own
        key = (*bank_key(cfg), overlap)
        if key not in self.banks:
            self.banks[key] = SharedBank(w.shape[1], cfg, device=w.device, norm=self.head.norm, initial=initial,
                                         dtype=weights_dtype(cfg, w.dtype))
            if overlap:  # its update runs off the critical path, waited for before the next step's runs read it
                self._background[id(self.banks[key])] = Background(w.device)
        return self.banks[key]

    def left(self, live: set[str]) -> None:
        """Requests have left the batch; ``live``: the runs that still have rows in it. Free the served
        runs whose every request has joined and left. A run some of whose requests never joined (a
        client that went away, or data parallelism placing them on another engine) rests until
        ``SERVED_RESTING`` later ones have; a request that joins it meanwhile goes on."""
        for key, (n, rows) in list(self._served.items()):
            if key in live or key in self._resting:
                continue
            if len(rows) >= n:
                self._drop_served(key)
            else:
                self._resting[key] = None
        while len(self._resting) > SERVED_RESTING:
            self._drop_served(self._resting.popitem(last=False)[0])

    def _drop_served(self, key: str) -> None:
        self._settle()  # nor given back
        n, rows = self._served.pop(key)
        self.runs.pop(key).close()
        self.served_done.append((n, len(rows)))

    def step(self, logits: torch.Tensor, batch: list[tuple[int, Row]]) -> torch.Tensor:
        """One engine step: ``batch`` lists (logits row, Row) of every row of an ESamp run. The runs'
        distillers predict in one forward pass per shared bank, then each run filters its rows in the
        batch's order (each row's distiller found by its row number: the steerer's ``slots``), every
        run's push is fused in one pass (``_fuse``), and each run writes its rows: a run whose rows lie one
        after another (the whole batch, or a part of it) works on vLLM's logits where they are, with no
        copy of them. Then one update per bank trains every run's distillers. Other rows are left as they are."""
        by_run: dict[str, list[tuple[int, Row]]] = {}
        for i, r in batch:
            if i < logits.shape[0] and r.run in self.runs:
                by_run.setdefault(r.run, []).append((i, r))
        self._settle()
        staged: dict[int, list[tuple[RunState, Lease, torch.Tensor]]] = {}
        for key, rows in by_run.items():
            run = self.runs[key]
            got = run.stage(logits, rows, self.capture)
            if got is not None:
                staged.setdefault(id(got[0].bank), []).append((run, *got))
        for runs in staged.values():
            self._bank_step(runs, "predict")
        begun = {key: self.runs[key].begin(logits, rows, self.capture) for key, rows in by_run.items()}
        pushed = self._fuse({key: b for key, b in begun.items() if b is not None and b.planned.push is not None})
        out = logits
        for key, rows in by_run.items():
            fused = None if begun[key] is None else self.runs[key].end(begun[key], pushed.get(key))
            if fused is None or (fused is begun[key].raw and begun[key].in_place):
                continue  # (written into vLLM's logits where they are)
            index = [i for i, _ in rows]
            if index == list(range(logits.shape[0])):  # one run has the whole batch, in order: no copy
                out = fused
            else:
                logits[torch.tensor(index, device=logits.device)] = fused
        for runs in staged.values():
            self._bank_step(runs, "learn")
        return out

    def _fuse(self, begun: dict[str, Begun]) -> dict[str, torch.Tensor]:
        """Every run's push of the step fused together (``together``), its time shared among the runs'
        stopwatches by rows. Where that fails, each run's own is fused alone, so the failure is its own."""
        if len(begun) < 2:
            return {}  # a run alone fuses as it ends
        t0 = time.perf_counter()
        try:
            with torch.inference_mode(False):
                fused = dict(zip(begun, together([b.planned.push for b in begun.values()])))
        except Exception:  # noqa: BLE001 - each run's own fusion, as it ends, says whose it is
            return {}
        seconds, rows = time.perf_counter() - t0, sum(len(b.batch) for b in begun.values())
        for key, b in begun.items():
            self.runs[key].pipeline.watch.seconds["fuse"] += seconds * len(b.batch) / rows
        return fused

    def _bank_step(self, runs: list[tuple[RunState, Lease, torch.Tensor]], part: str) -> None:
        """A shared bank's forward pass (``part`` "predict") or update ("learn") for ``runs``: its time
        shared among their stopwatches by rows; a failure stops guiding them all (their rows keep the
        model's logits). An overlapping bank's update starts in the background (``_settle`` waits)."""
        t0 = time.perf_counter()
        bank = runs[0][1].bank
        background = self._background.get(id(bank)) if part == "learn" else None
        try:
            with torch.inference_mode(False):  # vLLM samples under inference mode; the distillers train
                if part == "predict":
                    bank.predict([(lease, s) for _, lease, s in runs])
                elif background is not None:
                    background.run(bank.learn, keep=(bank.staged,))  # its tensors live until the wait
                    self._learning[id(bank)] = runs
                else:
                    bank.learn()
        except Exception as exc:  # noqa: BLE001 - keep vLLM's engine alive
            _failed(runs, exc)
        _timed(runs, part, time.perf_counter() - t0)

    def _settle(self) -> None:
        """Wait for the updates in the background: the runs read their losses as they stage."""
        for bank, runs in list(self._learning.items()):
            del self._learning[bank]
            t0 = time.perf_counter()
            try:
                self._background[bank].wait()
            except Exception as exc:  # noqa: BLE001 - as ``_bank_step``
                _failed(runs, exc)
            _timed(runs, "learn", time.perf_counter() - t0)

    def served(self) -> dict:
        """What the served runs are doing: how many are live, and (n, rows) of the last ones freed; and
        how many ESamp runs of any kind hold state here (``runs``), and distillers (``leased``)."""
        return {"live": len(self._served) - len(self._resting), "resting": len(self._resting),
                "done": list(self.served_done), "runs": len(self.runs),
                "leased": sum(bank.leased for bank in self.banks.values())}

    def take(self, key: str) -> dict:
        """A finished run's result (``RunState.result``), its state freed; {"error": ...} for an unknown key."""
        self._settle()
        run = self.runs.pop(key, None)
        self._taken[key] = None
        while len(self._taken) > TAKEN_KEPT:
            self._taken.popitem(last=False)
        if run is None:
            return {"error": f"no ESamp run {key!r} in this engine (it never started, or was taken)"}
        try:
            return run.result()
        finally:
            run.close()

    def fail(self, key: str, error: str) -> None:
        """Stop guiding run ``key``: its rows keep the model's logits from now on, its result is ``error``."""
        if key in self.runs and self.runs[key].error is None:
            self.runs[key].error = error
            log.error("ESamp run %s stopped: %s", key, error)

    def failed(self) -> dict[str, str]:
        """The live runs whose step failed, and how."""
        return {k: r.error for k, r in self.runs.items() if r.error is not None}


def _failed(runs: list[tuple[RunState, Lease, torch.Tensor]], exc: Exception) -> None:
    for run, _, _ in runs:
        run.fail(exc)


def _timed(runs: list[tuple[RunState, Lease, torch.Tensor]], part: str, seconds: float) -> None:
    """A bank's time for its runs, shared among their stopwatches by rows."""
    rows = sum(s.shape[0] * s.shape[1] for _, _, s in runs)
    for run, _, s in runs:
        run.pipeline.watch.seconds[part] += seconds * s.shape[0] * s.shape[1] / rows
