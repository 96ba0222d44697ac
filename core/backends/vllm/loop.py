"""ESamp inside vLLM: requests in, a run trace out, with the same Pipeline, signals and trace
as the transformers backend.

vLLM schedules the requests; ESamp rides along through two extension points: forward hooks
(model.py) copy the first decoder layer's residual stream and the LM head's input for the rows
the sampler reads, and the v1 logits processor (processor.py) hands each step's rows of this
run to ``_Run.step``, which applies temperature and filters with transformers' semantics,
predicts, fuses, trains the distillers and returns the final logits. vLLM then samples at
temperature 1 with no filters of its own, from a per-request seeded generator.

Each request is one sample. Rows move, finish and join between steps; the Pipeline gets each
row's layout slot. The chosen token of a step is known only after vLLM samples it, so a step's
signals wait (``PendingSignals``) until the request's output list holds that token.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Sequence

import torch

from ...config import RunConfig
from ...esamp.signals import PendingSignals
from ...esamp.steerer import Pipeline
from ...trace import RunTrace
from ..base import Progress, ProgressFn, encode_prompts
from ..record import Recorder, build_trace
from . import internals
from .model import VllmModel
from .processor import EXTRA_KEY, Capture, Row

_runs = itertools.count()


class _Run:
    """One generate() call's state inside the processor: the Pipeline, and what waits to be recorded."""

    def __init__(self, run_id: int, config: RunConfig, lm: VllmModel, prompts: int):
        self.id = run_id
        self.pipeline = Pipeline(config, lm.head, prompts)
        self.recorder = Recorder(prompts * config.sampling.n)
        self.pending: list[tuple[list[Row], list[int], PendingSignals]] = []  # tokens not sampled yet
        self.rows_done = 0  # tokens proposed so far, all rows
        self.first_step_at: float | None = None
        self.error: BaseException | None = None

    def step(self, logits: torch.Tensor, batch: list[tuple[int, Row]], capture: Capture) -> torch.Tensor:
        """The processor's call for this run's rows: the logits to sample from."""
        t0 = time.perf_counter()
        timed = sum(self.pipeline.watch.seconds.values())
        try:
            return self._step(logits, batch, capture)
        except BaseException as exc:  # keep vLLM's engine alive; generate() re-raises after aborting
            self.error = exc
            return logits
        finally:  # the rest of this call is the backend's own bookkeeping
            watch = self.pipeline.watch
            watch.seconds["bookkeeping"] += time.perf_counter() - t0 - (sum(watch.seconds.values()) - timed)

    def _step(self, logits: torch.Tensor, batch: list[tuple[int, Row]], capture: Capture) -> torch.Tensor:
        self.record_sampled()
        index = torch.tensor([i for i, _ in batch], device=logits.device)
        whole = len(batch) == logits.shape[0]
        raw = logits if whole else logits[index]
        s, h = capture.s, capture.h
        if s is None or h is None or s.shape[0] != logits.shape[0] or h.shape[0] != logits.shape[0]:
            raise internals.VllmUnavailableError(
                f"ESamp's hooks saw {None if s is None else s.shape[0]} / {None if h is None else h.shape[0]} "
                f"rows but the sampler has {logits.shape[0]}; this vLLM lays out batches differently.")
        if not whole:
            s, h = s[index], h[index]
        t = [len(r.out) for _, r in batch]  # the position each row is at
        first = torch.tensor([x == 0 for x in t])  # on the host
        slots = torch.tensor([r.row for _, r in batch], device=logits.device)
        # vLLM samples under inference_mode; the distiller needs autograd, on ordinary tensors
        # (s and h enter its graph; the logits do not).
        with torch.inference_mode(False):
            prop = self.pipeline.propose(raw, s.clone(), h.clone(), first, slots)
            # Training now is the same as after sampling: it reads this step's (s, h) only, and the
            # fused logits were computed with the weights from before this update.
            self.pipeline.learn(torch.ones(len(batch), dtype=torch.bool, device=logits.device))
        self.pending.append(([r for _, r in batch], t, self.pipeline.signals(prop, raw)))
        self.rows_done += len(batch)
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        if whole:
            return prop.to_sample
        logits[index] = prop.to_sample
        return logits

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


def generate(lm: VllmModel, prompts: Sequence[str], config: RunConfig, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> RunTrace:
    """``core.generate`` on vLLM: each sample one request, every request of the run in one engine."""
    from vllm import SamplingParams

    sc = config.sampling
    ids = encode_prompts(lm, prompts, config.chat, sc.max_new_tokens)
    P, n = len(ids), sc.n
    R = P * n
    engine = lm.llm.llm_engine
    with lm.lock:
        run = _Run(next(_runs), config, lm, P)
        request_ids = [f"esamp-{run.id}-{r}" for r in range(R)]
        lm.processor.attach(run.id, run.step)
        stopped = False
        unfinished: set[str] = set()  # added to the engine, not finished
        t0 = time.perf_counter()

        def add(r: int) -> None:
            params = SamplingParams(
                n=1, max_tokens=sc.max_new_tokens, temperature=1.0, seed=request_seed(sc.seed, r),
                ignore_eos=sc.ignore_eos, stop_token_ids=[] if sc.ignore_eos else lm.eos_ids,
                detokenize=False, extra_args={EXTRA_KEY: {"run": run.id, "row": r}})
            engine.add_request(request_ids[r], {"prompt_token_ids": ids[r // n]}, params)
            unfinished.add(request_ids[r])

        # Each prompt's first sample goes first; its other samples join once its prompt is in
        # vLLM's prefix cache, so the prompt is prefilled once, not n times.
        siblings = {request_ids[p * n]: range(p * n + 1, p * n + n) for p in range(P) if n > 1}
        try:
            for p in range(P):
                add(p * n)
            step = 0
            while unfinished:
                for out in engine.step():
                    for r in siblings.pop(out.request_id, ()):
                        add(r)
                    if out.finished:
                        unfinished.discard(out.request_id)
                step += 1
                if run.error is not None:
                    raise run.error
                if progress:
                    progress(Progress(min(step, sc.max_new_tokens), sc.max_new_tokens, run.rows_done,
                                      R * sc.max_new_tokens, time.perf_counter() - t0))
                if cancel is not None and cancel.is_set() and unfinished:
                    stopped = True
                    break
        finally:
            if unfinished:  # stopped, or an error: nothing of this run may stay in the engine
                engine.abort_request(sorted(unfinished))
                while engine.has_unfinished_requests():
                    engine.step()
            lm.processor.attach(None, None)
        seconds = time.perf_counter() - t0
    run.record_sampled(final=True)
    return build_trace(lm, prompts, ids, config, run.recorder.per_row(), run.pipeline.finish(P), seconds=seconds,
                       prefill_seconds=(run.first_step_at or t0) - t0, stopped=stopped)


def request_seed(seed: int, row: int) -> int:
    """Each sample's own sampling seed: depends on the run seed and its row only."""
    return (seed * 1_000_003 + row) % (2**31)


def answer_logprobs(lm: VllmModel, prefixes: Sequence[list[int]], answers: Sequence[list[int]]) -> list[list[float]]:
    """log p of every answer token given its prefix, under the model at T=1 (vLLM's prompt
    log-probabilities of prefix + answer)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    with lm.lock:
        outs = lm.llm.generate([{"prompt_token_ids": list(p) + list(a)} for p, a in zip(prefixes, answers)],
                               params, use_tqdm=False)
    result = []
    for out, p, a in zip(outs, prefixes, answers):
        steps = out.prompt_logprobs[len(p):len(p) + len(a)]  # entry t: the logprob of token t given those before
        result.append([step[tok].logprob for step, tok in zip(steps, a)])
    return result
