"""A bank of G tiny distillers trained online, as batched tensors (no Python loop over groups).

Each distiller maps a shallow state ``s`` to a prediction of the final state ``h``:
``x <- x + Down(SiLU(Gate x) * Up x)``, ``blocks`` times (ESAMP.md, 'Distiller').
Group g owns slice g of every weight. Rows are laid out group-major: (G, m, H), where m is
the number of rows per group (a prompt's n samples, or all rows in shared scope).

Everything here is float32 and independent of transformers, so any engine can use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import EsampConfig

BETA1, BETA2 = 0.9, 0.999  # Adam's usual moments; ESAMP.md fixes only lr, eps and clipping


class DistillerBank:
    """G independent distillers with a batched forward and a batched Adam step.

    Usage per decode step (predict -> fuse -> sample -> train)::

        pred = bank.forward(s)              # (G, m, H), keeps the graph for the update
        h_hat = pred.detach()               # steer with it
        ...sample...
        loss, reset = bank.update(pred, h, mask)
    """

    def __init__(self, groups: int, hidden: int, cfg: EsampConfig, device: torch.device | str = "cpu",
                 seed: int = 0):
        self.groups, self.hidden, self.cfg = groups, hidden, cfg
        self.device = torch.device(device)
        self.seed = seed
        I, H, G = cfg.intermediate, hidden, groups
        # (G, in, out) so that x @ w works with bmm; per block: gate, up (H -> I), down (I -> H).
        self.shapes = [(G, H, I), (G, H, I), (G, I, H)] * cfg.blocks
        self.params = [torch.empty(s, device=self.device) for s in self.shapes]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.step = torch.zeros(G, device=self.device)  # Adam step per group (bias correction)
        self.resets = torch.zeros(G, dtype=torch.long)  # NaN/inf resets per group, on the host
        self.reset(torch.ones(G, dtype=torch.bool))

    @property
    def nbytes_per_distiller(self) -> int:
        """Bytes of weights plus Adam state for one distiller."""
        return 3 * sum(math.prod(s[1:]) for s in self.shapes) * 4

    def reset(self, which: torch.Tensor) -> None:
        """Re-initialise the groups where ``which`` (G,) is True: fresh weights, empty Adam state.

        Group g's weights depend only on (seed, g, its reset count), never on how many other
        groups share the batch, and draw from their own generator, not sampling's.
        """
        for g in torch.nonzero(which.cpu()).flatten().tolist():
            gen = torch.Generator().manual_seed(hash((self.seed, g, int(self.resets[g]))) & (2**63 - 1))
            for p, m, v, shape in zip(self.params, self.m, self.v, self.shapes):
                bound = 1.0 / math.sqrt(shape[1])  # nn.Linear's default init, fan_in = shape[1]
                p[g] = ((torch.rand(shape[1:], generator=gen) * 2 - 1) * bound).to(self.device)
                m[g] = 0
                v[g] = 0
            self.step[g] = 0

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Predict h from s. s: (G, m, H) float32 -> (G, m, H), with a graph for ``update``."""
        x = s
        with torch.enable_grad():
            for p in self.params:
                p.requires_grad_(True)
            for b in range(self.cfg.blocks):
                gate, up, down = self.params[3 * b: 3 * b + 3]
                x = x + torch.bmm(F.silu(torch.bmm(x, gate)) * torch.bmm(x, up), down)
        return x

    def update(self, pred: torch.Tensor, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Adam step per group on the masked rows; returns (loss (G,), bad (G,) bool).

        pred: (G, m, H) from ``forward``; h: (G, m, H) target; mask: (G, m) rows to train on.
        Loss per group: mean over its masked rows of ||h - pred||^2. A group whose loss or
        gradient is not finite gets no update and is flagged in ``bad``; call ``reset(bad)``.
        """
        with torch.enable_grad():
            sq = (h - pred).square().sum(-1)  # (G, m)
            count = mask.sum(-1).clamp(min=1)  # (G,)
            loss = torch.where(mask, sq, torch.zeros_like(sq)).sum(-1) / count  # (G,)
            grads = torch.autograd.grad(loss.sum(), self.params)
        with torch.no_grad():
            for p in self.params:
                p.requires_grad_(False)
            norm = torch.sqrt(sum(g.square().sum(dim=(1, 2)) for g in grads))  # (G,) per-distiller norm
            bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
            active = mask.any(-1) & ~bad  # groups that learn this step
            scale = (self.cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            scale = torch.where(active, scale, torch.zeros_like(scale))[:, None, None]  # (G, 1, 1)
            self.step += active.float()
            t = self.step.clamp(min=1)[:, None, None]
            lr_t = self.cfg.lr * torch.sqrt(1 - BETA2 ** t) / (1 - BETA1 ** t)  # (G, 1, 1)
            lr_t = torch.where(active[:, None, None], lr_t, torch.zeros_like(lr_t))
            a = active[:, None, None]
            for p, g, m, v in zip(self.params, grads, self.m, self.v):
                g = torch.nan_to_num(g) * scale
                m.copy_(torch.where(a, m * BETA1 + g * (1 - BETA1), m))
                v.copy_(torch.where(a, v * BETA2 + g.square() * (1 - BETA2), v))
                p.sub_(lr_t * m / (v.sqrt() + self.cfg.eps * torch.sqrt(1 - BETA2 ** t)))
        return loss.detach(), bad

    def handle_bad(self, bad: torch.Tensor) -> None:
        """Reset flagged groups and count the event (host side; call once ``bad`` is on the host)."""
        bad = bad.cpu()
        if bool(bad.any()):
            self.resets += bad.long()
            self.reset(bad)
