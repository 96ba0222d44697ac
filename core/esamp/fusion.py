"""ESamp's fusion step and the novelty signal, as functions over tensors.

Independent of any backend: a backend hands in the candidates (filtered reference logits), the
final state h, the distiller's prediction h_hat and the LM head; it gets back the logits to
sample from. Shapes: R rows, H hidden, K candidates per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import bounded
from .candidates import Candidates, rows_of
from .head import LMHead


def fuse(cand: Candidates, h: torch.Tensor, h_hat: torch.Tensor, head: LMHead, beta: float | torch.Tensor,
         temperature: float, projected: torch.Tensor | None = None, max_kl: float | torch.Tensor | None = None,
         keep_entropy: bool = False, starts: torch.Tensor | None = None) -> torch.Tensor:
    """ESamp's fused logits on the candidates: ``(1 + beta) l_ref - beta l_dist``.

    cand.logits: (R, K) filtered reference logits ``l_ref`` (already divided by T);
    h, h_hat: (R, H) final state and the distiller's prediction. Returns (R, K) float32;
    tokens outside the candidate set stay -inf. With a linear head this is
    ``l_ref + beta * w . (h - h_hat) / T``: the bias cancels and only ``e`` is projected.
    A row whose prediction is not finite is left unguided. ``projected``: ``W (h - h_hat)`` at the
    candidates when already computed (``Candidates.exact_with``), for a linear head. ``max_kl``:
    each row's push bounded to that many nats (``core.esamp.budget``); None: the paper's fusion.
    ``keep_entropy``: the push less its part along ``l_ref`` (``level``), so it does not act as a
    temperature; False: the paper's push. ``starts``: (R, K) bool, the candidates that start a word
    (``core.esamp.words``): the push moves only those (``between_words``); None: every candidate.
    ``beta`` and ``max_kl`` may be (R,) tensors, each row's own (a β ladder stepped as one run); a row at
    β = 0 then comes back as it went in, only as log-probabilities where the push is between words.
    """
    groups = cand.by_width()
    if groups is None or (len(groups) == 1 and groups[0][1] == cand.logits.shape[-1]):
        return _fuse(cand, h, h_hat, head, beta, temperature, projected, max_kl, keep_entropy, starts)
    # A row's fusion reads its own entries alone: each group of rows at its own width, not the widest's.
    out = cand.logits.clone()
    for rows, width in groups:
        pushed = _fuse(cand.rows(rows, width), rows_of(h, rows), rows_of(h_hat, rows), head, rows_of(beta, rows),
                       temperature, rows_of(projected, rows, width), rows_of(max_kl, rows), keep_entropy,
                       rows_of(starts, rows, width))
        out[:, :width].index_copy_(0, rows, pushed)
    return out


@dataclass
class Push:
    """One step's fusion of one run as ``fuse`` takes it, for the rows the push moves: made by
    ``Steerer.plan`` and ``run`` there, or with other runs' of the same step (``together``)."""

    cand: Candidates
    h: torch.Tensor
    h_hat: torch.Tensor
    head: LMHead
    beta: float | torch.Tensor
    temperature: float
    projected: torch.Tensor | None
    max_kl: float | torch.Tensor | None
    keep_entropy: bool
    starts: torch.Tensor | None

    def run(self) -> torch.Tensor:
        return fuse(self.cand, self.h, self.h_hat, self.head, self.beta, self.temperature, self.projected,
                    self.max_kl, self.keep_entropy, self.starts)

    def kind(self) -> tuple:
        """Pushes of one kind fuse as one block, each row exactly as the fusion treats it alone: the same
        head, temperature and switches, the same β and bound where they are one number for every row."""
        def one(x):
            return "rows" if isinstance(x, torch.Tensor) else x
        return (id(self.head), self.temperature, self.keep_entropy, self.starts is None, self.projected is None,
                self.cand.ids is None, one(self.beta), one(self.max_kl))


def together(pushes: list[Push]) -> list[torch.Tensor]:
    """Each push's fused logits, as ``Push.run`` gives them, the pushes of one kind (``Push.kind``) fused
    as one block: one pass of the fusion's few hundred small operations for every run of an engine step,
    where each run's own took a millisecond or two at tens of rows (their cost is per call more than per
    row). The runs' candidates are padded to the widest's (-inf: no candidate), and each run's rows come
    back at its own width. A row's fusion reads its own entries alone, so the rows are as they would be
    alone (to the last bit where the sums' lengths differ)."""
    out: list[torch.Tensor | None] = [None] * len(pushes)
    kinds: dict[tuple, list[int]] = {}
    for i, push in enumerate(pushes):
        kinds.setdefault(push.kind(), []).append(i)
    for members in kinds.values():
        if len(members) == 1:
            out[members[0]] = pushes[members[0]].run()
            continue
        block = [pushes[i] for i in members]
        fused = _joined(block).run()
        start = 0
        for i, push in zip(members, block):
            rows, width = push.cand.logits.shape
            out[i] = fused[start:start + rows, :width]
            start += rows
    return out  # type: ignore[return-value]


def _joined(pushes: list[Push]) -> Push:
    """Pushes of one kind as one, their candidates padded to the widest's."""
    width = max(p.cand.logits.shape[-1] for p in pushes)

    def cat(parts, fill=None):
        """Per-row tensors one after another ((R, K) ones padded with ``fill``); one value as it is."""
        if not isinstance(parts[0], torch.Tensor):
            return parts[0]  # one value for every row, the same in each (``Push.kind``)
        if fill is None:
            return torch.cat(parts)
        # Written into one block: padding each part and then joining them took ten times as long
        # (8.3 against 0.85 ms for 8 runs' 48 rows up to 2,102 candidates wide, a K = 8 step's).
        out = parts[0].new_full((sum(x.shape[0] for x in parts), width), fill)
        start = 0
        for x in parts:
            out[start:start + x.shape[0], :x.shape[1]] = x
            start += x.shape[0]
        return out

    first = pushes[0]
    cand = Candidates(None if first.cand.ids is None else cat([p.cand.ids for p in pushes], 0),
                      cat([p.cand.logits for p in pushes], float("-inf")), first.cand.vocab)
    return Push(cand, cat([p.h for p in pushes]), cat([p.h_hat for p in pushes]), first.head,
                cat([p.beta for p in pushes]), first.temperature,
                None if first.projected is None else cat([p.projected for p in pushes], 0.0),
                cat([p.max_kl for p in pushes]), first.keep_entropy,
                None if first.starts is None else cat([p.starts for p in pushes], False))


def _fuse(cand: Candidates, h: torch.Tensor, h_hat: torch.Tensor, head: LMHead, beta: float | torch.Tensor,
          temperature: float, projected: torch.Tensor | None, max_kl: float | torch.Tensor | None,
          keep_entropy: bool, starts: torch.Tensor | None) -> torch.Tensor:
    """``fuse`` of one block of candidates, at its full width."""
    per_row = isinstance(beta, torch.Tensor)
    # (as a float would be: β / T in double precision, then rounded to the logits' float32)
    scale = (beta.double() / temperature).float()[:, None] if per_row else beta / temperature
    if head.softcap is None:  # only the candidates' entries are needed (the rest stay -inf)
        if projected is None:
            projected = head.project(h - h_hat, cand.ids, keep=torch.isfinite(cand.logits))
        delta = projected * scale
    else:
        l_dist = head.logits(h_hat, cand.ids) / temperature
        # (1+b) l_ref - b l_dist = l_ref + b (l_ref - l_dist)
        delta = (beta[:, None] if per_row else beta) * (cand.logits - l_dist)
    delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
    if starts is not None:
        return between_words(cand.logits, delta, starts, beta, max_kl, keep_entropy)
    if keep_entropy:
        delta = level(cand.logits, delta)
    if max_kl is None or (not per_row and beta <= 0):
        return cand.logits + delta
    unit = _nonzero(beta)
    t = bounded(cand.logits, delta / _column(unit), beta, max_kl)  # (R,) each row's β, at most beta
    return cand.logits + delta * (t / unit)[:, None]


def between_words(ref: torch.Tensor, delta: torch.Tensor, starts: torch.Tensor, beta: float | torch.Tensor,
                  max_kl: float | torch.Tensor | None, keep_entropy: bool) -> torch.Tensor:
    """The push on the candidates that start a word only, as log-probabilities (R, K).

    Every other candidate (a piece inside a word, a character's bytes, punctuation) keeps the model's own
    probability, so whether the word goes on, and how, stay the model's; the push moves the rest of the
    mass between the candidates that start a word: ``p(w) = P_ref(starts) pi_t(w)`` with
    ``pi_t`` the tilt of the word starts' own distribution. Its KL from the reference is ``P_ref(starts)
    KL(pi_t || pi_ref)``, so the bound gives each row ``max_kl / P_ref(starts)`` inside the word starts.
    ref: (R, K) logits, -inf outside the candidates; delta: (R, K) the push at β (0 where not finite);
    starts: (R, K) bool; beta, max_kl: as ``fuse`` takes them. A row with no candidate that starts a word
    is left as it was."""
    per_row = isinstance(beta, torch.Tensor)
    if not per_row and (beta <= 0 or max_kl == 0):
        return ref  # no push: exactly the reference
    log_ref = torch.log_softmax(ref, dim=-1)
    moving = starts & torch.isfinite(ref)
    some = moving.any(-1, keepdim=True)
    inside = torch.where(moving | ~some, ref, torch.full_like(ref, float("-inf")))  # a row with none: as it is
    delta = torch.where(moving, delta, torch.zeros_like(delta))
    if keep_entropy:
        delta = level(inside, delta)
    mass = torch.logsumexp(torch.where(moving, log_ref, torch.full_like(log_ref, float("-inf"))), -1)  # (R,)
    unit = _nonzero(beta)
    t = beta.to(mass.dtype) if per_row else torch.full_like(mass, beta)
    if max_kl is not None:
        t = bounded(inside, delta / _column(unit), beta, max_kl / mass.exp().clamp(min=1e-30))
    moved = torch.log_softmax(inside + delta * (t / unit)[:, None], dim=-1) + mass[:, None]
    return torch.where(some, torch.where(moving, moved, log_ref), ref)  # a row with none: exactly as it was


def _nonzero(beta: float | torch.Tensor) -> float | torch.Tensor:
    """β to divide by: a row's own where β is (R,), 1 for a row at β = 0 (whose push is 0 anyway)."""
    return torch.where(beta > 0, beta, torch.ones_like(beta)) if isinstance(beta, torch.Tensor) else beta


def _column(beta: float | torch.Tensor) -> float | torch.Tensor:
    return beta[:, None] if isinstance(beta, torch.Tensor) else beta


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
