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
call for all the groups that step. Everything here is float32 and independent of any backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
                 initial: Sequence[torch.Tensor] | None = None):
        """``norm``: the model's final norm, for designs with ``output_norm`` (a unit-gain RMS norm
        when the model's is unknown). ``design`` overrides ``cfg.distiller`` (for experiments).
        ``initial``: one distiller's weights (``pretrain``'s) that every group starts from, and
        starts again from after a reset; None: fresh random weights (the paper)."""
        self.groups, self.hidden, self.cfg = groups, hidden, cfg
        self.design = design or DESIGNS[cfg.distiller]
        self.device = torch.device(device)
        self.seed = seed
        self.norm = (norm or FinalNorm(torch.ones(hidden))).to(self.device)
        G, H, inner = groups, hidden, cfg.intermediate
        # (G, in, out) so that x @ w works with bmm; per block: gate, up (H -> inner), down (inner -> H).
        self.shapes = [(G, H, inner), (G, H, inner), (G, inner, H)] * cfg.blocks
        self.params = [torch.empty(s, device=self.device) for s in self.shapes]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        # Adam's step count, one scalar per (group, weight) as torch's fused Adam wants them.
        self._steps = [[torch.zeros((), device=self.device) for _ in self.shapes] for _ in range(G)]
        self.resets = torch.zeros(G, dtype=torch.long)  # NaN/inf resets per group, on the host
        self.initial = None if initial is None else [w.to(self.device, torch.float32) for w in initial]
        if self.initial is not None and [tuple(w.shape) for w in self.initial] != [s[1:] for s in self.shapes]:
            raise ValueError("the initial distiller's weights do not fit this design and width: "
                             f"{[tuple(w.shape) for w in self.initial]} against {[s[1:] for s in self.shapes]}")
        self.reset(torch.ones(G, dtype=torch.bool))

    @property
    def steps(self) -> list[int]:
        """Adam steps taken by each distiller since its (re)initialisation."""
        return [int(s[0]) for s in self._steps]

    @property
    def nbytes_per_distiller(self) -> int:
        """Bytes of weights plus Adam state for one distiller."""
        return 3 * sum(math.prod(s[1:]) for s in self.shapes) * 4

    def reset(self, which: torch.Tensor) -> None:
        """Re-initialise the groups where ``which`` (G,) is True: the initial weights (or fresh ones),
        empty Adam state.

        Group g's fresh weights depend only on (seed, g, its reset count), never on how many other
        groups share the batch, and draw from their own generator, not sampling's.
        """
        for g in torch.nonzero(which.cpu()).flatten().tolist():
            gen = torch.Generator().manual_seed(hash((self.seed, g, int(self.resets[g]))) & (2**63 - 1))
            for i, (p, m, v, shape) in enumerate(zip(self.params, self.m, self.v, self.shapes)):
                bound = 1.0 / math.sqrt(shape[1])  # nn.Linear's default init, fan_in = shape[1]
                if self.initial is not None:
                    p[g] = self.initial[i]
                else:
                    p[g] = ((torch.rand(shape[1:], generator=gen) * 2 - 1) * bound).to(self.device)
                if self.initial is None and self.design.zero_down and i % 3 == 2:
                    p[g] = 0
                m[g] = 0
                v[g] = 0
            for step in self._steps[g]:
                step.zero_()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Predict h from s. s: (G, m, H) float32 -> (G, m, H), with a graph for ``update``."""
        gain = self.design.input_rms
        x = s if gain is None else s * (gain * torch.rsqrt(s.square().mean(-1, keepdim=True) + 1e-6))
        with torch.enable_grad():
            for p in self.params:
                p.requires_grad_(True)
            for b in range(self.cfg.blocks):
                gate, up, down = self.params[3 * b: 3 * b + 3]
                x = x + torch.bmm(F.silu(torch.bmm(x, gate)) * torch.bmm(x, up), down)
            return self.norm(x) if self.design.output_norm else x

    def update(self, pred: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step per group on the masked rows; returns (loss (G,), bad (G,) bool).

        pred: (G, m, H) from ``forward``; h: (G, m, H) target; mask: (G, m) rows to train on.
        Loss per group: mean over its masked rows of ||h - pred||^2. Each distiller's gradient
        is clipped to norm ``grad_clip`` on its own. A group whose loss or gradient is not
        finite is left unchanged and flagged in ``bad``: call ``handle_bad(bad)`` to reset it.
        A group with no masked rows takes no step.
        """
        with torch.enable_grad():
            sq = (h - pred).square().sum(-1)  # (G, m)
            count = mask.sum(-1).clamp(min=1)  # (G,)
            loss = torch.where(mask, sq, torch.zeros_like(sq)).sum(-1) / count  # (G,)
            grads = torch.autograd.grad(loss.sum(), self.params)
        with torch.no_grad():
            for p in self.params:
                p.requires_grad_(False)
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dim=(1, 2)) for g in grads]),
                                            dim=0)  # (G,) per-distiller gradient norm
            bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
            clip = (norm / self.cfg.grad_clip).clamp(min=1.0)[:, None, None]  # (G, 1, 1): 1 / clip coefficient
            for gr in grads:
                gr.div_(clip)
            # One fused Adam call for every distiller that steps (one call per distiller costs ~40 ms
            # each on a 2-core CPU, whatever its size): each slice has its own step count. A group
            # steps unless its loss or gradient is not finite or it had no rows (one host sync).
            stepping = [g for g, ok in enumerate((~bad & mask.any(-1)).tolist()) if ok]
            if stepping:
                adam([p[g] for g in stepping for p in self.params], [gr[g] for g in stepping for gr in grads],
                     [m[g] for g in stepping for m in self.m], [v[g] for g in stepping for v in self.v], [],
                     [s for g in stepping for s in self._steps[g]], fused=True, amsgrad=False, beta1=BETA1,
                     beta2=BETA2, lr=self.cfg.lr, weight_decay=0.0, eps=self.cfg.eps, maximize=False)
        return loss.detach(), bad

    def handle_bad(self, bad: torch.Tensor) -> None:
        """Reset flagged groups and count the event (host side; call once ``bad`` is on the host)."""
        bad = bad.cpu()
        if bool(bad.any()):
            self.resets += bad.long()
            self.reset(bad)


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
