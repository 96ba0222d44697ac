"""One ESamp decode step over tensors, shared by every backend (transformers loop, generate()
interop, vLLM): filter -> predict h_hat -> fuse -> (the backend samples) -> train.

Rows are laid out group-major: R = G * m rows, group g owning rows g*m .. g*m+m-1 (a prompt's
n samples with per-prompt scope; all rows with shared scope). A backend whose batch does not
have that layout (vLLM reorders and drops requests every step) passes ``slots``: the layout
row of each batch row; missing layout rows then neither steer nor train.

The contract with a decode loop, per step (Algorithm 1 of the paper)::

    prop = pipeline.propose(logits, s, h, positions)  # filter -> predict h_hat -> fuse
    signals = pipeline.signals(prop, logits)          # what the trace records of this step
    tokens = sample(pipeline.to_sample(prop, logits))  # the backend's own sampler
    pipeline.learn(active)                            # train on this step's (s, h), after sampling

and once at the end ``stats = pipeline.finish(prompts)``: what the trace needs of the run.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from .. import openmp
from ..config import EsampConfig, RunConfig
from .candidates import Candidates, rows_of, select, select_mixed
from .clock import Stopwatch
from .distiller import DistillerBank, Lease, SharedBank, weights_dtype
from .filters import run_filters
from .fusion import Push, novelty
from .head import LMHead
from .signals import PendingSignals


Exact = Callable[[torch.Tensor | None], tuple[Candidates, torch.Tensor | None]]  # see Steerer.propose


@dataclass
class Proposal:
    """What one step proposes: the logits to sample from, and the step's novelty."""

    cand: Candidates  # reference candidates (filtered l_ref, float32 values: what the trace records)
    fused: torch.Tensor  # (R, K) candidate logits after fusion (``cand.logits`` when unguided)
    novelty: torch.Tensor | None  # (R,) ||h - h_hat||; None without a distiller
    rel_novelty: torch.Tensor | None  # (R,)
    # (R, K) the logits the step samples from: ``fused`` on guided rows; on unguided ones (β = 0, a first
    # token, the warm-up) the model's own values, so that there sampling is exactly the model's own in
    # every dtype (a bfloat16 model's float32 recompute would move its draws); None: ``fused``.
    sample: torch.Tensor | None = None


@dataclass
class Planned:
    """A step proposed but for its fusion (``Steerer.plan``): ``finish`` makes the Proposal."""

    cand: Candidates  # the candidates (float32 values where ``exact`` recomputed them)
    own: torch.Tensor  # (R, K) the candidates' values as the filter left them: what unguided rows sample
    novelty: torch.Tensor | None
    rel_novelty: torch.Tensor | None
    push: Push | None = None  # what to fuse; None: nothing this step
    moves: torch.Tensor | None = None  # the rows the push moves (None: all)

    def finish(self, watch: Stopwatch, pushed: torch.Tensor | None = None) -> Proposal:
        """The Proposal, with ``pushed`` the push's fused rows (``Push.run``; run here, timed by ``watch``
        as "fuse", when not given)."""
        cand, own, moves = self.cand, self.own, self.moves
        if self.push is None:
            return Proposal(cand, cand.logits, self.novelty, self.rel_novelty, own)
        if pushed is None:
            with watch("fuse"):
                pushed = self.push.run()
        if moves is None:
            fused = sample = pushed
        else:
            fused = cand.logits.index_copy(0, moves, pushed)
            sample = fused if own is cand.logits else own.index_copy(0, moves, pushed)
        return Proposal(cand, fused, self.novelty, self.rel_novelty, sample)


@dataclass
class _Step:
    """What a step's update needs, kept by the Steerer from ``propose`` to ``learn``."""

    pred: torch.Tensor  # (G, m, H) the prediction (with the distiller's graph unless overlapping)
    s: torch.Tensor  # (G, m, H)
    h: torch.Tensor  # (G, m, H)
    rel_novelty: torch.Tensor  # (R,)
    slots: torch.Tensor | None  # (R,) layout row of each batch row, or None: the batch is the layout


class Steerer:
    """ESamp for a batch of R rows in G groups; with ``cfg.beta == 0`` it only observes (shadow mode).

    Per step: ``propose`` predicts with the weights of the step before and fuses; ``learn`` takes
    the step's update. With ``overlap`` the update runs off the critical path (a CUDA side stream,
    or a worker thread on CPU) while the backend samples and runs the next forward pass; the next
    ``propose`` waits for it, so every prediction sees exactly the serial order's weights.
    """

    def __init__(self, groups: int, rows: int, head: LMHead, cfg: EsampConfig, temperature: float,
                 seed: int = 0, watch: Stopwatch | None = None, initial: list[torch.Tensor] | None = None,
                 shared: SharedBank | None = None, rungs: Sequence[tuple[float, float | None]] = ()):
        """cfg.beta: the fusion strength applied (0 for shadow mode); temperature: what l_ref and
        l_dist are divided by; initial: the weights every distiller starts from (None: fresh); shared:
        a bank whose step predicts and trains these distillers with other runs' (``stage``; its own
        initial weights then), or None: a DistillerBank of this run's own. rungs: a β ladder stepped as
        one run (with a shared bank), each rung's (β, max_kl) in place of cfg's: the rows and groups split
        evenly among them, rung by rung, and each rung's distillers seeded as a run of its own would be."""
        if rows % groups or groups % max(len(rungs), 1):
            raise ValueError(f"rows ({rows}) must be a multiple of groups ({groups}), and those of rungs "
                             f"({len(rungs)})")
        if rungs and (shared is None or cfg.noise):
            raise ValueError("A β ladder steps as one run with a shared bank, and without the noise ablation.")
        self.groups, self.rows, self.head, self.beta, self.temperature = groups, rows, head, cfg.beta, temperature
        self.max_kl, self.keep_entropy = cfg.max_kl, cfg.keep_entropy
        self.still: torch.Tensor | None = None  # (rows,) bool: the ladder's layout rows at β = 0
        if rungs:
            self.beta, self.max_kl = per_row(rungs, rows, head.weight.device)
            self.still = self.beta <= 0 if min(b for b, _ in rungs) <= 0 else None
        self.guides = cfg.beta > 0 if not rungs else max(b for b, _ in rungs) > 0
        if cfg.between_words and self.guides and head.starts is None:
            raise ValueError("The push between words needs the model's word starts, which were not read from its "
                             "tokenizer here (the log says why); push every token instead (--inside-words, "
                             "esamp_between_words false).")
        self.starts = head.starts if cfg.between_words else None  # (V,) bool, the tokens the push may move
        device = head.weight.device
        index = [g % (groups // len(rungs)) for g in range(groups)] if rungs else None  # each rung's own
        self.bank: DistillerBank | Lease = shared.lease(groups, seed, index) if shared is not None else DistillerBank(
            groups, head.weight.shape[1], cfg, device=device, seed=seed, norm=head.norm, initial=initial,
            dtype=weights_dtype(cfg, head.weight.dtype))
        # The paper's ablation: steer by Gaussian noise as long as e instead of e itself.
        self.noise = torch.Generator(device=device).manual_seed(seed) if cfg.noise else None
        # A shared bank's update is its step's, for every run at once: not this run's to overlap.
        overlap = shared is None and (cfg.overlap if cfg.overlap is not None else device.type == "cuda")
        self.background = Background(device) if overlap else None
        self.warmup_steps = cfg.warmup_steps
        self.warmup = Warmup(groups, cfg.warmup_novelty, device) if cfg.warmup_novelty > 0 else None
        self._step: _Step | None = None  # proposed, not yet learned
        self._staged: torch.Tensor | None = None  # s of the step ``stage`` handed to a shared bank, (G, m, H)
        self._learning: _Learning | None = None  # the update in flight
        self.losses: list[torch.Tensor] = []  # (G,) per step, on the device
        self.rel_novelty: list[torch.Tensor] = []  # (G,) per step: mean ||e|| / ||h|| over the group's trained rows
        self.live: list[torch.Tensor] = []  # (G,) bool per step: the group had rows to train on
        self.watch = watch or Stopwatch()

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.groups, self.rows // self.groups, -1)  # (R, H) -> (G, m, H)

    def _to_layout(self, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None:
            return x
        return x.new_zeros((self.rows,) + x.shape[1:]).index_copy_(0, slots, x)

    def propose(self, cand: Candidates, s: torch.Tensor, h: torch.Tensor, positions: torch.Tensor,
                slots: torch.Tensor | None = None, exact: Exact | None = None) -> Proposal:
        """cand: the reference candidates (logits after temperature and filters); s, h: (R, H) float32;
        positions: (R,) int on the host, the token of its answer each row draws (0: the first). A
        first token is sampled unguided (no distiller has seen its prompt's answers yet), and so are
        the warm-up's tokens, but they are still predicted, so novelty is logged and the distiller trains.
        exact: makes the candidates' values float32 (``Candidates.exact_with``; a bfloat16 model),
        sharing its read of their rows of W with the fusion's; None: the candidates are final.
        Unguided rows sample from ``cand`` as given (``Proposal.sample``)."""
        return self.plan(cand, s, h, positions, slots, exact).finish(self.watch)

    def plan(self, cand: Candidates, s: torch.Tensor, h: torch.Tensor, positions: torch.Tensor,
             slots: torch.Tensor | None = None, exact: Exact | None = None) -> "Planned":
        """``propose`` but for the fusion itself: what it is to fuse (``Planned.push``), so that a
        backend stepping several runs at once may fuse them together (``core.esamp.fusion.together``)."""
        self.settle()  # the previous step's update is in the weights
        with self.watch("predict"):
            s_grouped, self._staged = self._staged, None
            if s_grouped is None:
                s_grouped = self._grouped(self._to_layout(s, slots))
            if self.background is None:
                pred = self.bank.forward(s_grouped)  # (G, m, H), with the graph for the update
            else:  # the update recomputes it where it runs, with its graph
                pred = self.bank.infer(s_grouped)
            h_hat = pred.detach().reshape(-1, h.shape[-1])
            if slots is not None:
                h_hat = h_hat.index_select(0, slots)  # (R, H)
            nov, rel = novelty(h, h_hat)
        beta, max_kl, still = self.beta, self.max_kl, self.still
        if isinstance(beta, torch.Tensor) and slots is not None:  # a ladder's: each batch row's
            beta, max_kl, still = (None if x is None else x.index_select(0, slots) for x in (beta, max_kl, still))
        held = positions <= self.warmup_steps  # the first token, and the warm-up's
        guided = self.guides and not bool(held.all())
        steer_by = h_hat if self.noise is None or not guided else h - noise_like(h - h_hat, self.noise)
        projected, own = None, cand.logits
        if exact is not None:
            with self.watch("filter"):
                # The fusion's e rides along only where the recompute reads W's rows (a bfloat16 head).
                cand, projected = exact(h - steer_by if guided and not self.head.exact else None)
        self._step = _Step(pred, s_grouped, self._grouped(self._to_layout(h, slots)), rel, slots)
        planned = Planned(cand, own, nov, rel)
        if not guided:
            return planned
        with self.watch("fuse"):
            waiting = held.to(cand.logits.device) if bool(held.any()) else None
            if still is not None:  # a ladder's rows at β = 0 sample as a plain run's
                waiting = still if waiting is None else waiting | still
            if self.warmup is not None:
                warming = ~self.warmup.started(self.rows // self.groups, slots, len(positions))
                waiting = warming if waiting is None else waiting | warming
            # Only the rows the push moves are fused (a row's fusion reads its own entries alone);
            # the waiting ones sample from the candidates as given.
            moves = None if waiting is None else torch.nonzero(~waiting).flatten()  # one host sync
            if moves is None or len(moves):
                part = cand if moves is None else cand.rows(moves)
                starts = None if self.starts is None else (
                    self.starts.take(part.ids) if part.ids is not None else self.starts.expand_as(part.logits))
                planned.moves = moves
                planned.push = Push(part, rows_of(h, moves), rows_of(steer_by, moves), self.head, rows_of(beta, moves),
                                    self.temperature, rows_of(projected, moves), rows_of(max_kl, moves),
                                    self.keep_entropy, starts)
        return planned

    def stage(self, s: torch.Tensor, slots: torch.Tensor | None = None) -> tuple[Lease, torch.Tensor]:
        """Before ``propose`` with a shared bank: this step's s (as ``propose`` takes it), laid out for
        the bank's step (``SharedBank.predict``), with the lease it is for."""
        if not isinstance(self.bank, Lease):
            raise TypeError("Steerer.stage is for a shared bank's step")
        self.settle()
        self._staged = self._grouped(self._to_layout(s, slots))
        return self.bank, self._staged

    def prime(self, s: torch.Tensor, h: torch.Tensor, rows: torch.Tensor) -> None:
        """Before a continuation's first step: one update per given token, in order, on its states.
        s, h: (k, P, H) float32, each prompt's states at the k given tokens; rows: (P,) the layout row
        each prompt's states train (its first sample's). Not recorded as steps of the run."""
        mask = torch.zeros(self.rows, dtype=torch.bool, device=s.device).index_fill_(0, rows, True)
        for s_j, h_j in zip(s, h):
            layout_s = s_j.new_zeros((self.rows, s_j.shape[-1])).index_copy_(0, rows, s_j)
            layout_h = h_j.new_zeros((self.rows, h_j.shape[-1])).index_copy_(0, rows, h_j)
            pred = self.bank.forward(self._grouped(layout_s))
            _, bad = self.bank.update(pred, self._grouped(layout_h), self._grouped(mask[:, None])[..., 0])
            self.bank.handle_bad(bad)

    def learn(self, active: torch.Tensor) -> None:
        """Train every distiller on the proposed step's active rows (R,) bool (in the background
        with ``overlap``)."""
        step, self._step = self._step, None
        assert step is not None, "Steerer.learn without a proposed step"
        with self.watch("learn"):
            mask = self._grouped(self._to_layout(active, step.slots)[:, None])[..., 0]  # (G, m)
            rel = self._grouped(self._to_layout(step.rel_novelty, step.slots)[:, None])[..., 0]  # (G, m)
            result = None
            if self.background is None:
                result = self.bank.update(step.pred, step.h, mask)
            else:
                s, h = step.s, step.h
                self.background.run(lambda: self.bank.update(self.bank.forward(s), h, mask), keep=(s, h, mask))
            self._learning = _Learning(result, mask, torch.where(mask, rel, 0.0).sum(-1) / mask.sum(-1).clamp(min=1))

    def settle(self) -> None:
        """Finish the update in flight: record its loss and reset the distillers whose loss or
        gradient was not finite (one host sync)."""
        learning, self._learning = self._learning, None
        if learning is None:
            return
        loss, bad = learning.result if self.background is None else self.background.wait()
        self.losses.append(loss)
        self.rel_novelty.append(learning.rel_novelty)
        self.live.append(learning.mask.any(-1))
        if self.warmup is not None:
            self.warmup.update(learning.rel_novelty, self.live[-1])
        self.bank.handle_bad(bad)


def per_row(rungs: Sequence[tuple[float, float | None]], rows: int,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ladder's (β, max_kl) for each of its ``rows`` layout rows, rung by rung: (rows,) each; max_kl
    None where no rung has a bound (a rung without one, among rungs with: no bound, infinity)."""
    each = rows // len(rungs)
    beta = torch.tensor([float(b) for b, _ in rungs], device=device).repeat_interleave(each)
    if all(k is None for _, k in rungs):
        return beta, None
    bounds = torch.tensor([math.inf if k is None else float(k) for _, k in rungs], device=device)
    return beta, bounds.repeat_interleave(each)


class Warmup:
    """Which groups' guidance has started under EsampConfig.warmup_novelty: once the group's
    distiller's running relative novelty is below ``novelty``. Tensors on the device: no host sync."""

    DECAY = 0.75  # the running mean's weight on the steps before: about the last four steps

    def __init__(self, groups: int, novelty: float, device: torch.device):
        self.novelty = novelty
        self.trained = torch.zeros(groups, dtype=torch.long, device=device)
        self.running = torch.zeros(groups, device=device)
        self.open = torch.zeros(groups, dtype=torch.bool, device=device)

    def update(self, rel_novelty: torch.Tensor, live: torch.Tensor) -> None:
        """After an update step: rel_novelty (G,) the trained rows' mean, live (G,) bool the groups trained."""
        blended = torch.where(self.trained == 0, rel_novelty,
                              self.DECAY * self.running + (1 - self.DECAY) * rel_novelty)
        self.running = torch.where(live, blended, self.running)
        self.trained = self.trained + live.long()
        self.open = self.open | ((self.trained > 0) & (self.running < self.novelty))

    def started(self, per_group: int, slots: torch.Tensor | None, rows: int) -> torch.Tensor:
        """(R,) bool: the batch rows whose group's guidance has started."""
        layout = slots if slots is not None else torch.arange(rows, device=self.open.device)
        return self.open[layout.to(self.open.device) // per_group]


@dataclass
class _Learning:
    result: tuple[torch.Tensor, torch.Tensor] | None  # (loss, bad) of a serial update; None while in the background
    mask: torch.Tensor  # (G, m) the rows trained on
    rel_novelty: torch.Tensor  # (G,) their mean relative novelty


class Background:
    """Work off the critical path: on a CUDA side stream, or in one worker thread on CPU, which lets its
    OpenMP team go after each piece of work (``core.openmp``: kept, it slowed every kernel the process
    ran from then on)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.Stream(device)
        else:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esamp-learn")
        self._pending = None

    def run(self, work, keep=()) -> None:
        """Start ``work()``; ``keep`` holds tensors it reads alive until ``wait`` (the CUDA caching
        allocator must not hand their memory to the main stream before the side stream is done)."""
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream())  # its inputs are computed
            with torch.cuda.stream(self.stream):
                result = work()
            self._pending = (result, self.stream.record_event(), keep)
        else:
            self._pending = (self.pool.submit(_released, work), None, keep)

    def wait(self):
        """The result of the last ``run``, once it is done; the main stream waits for it too."""
        result, event, _keep = self._pending
        self._pending = None
        if not self.cuda:
            return result.result()
        torch.cuda.current_stream().wait_event(event)
        event.synchronize()
        return result


def _released(work):
    """``work()`` in a CPU worker thread, whose OpenMP team then goes (``Background``)."""
    try:
        return work()
    finally:
        openmp.release_team()


def noise_like(e: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise with each row (R, H) as long as that row of ``e``: same size, random direction."""
    z = torch.randn(e.shape, generator=generator, device=e.device)
    return z * (torch.linalg.vector_norm(e, dim=-1, keepdim=True) / torch.linalg.vector_norm(z, dim=-1, keepdim=True))


@dataclass
class RunStats:
    """What a finished run's trace needs from its Pipeline, per prompt and in all."""

    losses: list[list[float]]  # each prompt's distiller loss at the steps it had rows (empty: no distiller)
    rel_novelty: list[list[float]]  # and its mean relative novelty over those rows
    resets: list[int]  # NaN/inf resets of each prompt's distiller
    esamp_seconds: float  # wall time in ESamp's own work: the distiller and the fusion
    parts: dict[str, float] = field(default_factory=dict)  # seconds per part (core.esamp.clock.PARTS)


class Pipeline:
    """One run's ESamp over tensors, the same for every backend: ``propose`` filters the model's
    logits and (with a distiller) predicts and fuses; ``learn`` trains after sampling.

    Plain sampling with the shadow off has no distiller: ``propose`` only filters.
    """

    def __init__(self, config: RunConfig, head: LMHead, prompts: int, initial: list[torch.Tensor] | None = None,
                 shared: SharedBank | None = None, ladder: Sequence[RunConfig] = ()):
        """initial: the weights every distiller starts from (``core.backends.start``; None: fresh);
        shared: a bank the distillers share with other runs' (``Steerer``; ``stage`` each step); ladder:
        runs that differ from ``config`` in β alone (``ladder_key``), stepped as this one: its rows are
        each rung's ``prompts * n`` in turn (``Steerer``'s rungs; ``finish`` reports them rung by rung)."""
        sc = config.sampling
        self.first, self.main = run_filters(config)
        self.head = head
        self._base = config.trace == "full"  # record logp_base
        self.watch = Stopwatch()  # where the time goes; the backends time their own parts with it too
        self._rungs, self._prompts = max(len(ladder), 1), prompts
        self._groups = prompts if config.esamp.scope == "prompt" else 1  # a rung's
        esamp = replace(config.esamp, beta=config.beta)  # the β applied: 0 for every method but esamp
        rungs = [(c.beta, c.esamp.max_kl) for c in ladder]
        self.steerer = Steerer(self._groups * self._rungs, prompts * sc.n * self._rungs, head, esamp,
                               self.main.temperature, seed=sc.seed, watch=self.watch, initial=initial, shared=shared,
                               rungs=rungs) if config.uses_distiller else None

    def propose(self, raw: torch.Tensor, s: torch.Tensor, h: torch.Tensor, positions: torch.Tensor,
                slots: torch.Tensor | None = None) -> Proposal:
        """raw: (R, V) the model's logits; s, h: (R, H) float32; positions: (R,) int on the host, the
        token of its answer each row draws (0: the first, drawn with the first-token filters, unguided)."""
        return self.plan(raw, s, h, positions, slots).finish(self.watch)

    def plan(self, raw: torch.Tensor, s: torch.Tensor, h: torch.Tensor, positions: torch.Tensor,
             slots: torch.Tensor | None = None) -> Planned:
        """``propose`` but for the fusion (``Steerer.plan``): finish it with ``Planned.finish``."""
        first = positions == 0
        with self.watch("filter"):
            firsts = int(first.sum()) if self.first is not self.main else 0
            if firsts == 0:
                cand, temperature = select(self.main, raw), self.main.temperature
            elif firsts == len(first):
                cand, temperature = select(self.first, raw), self.first.temperature
            else:  # FIRE, with rows at different positions: first tokens filtered their own way
                on_first = first.to(raw.device)
                cand = select_mixed(on_first, self.first, self.main, raw)
                temperature = torch.where(on_first, self.first.temperature, self.main.temperature)
            if self.steerer is None:  # float32 values (bfloat16 models); the model's own to sample
                return Planned(cand.exact(self.head, h, temperature, raw), cand.logits, None, None)
        return self.steerer.plan(cand, s, h, positions, slots,
                                 exact=lambda also: cand.exact_with(self.head, h, temperature, raw, also))

    def stage(self, s: torch.Tensor, slots: torch.Tensor | None = None) -> tuple[Lease, torch.Tensor] | None:
        """With a shared bank, before ``propose``: (lease, s) for the bank's step; None without a distiller."""
        return None if self.steerer is None else self.steerer.stage(s, slots)

    def signals(self, prop: Proposal, raw: torch.Tensor) -> PendingSignals:
        """The step's recorded signals, to resolve once its tokens are sampled (raw: (R, V) the
        model's logits, for ``logp_base``)."""
        with self.watch("signals"):
            return PendingSignals(prop.cand, prop.fused, prop.novelty, prop.rel_novelty, raw, base=self._base)

    def to_sample(self, prop: Proposal, out: torch.Tensor | None = None) -> torch.Tensor:
        """(R, V) logits to sample the step's tokens from; written into ``out`` when given (see
        ``Candidates.dense``): pass the model's logits (R, V) once nothing reads them again, after
        ``signals``."""
        with self.watch("filter"):
            return prop.cand.dense(prop.fused if prop.sample is None else prop.sample, out)

    def prime(self, s: torch.Tensor, h: torch.Tensor) -> None:
        """A continuation's distiller, first trained on its given tokens' states (EsampConfig.prime):
        s, h (k, P, H) float32, each prompt's states at the k given tokens."""
        if self.steerer is not None:
            n = self.steerer.rows // s.shape[1]
            self.steerer.prime(s, h, torch.arange(s.shape[1], device=s.device) * n)

    def learn(self, active: torch.Tensor) -> None:
        """Train on the proposed step's active rows (R,) bool, after sampling (nothing without a distiller)."""
        if self.steerer is not None:
            self.steerer.learn(active)

    def finish(self, prompts: int) -> RunStats:
        """Settle the last update and return the run's statistics: call once, after the last step. A
        ladder's per prompt lists hold each rung's prompts in turn, and its times are all of its rungs'."""
        st = self.steerer
        if st is not None:
            st.settle()
        if st is None or not st.losses:
            curves: list[list[list[float]]] = [[[] for _ in range(prompts)] for _ in range(2)]
        else:
            live = torch.stack(st.live).cpu()  # (steps, G)
            curves = []
            for values in (st.losses, st.rel_novelty):
                per_step = torch.stack(values).cpu()  # (steps, G)
                curves.append([per_step[live[:, g], g].tolist() for g in map(self._group_of, range(prompts))])
        resets = [0] * prompts if st is None else [int(st.bank.resets[self._group_of(p)]) for p in range(prompts)]
        return RunStats(curves[0], curves[1], resets, self.watch.distiller_seconds, self.watch.parts())

    def _group_of(self, prompt: int) -> int:
        """The group of a prompt (a ladder's: of a rung's prompt, counted over its rungs in turn)."""
        return prompt if self._groups > 1 else prompt // self._prompts
