"""One ESamp decode step over tensors, shared by every engine (transformers loop, generate()
interop, vLLM): predict h_hat -> fuse -> (engine samples) -> train.

Rows are laid out group-major: R = G * m rows, group g owning rows g*m .. g*m+m-1 (a prompt's
n samples with per-prompt scope; all rows with shared scope). An engine whose batch does not
have that layout (vLLM reorders and drops requests every step) passes ``slots``: the layout
row of each batch row; missing layout rows then neither steer nor train.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .config import EsampConfig
from .distiller import DistillerBank
from .fusion import Candidates, LMHead, fuse, novelty


@dataclass
class Proposal:
    """What one step proposes: the logits to sample from, and what ``learn`` needs afterwards."""

    cand: Candidates  # reference candidates (filtered l_ref)
    fused: torch.Tensor  # (R, K) candidate logits after fusion (``cand.logits`` when unguided)
    to_sample: torch.Tensor  # (R, V) logits to sample from
    novelty: torch.Tensor | None  # (R,) ||h - h_hat||
    rel_novelty: torch.Tensor | None  # (R,)
    _pred: torch.Tensor | None = None  # (G, m, H) with the distiller's graph
    _h: torch.Tensor | None = None  # (G, m, H)
    _slots: torch.Tensor | None = None  # (R,) layout row of each batch row, or None: the batch is the layout


class Steerer:
    """ESamp for a batch of R rows in G groups; with ``beta=0`` it only observes (shadow mode)."""

    def __init__(self, groups: int, rows: int, head: LMHead, cfg: EsampConfig, beta: float,
                 temperature: float, seed: int = 0):
        if rows % groups:
            raise ValueError(f"rows ({rows}) must be a multiple of groups ({groups})")
        self.groups, self.rows, self.head, self.beta, self.temperature = groups, rows, head, beta, temperature
        hidden = head.weight.shape[1]
        self.bank = DistillerBank(groups, hidden, cfg, device=head.weight.device, seed=seed)
        self.losses: list[torch.Tensor] = []  # (G,) per step, on the device
        self.live: list[torch.Tensor] = []  # (G,) bool per step: the group had rows to train on
        self.seconds = 0.0  # wall time in ESamp's own work (predict, fuse, train); on CUDA, launch time only

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.groups, self.rows // self.groups, -1)  # (R, H) -> (G, m, H)

    def _to_layout(self, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None:
            return x
        return x.new_zeros((self.rows,) + x.shape[1:]).index_copy_(0, slots, x)

    def propose(self, filtered: torch.Tensor, filters_active: bool, s: torch.Tensor, h: torch.Tensor,
                guided: bool | torch.Tensor, slots: torch.Tensor | None = None, bound: int | None = None) -> Proposal:
        """filtered: (R, V) reference logits after temperature and filters; s, h: (R, H) float32.

        guided=False samples unguided (the first token, or beta=0) but still predicts, so
        novelty is logged and the distiller trains; a (R,) bool tensor decides per row. ``bound``:
        see ``Candidates.from_filtered``.
        """
        cand = Candidates.from_filtered(filtered, filters_active, bound)  # plain sampling needs this too
        t0 = time.perf_counter()
        pred = self.bank.forward(self._grouped(self._to_layout(s, slots)))  # (G, m, H), with grad for the update
        h_hat = pred.detach().reshape(-1, h.shape[-1])
        if slots is not None:
            h_hat = h_hat[slots]  # (R, H)
        nov, rel = novelty(h, h_hat)
        if self.beta > 0 and (guided if isinstance(guided, bool) else True):
            fused = fuse(cand, h, h_hat, self.head, self.beta, self.temperature)
            if isinstance(guided, torch.Tensor):
                fused = torch.where(guided[:, None], fused, cand.logits)
            to_sample = cand.scatter(filtered, fused)
        else:
            fused, to_sample = cand.logits, filtered
        self.seconds += time.perf_counter() - t0
        return Proposal(cand, fused, to_sample, nov, rel, pred, self._grouped(self._to_layout(h, slots)), slots)

    def learn(self, proposal: Proposal, active: torch.Tensor) -> torch.Tensor:
        """Train every distiller on its active rows (R,) bool; returns ``bad`` (G,) on the device."""
        t0 = time.perf_counter()
        mask = self._grouped(self._to_layout(active, proposal._slots)[:, None])[..., 0]  # (G, m)
        loss, bad = self.bank.update(proposal._pred, proposal._h, mask)
        self.losses.append(loss)
        self.live.append(mask.any(-1))
        proposal._pred = proposal._h = None  # free the graph
        self.seconds += time.perf_counter() - t0
        return bad


def unguided(filtered: torch.Tensor, filters_active: bool, bound: int | None = None) -> Proposal:
    """A proposal with no distiller at all (plain sampling with the shadow off)."""
    cand = Candidates.from_filtered(filtered, filters_active, bound)
    return Proposal(cand, cand.logits, filtered, None, None)
