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
         temperature: float, projected: torch.Tensor | None = None, max_kl: float | None = None,
         keep_entropy: bool = False) -> torch.Tensor:
    """ESamp's fused logits on the candidates: ``(1 + beta) l_ref - beta l_dist``.

    cand.logits: (R, K) filtered reference logits ``l_ref`` (already divided by T);
    h, h_hat: (R, H) final state and the distiller's prediction. Returns (R, K) float32;
    tokens outside the candidate set stay -inf. With a linear head this is
    ``l_ref + beta * w . (h - h_hat) / T``: the bias cancels and only ``e`` is projected.
    A row whose prediction is not finite is left unguided. ``projected``: ``W (h - h_hat)`` at the
    candidates when already computed (``Candidates.exact_with``), for a linear head. ``max_kl``:
    each row's push bounded to that many nats (``core.esamp.budget``); None: the paper's fusion.
    ``keep_entropy``: the push less its part along ``l_ref`` (``level``), so it does not act as a
    temperature; False: the paper's push.
    """
    if head.softcap is None:  # only the candidates' entries are needed (the rest stay -inf)
        if projected is None:
            projected = head.project(h - h_hat, cand.ids, keep=torch.isfinite(cand.logits))
        delta = projected * (beta / temperature)
    else:
        l_dist = head.logits(h_hat, cand.ids) / temperature
        delta = beta * (cand.logits - l_dist)  # (1+b) l_ref - b l_dist = l_ref + b (l_ref - l_dist)
    delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
    if keep_entropy:
        delta = level(cand.logits, delta)
    if max_kl is None or beta <= 0:
        return cand.logits + delta
    t = bounded(cand.logits, delta / beta, beta, max_kl)  # (R,) each row's β, at most beta
    return cand.logits + delta * (t / beta)[:, None]


def level(ref: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``delta`` less its regression on the reference logits, weighted by the reference distribution:
    ``delta - E_p[delta] - c (l - E_p[l])`` with ``c = Cov_p(delta, l) / Var_p(l)``. A push ``l + t delta`` changes the
    entropy at rate ``-Cov_p(delta, l)`` (t = 0), so the leveled push leaves it unchanged to first order:
    it moves mass between tokens without the part that is a lower temperature (where the distiller's
    prediction is broad, ``l_ref - l_dist`` grows with ``l_ref``) or a higher one.
    ref: (R, K), -inf outside the candidates; delta: (R, K), 0 there. Returns (R, K), 0 there."""
    finite = torch.isfinite(ref)
    p = torch.softmax(ref, dim=-1)
    centred = torch.where(finite, ref, torch.zeros_like(ref))
    centred = centred - (p * centred).sum(-1, keepdim=True)
    var = (p * centred * centred).sum(-1, keepdim=True)
    delta = delta - (p * delta).sum(-1, keepdim=True)  # a shift moves no mass: centred too, for the bound
    c = (p * centred * delta).sum(-1, keepdim=True) / var.clamp(min=1e-12)  # Cov_p(delta, l) / Var_p(l)
    c = torch.where(var > 1e-12, c, torch.zeros_like(c))  # one candidate (or all equal): nothing to take out
    return torch.where(finite, delta - c * centred, torch.zeros_like(delta))


def novelty(h: torch.Tensor, h_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||e||, ||e|| / ||h||) per row for e = h - h_hat; (R, H) -> (R,), (R,)."""
    err = torch.linalg.vector_norm(h - h_hat, dim=-1)
    return err, err / torch.linalg.vector_norm(h, dim=-1).clamp(min=1e-12)
