"""A bank of G tiny distillers trained online, as batched tensors.

Each distiller maps a shallow state ``s`` to a prediction of the final state ``h`` through
gated residual blocks, ``x <- x + Down(SiLU(Gate x) * Up x)``, ``blocks`` times (ESAMP.md,
'Distiller'). What surrounds the blocks is its ``Design`` (``DESIGNS``; ``python -m
bench.distiller`` measures each): the paper read literally (``residual``: ``h_hat = s +
blocks(s)``) spends most of a generation learning the scale of h, since s is a raw residual
stream and h a normed state; the default (``normed``) predicts in h's own space from the start.
Group g owns slice g of every weight. Rows are laid out group-major: (G, m, H), where m is
the number of rows per group (a prompt's n samples, or all rows in shared scope).

The forward pass and the loss are batched over groups (``bmm``); the Adam step is one fused
call for all the groups that step. The weights and their Adam state are float32 (or, when a run asks,
bfloat16 for a bfloat16 model: ``weights_dtype``); what goes in and comes out (s, the prediction, the
loss) is float32. Nothing here depends on a backend.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.optim.adam import adam  # the functional form of torch.optim.Adam, fused kernel included

from ..config import EsampConfig
from .head import FinalNorm

BETA1, BETA2 = 0.9, 0.999  # Adam's usual moments; ESAMP.md fixes only lr, eps and clipping


@dataclass(frozen=True)
class Design:
    """What a distiller does around its gated blocks."""

    # Scale s to this RMS per dimension first (None: use the raw residual stream, whose scale differs
    # by model). The scale is also how fast the blocks' function moves per Adam step: measured by
    # bench.distiller, 1 learns too slowly within a generation, 8 to 32 alike; 16 is the default.
    input_rms: float | None
    output_norm: bool  # finish with the model's own final norm (frozen): h_hat in h's space and scale
    zero_down: bool  # down projections start at 0, so h_hat starts at norm(x) instead of a random perturbation


DESIGNS = {
    "normed": Design(input_rms=16.0, output_norm=True, zero_down=True),  # final_norm(x + blocks(x)), x = 16 s/rms(s)
    "normed-unit": Design(input_rms=1.0, output_norm=True, zero_down=True),  # the same with x = s/rms(s)
    "final-norm": Design(input_rms=None, output_norm=True, zero_down=False),  # final_norm(s + blocks(s))
    "residual": Design(input_rms=None, output_norm=False, zero_down=False),  # s + blocks(s): the paper literally
}


def weights_dtype(cfg: EsampConfig, model_dtype: torch.dtype) -> torch.dtype:
    """What a run's distillers keep their weights and Adam state in (``EsampConfig.distiller_dtype``):
    float32, or with "model" bfloat16 for a bfloat16 model (a float16 model's range is too narrow for
    Adam's second moment: float32 there too)."""
    return torch.bfloat16 if cfg.distiller_dtype == "model" and model_dtype == torch.bfloat16 else torch.float32


class DistillerBank:
    """G independent distillers with a batched forward and a batched Adam step.

    Usage per decode step (predict -> fuse -> sample -> train)::

        pred = bank.forward(s)              # (G, m, H), keeps the graph for the update
        h_hat = pred.detach()               # steer with it
        ...sample...
        loss, bad = bank.update(pred, h, mask)   # (G,) each; then bank.handle_bad(bad)
    """

    def __init__(self, groups: int, hidden: int, cfg: EsampConfig, device: torch.device | str = "cpu",
                 seed: int = 0, norm: FinalNorm | None = None, design: Design | None = None,
                 initial: Sequence[torch.Tensor] | None = None, dtype: torch.dtype = torch.float32):
        """``norm``: the model's final norm, for designs with ``output_norm`` (a unit-gain RMS norm
        when the model's is unknown). ``design`` overrides ``cfg.distiller`` (for experiments).
        ``initial``: one distiller's weights (``pretrain``'s) that every group starts from, and
        starts again from after a reset; None: fresh random weights (the paper). ``dtype``: the
        weights' and Adam state's (``weights_dtype``)."""
        self.groups, self.hidden, self.cfg = groups, hidden, cfg
        self.design = design or DESIGNS[cfg.distiller]
        self.device = torch.device(device)
        self.dtype = dtype
        self.seed = seed
        self.norm = (norm or FinalNorm(torch.ones(hidden))).to(self.device)
        G, H, inner = groups, hidden, cfg.intermediate
        # (G, in, out) so that x @ w works with bmm; per block: gate, up (H -> inner), down (inner -> H).
        self.shapes = [(G, H, inner), (G, H, inner), (G, inner, H)] * cfg.blocks
        self.params = [torch.empty(s, device=self.device, dtype=dtype) for s in self.shapes]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.counts = [0] * G  # Adam steps of each group since its (re)initialisation, on the host
        self.resets = torch.zeros(G, dtype=torch.long)  # NaN/inf resets per group, on the host
        self._seeds = [(seed, g) for g in range(G)]  # what seeds each group's fresh weights (with its resets)
        self.initial = None if initial is None else [w.to(self.device, dtype) for w in initial]
        if self.initial is not None and [tuple(w.shape) for w in self.initial] != [s[1:] for s in self.shapes]:
            raise ValueError("the initial distiller's weights do not fit this design and width: "
                             f"{[tuple(w.shape) for w in self.initial]} against {[s[1:] for s in self.shapes]}")
        self.reset(torch.ones(G, dtype=torch.bool))

    @property
    def steps(self) -> list[int]:
        """Adam steps taken by each distiller since its (re)initialisation."""
        return list(self.counts)

    @property
    def nbytes_per_distiller(self) -> int:
        """Bytes of weights plus Adam state for one distiller."""
        return 3 * sum(math.prod(s[1:]) for s in self.shapes) * self.params[0].element_size()

    def reset(self, which: torch.Tensor) -> None:
        """Re-initialise the groups where ``which`` (G,) is True: the initial weights (or fresh ones),
        empty Adam state.

        Group g's fresh weights depend only on (seed, g, its reset count), never on how many other
        groups share the batch, and draw from their own generator, not sampling's.
        """
        for g in torch.nonzero(which.cpu()).flatten().tolist():
            gen = torch.Generator().manual_seed(hash((*self._seeds[g], int(self.resets[g]))) & (2**63 - 1))
            for i, (p, m, v, shape) in enumerate(zip(self.params, self.m, self.v, self.shapes)):
                bound = 1.0 / math.sqrt(shape[1])  # nn.Linear's default init, fan_in = shape[1]
                if self.initial is not None:
                    p[g] = self.initial[i]
                else:
                    p[g] = ((torch.rand(shape[1:], generator=gen) * 2 - 1) * bound).to(self.device)  # rounded to dtype
                if self.initial is None and self.design.zero_down and i % 3 == 2:
                    p[g] = 0
                m[g] = 0
                v[g] = 0
            self.counts[g] = 0

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Predict h from s. s: (G, m, H) float32 -> (G, m, H) float32, with a graph for ``update``."""
        with torch.enable_grad():
            for p in self.params:
                p.requires_grad_(True)
            return self._forward(s, self.params)

    def infer(self, s: torch.Tensor) -> torch.Tensor:
        """``forward`` with no graph (an update that runs elsewhere recomputes its own): no autograd
        state is made here, so none made on this thread or CUDA stream is still alive when the
        update's backward runs on another (on CUDA, torch warned that this may synchronise the streams)."""
        with torch.no_grad():
            return self._forward(s, [p.detach() for p in self.params])

    def _forward(self, s: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        gain = self.design.input_rms
        x = s if gain is None else s * (gain * torch.rsqrt(s.square().mean(-1, keepdim=True) + 1e-6))
        with torch.enable_grad():
            x = x.to(self.dtype)
            for b in range(self.cfg.blocks):
                gate, up, down = weights[3 * b: 3 * b + 3]
                x = x + torch.bmm(F.silu(torch.bmm(x, gate)) * torch.bmm(x, up), down)
            return self.norm(x) if self.design.output_norm else x.float()  # the norm's is float32

    def update(self, pred: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step per group on the masked rows; returns (loss (G,), bad (G,) bool).

        pred: (G, m, H) from ``forward``; h: (G, m, H) target; mask: (G, m) rows to train on.
        Loss per group: mean over its masked rows of ||h - pred||^2. Each distiller's gradient
        is clipped to norm ``grad_clip`` on its own. A group whose loss or gradient is not
        finite is left unchanged and flagged in ``bad``: call ``handle_bad(bad)`` to reset it.
        A group with no masked rows takes no step.
        """
        try:
            return self._update(pred, h, mask, self.params, range(self.groups))
        finally:
            for p in self.params:
                p.requires_grad_(False)

    def _update(self, pred: torch.Tensor, h: torch.Tensor, mask: torch.Tensor, weights: Sequence[torch.Tensor],
                slots: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``update`` for a prediction made with ``weights``: the bank's own tensors, or (SharedBank)
        copies of the slots ``slots``, whose gradients then step those slots."""
        with torch.enable_grad():
            sq = (h - pred).square().sum(-1)  # (G, m)
            count = mask.sum(-1).clamp(min=1)  # (G,)
            loss = torch.where(mask, sq, torch.zeros_like(sq)).sum(-1) / count  # (G,)
            grads = torch.autograd.grad(loss.sum(), weights)
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dim=(1, 2), dtype=torch.float32)
                                                         for g in grads]), dim=0)  # (G,) per-distiller gradient norm
            bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
            clip = (norm / self.cfg.grad_clip).clamp(min=1.0)[:, None, None]  # (G, 1, 1): 1 / clip coefficient
            for gr in grads:
                gr.div_(clip.to(gr.dtype))
            # A group steps unless its loss or gradient is not finite or it had no rows (one host sync).
            self._adam(grads, [i for i, ok in enumerate((~bad & mask.any(-1)).tolist()) if ok], slots)
        return loss.detach(), bad

    def _adam(self, grads: Sequence[torch.Tensor], stepping: list[int], slots: Sequence[int]) -> None:
        """One fused Adam call for every group in ``stepping`` (indices into ``grads``; ``slots[i]`` is
        the bank's group): one call per distiller costs ~40 ms on a 2-core CPU, whatever its size.
        Each tensor handed to it has one step count, so the groups go in spans that lie side by side in
        both the gradients and the bank and share a count (one span for a run whose groups all step),
        each a slice of the whole weights: one slice per group took twice as long (24 groups of width
        64: 3.1 against 1.6 ms a step). Every element takes the same step either way, bit for bit
        where a group's weights are whole multiples of the kernel's vector (SmolLM2's and Qwen's
        widths); otherwise within a rounding (2e-10 on weights of 0.18, width 7 on 33 dimensions)."""
        spans: list[list[int]] = []  # [first i, first group, length]: grads[i:i+n] step groups g:g+n
        for i in stepping:
            g = slots[i]
            if spans and spans[-1][0] + spans[-1][2] == i and spans[-1][1] + spans[-1][2] == g \
                    and self.counts[g] == self.counts[spans[-1][1]]:
                spans[-1][2] += 1
            else:
                spans.append([i, g, 1])
        if not spans:
            return
        adam([p[g:g + n] for _, g, n in spans for p in self.params], [gr[i:i + n] for i, _, n in spans for gr in grads],
             [m[g:g + n] for _, g, n in spans for m in self.m], [v[g:g + n] for _, g, n in spans for v in self.v], [],
             [torch.tensor(float(self.counts[g]), device=self.device) for _, g, _ in spans for _ in self.params],
             fused=True, amsgrad=False, beta1=BETA1, beta2=BETA2, lr=self.cfg.lr, weight_decay=0.0,
             eps=self.cfg.eps, maximize=False)
        for _, g, n in spans:
            for k in range(g, g + n):
                self.counts[k] += 1

    def handle_bad(self, bad: torch.Tensor) -> None:
        """Reset flagged groups and count the event (host side; call once ``bad`` is on the host)."""
        bad = bad.cpu()
        if bool(bad.any()):
            self.resets += bad.long()
            self.reset(bad)


def bank_key(cfg: EsampConfig) -> tuple:
    """What distillers must have in common to share a ``SharedBank``: shape, design, optimiser and start."""
    return cfg.distiller, cfg.blocks, cfg.intermediate, cfg.lr, cfg.eps, cfg.grad_clip, cfg.start, cfg.distiller_dtype


class SharedBank(DistillerBank):
    """The distillers of many runs in one bank, so that an engine step predicts with all of them in one
    forward pass and trains them in one update, however many runs share the step (a class of sessions
    on one vLLM engine: a run's own forward and update cost about the same whether it has 1 row or 64).

    Each run leases its G groups (``lease``: slots of this bank, freed with the lease). A step, driven
    by whoever batches the runs (core.backends.vllm.registry)::

        bank.predict([(lease, s), ...])   # one forward for every lease's rows (s: (G, m, H) each)
        ...each run's Steerer proposes: lease.forward returns its part; then lease.update stages its h, mask...
        bank.learn()                      # one update for every lease that staged one

    A leased distiller's weights, Adam state, resets and fresh initialisation are exactly those it
    would have in a DistillerBank of its own (seeded by its run's seed and its own group index), so a
    run's numbers do not depend on who else shares the bank beyond the roundings of a larger matmul.
    """

    def __init__(self, hidden: int, cfg: EsampConfig, device: torch.device | str = "cpu",
                 norm: FinalNorm | None = None, initial: Sequence[torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__(0, hidden, cfg, device=device, norm=norm, initial=initial, dtype=dtype)
        self.free: list[int] = []  # slots no lease holds
        self._round: _Round | None = None

    @property
    def leased(self) -> int:
        """Slots held by leases."""
        return self.groups - len(self.free)

    def lease(self, groups: int, seed: int, index: Sequence[int] | None = None) -> "Lease":
        """G fresh distillers for a run, seeded as ``DistillerBank(groups, ..., seed=seed)``'s would be;
        ``index``: each one's group index in that bank instead (a ladder's rungs: each as a run of its own)."""
        if len(self.free) < groups:
            self._grow(groups - len(self.free))
        self.free.sort(reverse=True)
        slots = [self.free.pop() for _ in range(groups)]
        which = torch.zeros(self.groups, dtype=torch.bool)
        for g, slot in enumerate(slots):
            self._seeds[slot] = (seed, g if index is None else index[g])
            self.resets[slot] = 0
            which[slot] = True
        self.reset(which)
        return Lease(self, slots)

    def release(self, slots: Sequence[int]) -> None:
        """Slots whose lease has ended; the bank lets its storage go once no lease is left."""
        self.free.extend(slots)
        if self.leased == 0:
            self._resize(0)

    def _grow(self, more: int) -> None:
        old = self.groups
        self._resize(max(2 * old, old + more, 4))
        self.free.extend(range(old, self.groups))

    def _resize(self, capacity: int) -> None:
        keep = min(capacity, self.groups)

        def fit(x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros((capacity,) + x.shape[1:])
            out[:keep] = x[:keep]
            return out

        self.params, self.m, self.v = ([fit(x) for x in xs] for xs in (self.params, self.m, self.v))
        self.counts = self.counts[:keep] + [0] * (capacity - keep)
        self.resets = fit(self.resets)
        self._seeds = self._seeds[:keep] + [(0, 0)] * (capacity - keep)
        if capacity == 0:
            self.free = []
        self.groups = capacity
        self.shapes = [(capacity,) + s[1:] for s in self.shapes]

    def predict(self, staged: Sequence[tuple["Lease", torch.Tensor]]) -> None:
        """One forward pass for every lease's rows of a step: (lease, s (G, m, H)), each lease once;
        each lease's ``forward`` then returns its part. Leases' rows are padded to the most rows any has."""
        if not staged:
            self._round = None
            return
        most = max(s.shape[1] for _, s in staged)
        slots = [slot for lease, _ in staged for slot in lease.slots]
        x = staged[0][1].new_zeros((len(slots), most, self.hidden))
        o = 0
        for lease, s in staged:
            x[o:o + len(lease.slots), :s.shape[1]] = s
            o += len(lease.slots)
        weights = self._leaves(slots)
        pred = self._forward(x, weights)
        mask = torch.zeros(pred.shape[:2], dtype=torch.bool, device=pred.device)
        r = self._round = _Round(slots, weights, pred, x.new_zeros(pred.shape), mask)
        o = 0
        for lease, s in staged:
            lease._staged = (r, o, pred[o:o + len(lease.slots), :s.shape[1]])
            o += len(lease.slots)

    def _leaves(self, slots: list[int]) -> list[torch.Tensor]:
        """The slots' weights as leaves of a step's graph: views of the bank's own where the slots are one
        ascending range (one run, or runs leased in turn: no copy), copies otherwise. Either way the
        update computes their gradients before it writes the bank's weights."""
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return [p[slots[0]:slots[0] + len(slots)].detach().requires_grad_(True) for p in self.params]
        index = torch.tensor(slots, device=self.device)
        return [p.index_select(0, index).requires_grad_(True) for p in self.params]

    @property
    def staged(self) -> "_Round | None":
        """What this step's update reads (its weights, predictions, targets): kept alive by whoever runs
        ``learn`` elsewhere until it is waited for (``steerer.Background.run``'s ``keep``)."""
        return self._round

    def learn(self) -> None:
        """One update for every lease that staged one this step (the others' slots take no step)."""
        r, self._round = self._round, None
        if r is None or not bool(r.mask.any()):
            return
        loss, bad = self._update(r.pred, r.h, r.mask, r.weights, r.slots)
        for lease, o, out_loss, out_bad in r.results:
            n = len(lease.slots)
            out_loss.copy_(loss[o:o + n])
            out_bad.copy_(bad[o:o + n])


@dataclass
class _Round:
    """One step of a SharedBank: what its forward pass saw and what the leases stage for the update."""

    slots: list[int]
    weights: list[torch.Tensor]  # the slots' weights as leaves of the step's graph (SharedBank._leaves)
    pred: torch.Tensor  # (S, most, H)
    h: torch.Tensor  # (S, most, H) the targets the leases stage
    mask: torch.Tensor  # (S, most) the rows they train on
    results: list = field(default_factory=list)  # (lease, offset, loss out, bad out)


class Lease:
    """A run's G distillers inside a SharedBank, used by a Steerer as it would use a DistillerBank of
    its own: ``forward`` answers with the bank's step prediction for its rows, ``update`` stages the
    targets and hands back (loss, bad), filled in by the bank's ``learn``."""

    def __init__(self, bank: SharedBank, slots: list[int]):
        self.bank, self.slots = bank, slots
        self.groups = len(slots)
        self._staged: tuple[_Round, int, torch.Tensor] | None = None  # this step's: (round, offset, prediction)
        self._end = weakref.finalize(self, bank.release, list(slots))  # freed when the run is, at the latest

    @property
    def resets(self) -> torch.Tensor:
        return self.bank.resets[self.slots]

    @property
    def steps(self) -> list[int]:
        return [self.bank.counts[slot] for slot in self.slots]

    @property
    def params(self) -> list[torch.Tensor]:
        """Copies of this lease's weights, (G, in, out) each."""
        return [p[self.slots] for p in self.bank.params]

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self._staged is None or self._staged[0] is not self.bank._round or self._staged[2].shape != s.shape:
            raise RuntimeError("a shared distiller predicts in its bank's step: SharedBank.predict first")
        return self._staged[2]

    def update(self, pred: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        staged, self._staged = self._staged, None
        if staged is None or staged[0] is not self.bank._round or staged[2] is not pred:
            raise RuntimeError("a shared distiller trains in its bank's step, on the prediction of that step")
        r, o, m = staged[0], staged[1], pred.shape[1]
        r.h[o:o + self.groups, :m] = h
        r.mask[o:o + self.groups, :m] = mask
        loss, bad = torch.zeros(self.groups, device=pred.device), torch.zeros(self.groups, dtype=torch.bool,
                                                                              device=pred.device)
        r.results.append((self, o, loss, bad))
        return loss, bad

    def handle_bad(self, bad: torch.Tensor) -> None:
        bad = bad.cpu()
        if bool(bad.any()):
            which = torch.zeros(self.bank.groups, dtype=torch.bool)
            which[[s for s, b in zip(self.slots, bad.tolist()) if b]] = True
            self.bank.resets += which.long()
            self.bank.reset(which)

    def release(self) -> None:
        """Give the slots back (once; also when the lease is collected)."""
        self._end()


PRETRAIN_STEPS = 200  # Adam steps on generic text; 100 and 400 learned alike (docs/results.md)
PRETRAIN_BATCH = 64  # rows a step, drawn at random from all the states


def pretrain(s: torch.Tensor, h: torch.Tensor, cfg: EsampConfig, norm: FinalNorm | None = None,
             steps: int = PRETRAIN_STEPS, seed: int = 0) -> list[torch.Tensor]:
    """One distiller trained on a model's states over generic text, to start every run's distillers
    from (``DistillerBank(initial=...)``): what every context of this model shares (the scale of h,
    the map from a first-layer state to a final one) is then known before a run starts, and a run's
    own training learns what is particular to its prompt. s, h: (N, H) float32 states at N
    positions. Returns the weights, on the host."""
    bank = DistillerBank(1, s.shape[-1], cfg, device=s.device, seed=seed, norm=norm)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.ones(1, min(PRETRAIN_BATCH, len(s)), dtype=torch.bool, device=s.device)
    for _ in range(steps):
        pick = torch.randint(0, len(s), (rows.shape[1],), generator=gen).to(s.device)
        pred = bank.forward(s[pick][None])
        _, bad = bank.update(pred, h[pick][None], rows)
        bank.handle_bad(bad)
    return [p[0].detach().cpu().clone() for p in bank.params]
