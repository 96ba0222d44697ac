"""The transformers backend's forward passes: the batched KV-cache decode loop, and answers'
log-probabilities.

Per step the loop reads like the paper's Algorithm 1: forward -> filter -> predict and fuse ->
sample -> train the distillers. The ESamp math is core.esamp's; this module only runs the
model, samples, and keeps the books.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Callable, Sequence

import torch

from ...config import RunConfig
from ...esamp.steerer import Pipeline
from ...trace import RunTrace
from ..base import Progress, ProgressFn, encode_prompts
from ..hooks import States, capture_output, capture_states
from ..record import LivePieces, Recorder, build_trace
from .model import HfModel


Initial = Callable[[RunConfig], "list[torch.Tensor] | None"]  # a run's distillers' first weights (backends.start)


MAX_ROWS = 64  # rows (runs x prompts x samples) decoded in one batch: on a CPU a step of 2 rows of the embedded
# model costs 2/3 of a step of 16 (the weights are read once a step either way; docs/results.md)


def generate_runs(lm: HfModel, prompts: Sequence[str], configs: Sequence[RunConfig], *,
                  progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                  initial: Initial = lambda config: None) -> list[RunTrace]:
    """The runs in batches of runs that share their rows' shape (a β ladder, a sweep's grid: the same
    prompts, samples, tokens, chat and prefix), each batch one decode loop of up to ``MAX_ROWS`` rows
    (a run's own rows always together); none after a cut-short batch."""
    traces: list[RunTrace] = []
    for batch in batches(configs, len(prompts)):
        report = None if progress is None else (lambda p, first=batch[0]: progress(replace(p, run=first + p.run)))
        traces += _generate(lm, prompts, [configs[i] for i in batch], [initial(configs[i]) for i in batch],
                            progress=report, cancel=cancel)
        if traces[-1].stopped:
            break
    return traces


def batches(configs: Sequence[RunConfig], prompts: int) -> list[list[int]]:
    """The configs' indices, in order, in groups that one decode loop runs together."""
    def shape(c: RunConfig) -> tuple:
        return c.chat, tuple(c.prefix_ids), c.sampling.n, c.sampling.max_new_tokens

    out: list[list[int]] = []
    for i, c in enumerate(configs):
        last = out[-1] if out else None
        if (last is not None and shape(configs[last[0]]) == shape(c)
                and (len(last) + 1) * prompts * c.sampling.n <= MAX_ROWS):
            last.append(i)
        else:
            out.append([i])
    return out


def generate(lm: HfModel, prompts: Sequence[str], config: RunConfig, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None, initial: "list[torch.Tensor] | None" = None) -> RunTrace:
    """``config.sampling.n`` samples for each prompt, P x n rows in one batch; ``initial``: the
    weights its distillers start from (None: fresh)."""
    return _generate(lm, prompts, [config], [initial], progress=progress, cancel=cancel)[0]


def _generate(lm: HfModel, prompts: Sequence[str], configs: Sequence[RunConfig],
              initials: Sequence["list[torch.Tensor] | None"], *, progress: ProgressFn | None,
              cancel: threading.Event | None) -> list[RunTrace]:
    """Runs of one shape (``batches``) in one decode loop: run k's rows are the k-th block of R = P x n
    rows; each run filters, fuses, samples (its own generator) and trains on its own block."""
    config = configs[0]
    sc = config.sampling
    ids = encode_prompts(lm, prompts, config.chat, sc.max_new_tokens, config.prefix_ids)
    R, K = len(ids) * sc.n, len(configs)
    reports: list = []  # each step's progress reports, sent once every run has made the step
    runs = [_Run(lm, c, k, len(ids), init, None if progress is None else reports.append)
            for k, (c, init) in enumerate(zip(configs, initials))]
    with lm.lock, torch.no_grad(), capture_states(lm.first_layer, lm.final_norm) as states:
        primed = [run for run in runs if run.config.esamp.prime and run.config.prefix_ids]
        if primed:
            given = given_states(lm, ids, len(config.prefix_ids))
            for run in primed:
                run.pipeline.prime(*given)
        decoder = _Decoder(lm, states)
        logits, s, h = decoder.prefill(ids * K, sc.n)  # (K R, V), (K R, H), (K R, H)
        for run in runs:
            run.books.prefilled()
        for step in range(sc.max_new_tokens):
            positions = torch.full((R,), step)  # on the host: every row is at the same position
            tokens = [run.step(step, logits[k * R:(k + 1) * R], s[k * R:(k + 1) * R], h[k * R:(k + 1) * R],
                               positions, decoder.pad_id) for k, run in enumerate(runs)]
            for k, p in reports:
                progress(replace(p, run=k))
            reports.clear()
            if cancel is not None and cancel.is_set():  # after the step's reports: a report may set it
                for run in runs:
                    run.stop()
            if all(run.done for run in runs):
                break
            logits, s, h = decoder.step(torch.cat(tokens))
        return [run.trace(lm, prompts, ids) for run in runs]


class _Run:
    """One run's part of a decode loop: its pipeline, sampler, records and books."""

    def __init__(self, lm: HfModel, config: RunConfig, index: int, prompts: int, initial, report):
        """index: the run's place among the loop's runs; report: where its progress goes, as (index,
        Progress) (None: nowhere)."""
        sc = config.sampling
        self.config, self.index = config, index
        R = prompts * sc.n
        self.pipeline = Pipeline(config, lm.head, prompts, initial=initial)
        self.recorder = Recorder(R)
        self.gen = torch.Generator(device=lm.device).manual_seed(sc.seed)
        self.eos = torch.tensor(lm.eos_ids, device=lm.device)
        self.finished = torch.zeros(R, dtype=torch.bool, device=lm.device)
        # the answers so far, for progress; as the trace's texts, with end-of-sequence tokens only where they do not end
        live = LivePieces(lm.tokenizer, R, () if sc.ignore_eos else lm.eos_ids) if report else None
        self.books = _Books(None if report is None else (lambda p: report((self.index, p))), sc.max_new_tokens, R,
                            live)
        self.done, self.seconds = False, 0.0

    def step(self, step: int, logits: torch.Tensor, s: torch.Tensor, h: torch.Tensor, positions: torch.Tensor,
             pad_id: int) -> torch.Tensor:
        """This step's tokens (R,) for the run's rows (pad once the run is done); ``logits`` is overwritten."""
        if self.done:
            return torch.full_like(self.finished, pad_id, dtype=torch.long)
        pipeline = self.pipeline
        prop = pipeline.propose(logits, s, h, positions)  # filter -> predict h_hat -> fuse
        active = ~self.finished
        pending = pipeline.signals(prop, logits)  # before the logits become the ones to sample from
        tokens = torch.where(active, sample(pipeline.to_sample(prop, logits), self.gen), pad_id)
        self.recorder.add(tokens, active, pending.resolve(tokens), t=step)
        pipeline.learn(active)  # train on this step's (s, h), after sampling
        if not self.config.sampling.ignore_eos:
            self.finished = self.finished | torch.isin(tokens, self.eos)
        with pipeline.watch("bookkeeping"):
            self.done = self.books.end_of_step(step, active, self.finished, tokens)
        if self.done:
            self.seconds = self.books.elapsed()
        return tokens

    def stop(self) -> None:
        """Cut short (a Stop) unless already done."""
        if not self.done:
            self.books.stopped, self.done, self.seconds = True, True, self.books.elapsed()

    def trace(self, lm: HfModel, prompts: Sequence[str], ids: list[list[int]]) -> RunTrace:
        stats = self.pipeline.finish(len(ids))
        return build_trace(lm, prompts, ids, self.config, self.recorder.per_row(), stats,
                           seconds=self.seconds or self.books.elapsed(), prefill_seconds=self.books.prefill_s,
                           stopped=self.books.stopped)


def given_states(lm: HfModel, ids: list[list[int]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, h) (k, P, H) float32 at the positions that drew each prompt's k given tokens (a
    continuation's prefix, the last k of its ids): one forward pass of the whole prompts."""
    input_ids, mask = left_pad(ids, lm.tokenizer.pad_token_id, lm.device)
    with capture_output(lm.first_layer) as s_out, capture_output(lm.final_norm) as h_out:
        lm.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                 logits_to_keep=1)
    width = input_ids.shape[1]  # left-padded: every prompt ends at the last column
    take = slice(width - k - 1, width - 1)  # the state before each given token drew it
    return s_out[-1][:, take].transpose(0, 1).contiguous(), h_out[-1][:, take].transpose(0, 1).contiguous()


def states_of(lm: HfModel, rows: Sequence[list[int]], batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, h), each (N, H) float32: the shallow and final states at every position of every token
    sequence in ``rows`` (N positions in all), read in one forward pass per batch."""
    s_all, h_all = [], []
    with lm.lock, torch.no_grad(), capture_output(lm.first_layer) as s_out, capture_output(lm.final_norm) as h_out:
        for start in range(0, len(rows), batch_size):
            input_ids, mask = left_pad(list(rows[start:start + batch_size]), lm.tokenizer.pad_token_id, lm.device)
            lm.model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                     logits_to_keep=1)
            real = mask.bool()
            s_all.append(s_out.pop()[real])
            h_all.append(h_out.pop()[real])
    return torch.cat(s_all), torch.cat(h_all)


def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from logits (R, V), as transformers samples: softmax then multinomial."""
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)[:, 0]


class _Decoder:
    """The model with its KV cache: each prompt prefilled once, then one token per row per step."""

    def __init__(self, lm: HfModel, states: States):
        self.lm, self.states = lm, states
        self.pad_id = lm.tokenizer.pad_token_id

    def prefill(self, ids: list[list[int]], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward the prompts once and copy each one's cache to its n sample rows."""
        input_ids, mask = left_pad(ids, self.pad_id, self.lm.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1)
        self.cache = out.past_key_values
        self.cache.batch_repeat_interleave(n)
        self.mask = mask.repeat_interleave(n, 0)
        self.position = positions[:, -1:].repeat_interleave(n, 0)  # (R, 1)
        st = self.states
        return (out.logits[:, -1].float().repeat_interleave(n, 0), st.s.repeat_interleave(n, 0),
                st.h.repeat_interleave(n, 0))

    def step(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward one new token per row (R,)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.position = self.position + 1
        out = self.lm.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.position,
                            past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float(), self.states.s, self.states.h


class _Books:
    """What happens between steps: one host sync, progress, time."""

    def __init__(self, progress: ProgressFn | None, max_steps: int, rows: int, live: LivePieces | None = None):
        """live: where the answers so far are kept for the progress reports (None: not reported)."""
        self.progress, self.max_steps, self.rows, self.live = progress, max_steps, rows, live
        self.t0 = time.perf_counter()
        self.prefill_s = 0.0
        self.tokens = 0
        self.stopped = False  # cut short (set by its run)

    def prefilled(self) -> None:
        self.prefill_s = time.perf_counter() - self.t0

    def end_of_step(self, step: int, active: torch.Tensor, finished: torch.Tensor, tokens: torch.Tensor) -> bool:
        """Count the step's tokens (R,) and report; True when the loop should end."""
        if self.live is None:
            n_active, all_done = torch.stack([active.sum(), finished.all()]).tolist()  # one sync
        else:  # the tokens themselves too, in the same sync
            *drawn, n_active, all_done = torch.cat([torch.where(active, tokens, -1),
                                                    torch.stack([active.sum(), finished.all()])]).tolist()
            for row, token in enumerate(drawn):
                if token >= 0:
                    self.live.extend(row, (token,))
        self.tokens += n_active
        ending = bool(all_done) or step + 1 == self.max_steps
        if self.progress:
            answers = () if self.live is None else self.live.snapshot(range(self.rows) if ending else ())
            self.progress(Progress(step + 1, self.max_steps, self.tokens, self.rows * self.max_steps,
                                   time.perf_counter() - self.t0, answers=answers))
        return ending

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def left_pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, L) input ids and attention mask, padded on the left so every row ends at its last token."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, width - len(x):] = torch.tensor(x)
        mask[i, width - len(x):] = 1
    return input_ids.to(device), mask.to(device)


def answer_logprobs(lm: HfModel, prefixes: Sequence[list[int]], answers: Sequence[list[int]],
                    batch_size: int = 8) -> list[list[float]]:
    """log p of every answer token given its prefix and the answer's earlier tokens, at T=1.

    Like the log-probabilities a run records: the LM head and the log-softmax in float32 from
    the final norm's output, whatever the model's dtype."""
    out: list[list[float]] = []
    with lm.lock, torch.no_grad(), capture_output(lm.final_norm) as hidden:
        for start in range(0, len(answers), batch_size):
            rows = list(zip(prefixes[start:start + batch_size], answers[start:start + batch_size]))
            width = max(len(p) + len(a) for p, a in rows)
            ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (p, a) in enumerate(rows):  # right padding: positions start at 0 for every row
                ids[i, :len(p) + len(a)] = torch.tensor(p + a)
                mask[i, :len(p) + len(a)] = 1
            hidden.clear()
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), logits_to_keep=1)
            for i, (p, a) in enumerate(rows):
                h = hidden[-1][i, len(p) - 1:len(p) + len(a) - 1]  # (A, H): position t predicts token t+1
                logp = torch.log_softmax(lm.head.logits32(h), -1)
                out.append(logp.gather(-1, torch.tensor(a, dtype=torch.long, device=h.device)[:, None])[:, 0].tolist())
    return out
