"""ESamp's fusion step and the novelty signal, as functions over tensors.

Independent of any backend: a backend hands in the candidates (filtered reference logits), the
final state h, the distiller's prediction h_hat and the LM head; it gets back the logits to
sample from. Shapes: R rows, H hidden, K candidates per row.
"""

from __future__ import annotations

import torch

from .budget import bounded
from .candidates import Candidates
from .head import LMHead


def fuse(cand: Candidates, h: torch.Tensor, h_hat: torch.Tensor, head: LMHead, beta: float,
         temperature: float, projected: torch.Tensor | None = None, max_kl: float | None = None) -> torch.Tensor:
    """ESamp's fused logits on the candidates: ``(1 + beta) l_ref - beta l_dist``.

    cand.logits: (R, K) filtered reference logits ``l_ref`` (already divided by T);
    h, h_hat: (R, H) final state and the distiller's prediction. Returns (R, K) float32;
    tokens outside the candidate set stay -inf. With a linear head this is
    ``l_ref + beta * w . (h - h_hat) / T``: the bias cancels and only ``e`` is projected.
    A row whose prediction is not finite is left unguided. ``projected``: ``W (h - h_hat)`` at the
    candidates when already computed (``Candidates.exact_with``), for a linear head. ``max_kl``:
    each row's push bounded to that many nats (``core.esamp.budget``); None: the paper's fusion.
    """
    if head.softcap is None:  # only the candidates' entries are needed (the rest stay -inf)
        if projected is None:
            projected = head.project(h - h_hat, cand.ids, keep=torch.isfinite(cand.logits))
        delta = projected * (beta / temperature)
    else:
        l_dist = head.logits(h_hat, cand.ids) / temperature
        delta = beta * (cand.logits - l_dist)  # (1+b) l_ref - b l_dist = l_ref + b (l_ref - l_dist)
    delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
    if max_kl is None or beta <= 0:
        return cand.logits + delta
    t = bounded(cand.logits, delta / beta, beta, max_kl)  # (R,) each row's β, at most beta
    return cand.logits + delta * (t / beta)[:, None]


def novelty(h: torch.Tensor, h_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||e||, ||e|| / ||h||) per row for e = h - h_hat; (R, H) -> (R,), (R,)."""
    err = torch.linalg.vector_norm(h - h_hat, dim=-1)
    return err, err / torch.linalg.vector_norm(h, dim=-1).clamp(min=1e-12)
