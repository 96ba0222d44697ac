"""A bounded push per token: the fusion's strength chosen per row so that no step moves the
sampled distribution more than ``max_kl`` nats from the reference.

The fusion comes from ``max_pi E_pi[r] - (1/beta) KL(pi || pi_ref)``; its closed form is the
tilted distribution ``pi_t ∝ pi_ref exp(t r)`` at ``t = beta``. The constrained form
``max_pi E_pi[r]  s.t.  KL(pi || pi_ref) <= eps`` has the same closed form at the largest t with
``KL(pi_t || pi_ref) <= eps`` (KL grows with t: its derivative is ``t Var_{pi_t}(r)``). So each row
gets ``t = min(beta, t_eps)``: the paper's fusion wherever the budget does not bind, and a push of
exactly ``eps`` nats where it does, however large or untrained the distiller's error.

In logits the tilt is ``l_ref + t * d`` with ``d = w . e / T`` (``core.esamp.fusion.fuse`` at
β = 1 minus ``l_ref``); ``bounded`` finds t by regula falsi, all rows at once.
"""

from __future__ import annotations

import torch

SOLVER_STEPS = 8  # evaluations of KL per bound row: within 0.1 % of ε in the tests, always on its safe side


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """(R,) KL(p || q) in nats of two (R, K) rows of log-probabilities over the same candidates
    (entries where p is 0 add nothing; the same tensor twice: exactly 0)."""
    if logp is logq:
        return torch.zeros(logp.shape[:1], device=logp.device)
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def kl_of_tilt(ref: torch.Tensor, direction: torch.Tensor, t: torch.Tensor,
               log_ref: torch.Tensor | None = None) -> torch.Tensor:
    """KL(pi_t || pi_ref) per row for ``pi_t ∝ exp(ref + t * direction)``.

    ref: (R, K) reference logits, -inf outside the candidates; direction: (R, K), finite where
    ref is; t: (R,) the tilt of each row; log_ref: ``log_softmax(ref)`` when already computed.
    Returns (R,) in nats."""
    log_ref = torch.log_softmax(ref, dim=-1) if log_ref is None else log_ref
    return kl(torch.log_softmax(ref + t[:, None] * direction, dim=-1), log_ref)


def bounded(ref: torch.Tensor, direction: torch.Tensor, beta: float | torch.Tensor,
            max_kl: float | torch.Tensor) -> torch.Tensor:
    """(R,) each row's tilt: ``beta`` where ``KL(pi_beta || pi_ref) <= max_kl``, else the largest
    t in [0, beta] found whose KL is within it (never over it).

    ref: (R, K) reference logits (after temperature and filters; -inf outside the candidates);
    direction: (R, K) the change per unit of β (``w . e / T``; 0 where it is not finite); beta and
    max_kl: one for every row, or (R,) each row's own (nats).

    The rows over the budget solve ``sqrt(KL(t)) = sqrt(max_kl)`` (nearly linear in t: KL grows as
    ``t² Var(d) / 2`` at first) by regula falsi with the Illinois rule inside a bracket [lo, hi] with
    ``KL(lo) <= max_kl < KL(hi)``, its first point where that quadratic reaches the budget; the answer is
    ``lo``. ``SOLVER_STEPS`` passes over the rows' candidates, where a bisection took fourteen."""
    per_row = isinstance(beta, torch.Tensor)  # (a row at β = 0 is never over its budget: its t is 0)
    t = beta.to(ref.dtype).clone() if per_row else torch.full(ref.shape[:1], float(beta), dtype=ref.dtype,
                                                              device=ref.device)
    if (not per_row and beta <= 0) or (not isinstance(max_kl, torch.Tensor) and max_kl <= 0):
        return torch.zeros_like(t)
    budget = torch.as_tensor(max_kl, dtype=ref.dtype, device=ref.device).clamp(min=0).expand_as(t)
    log_ref = torch.log_softmax(ref, dim=-1)
    kl_beta = kl_of_tilt(ref, direction, t, log_ref)
    over = kl_beta > budget
    if not bool(over.any()):  # one host sync a guided step
        return t
    rows = torch.nonzero(over).flatten()
    r, d, lr, budget = (x.index_select(0, rows) for x in (ref, direction, log_ref, budget))
    target = budget.sqrt()
    lo, hi = torch.zeros_like(t[rows]), t[rows]  # KL(lo) <= max_kl < KL(hi)
    g_lo, g_hi = -target, kl_beta[rows].sqrt() - target  # g = sqrt(KL) - sqrt(max_kl)
    p_ref = lr.exp()
    var = _moment(p_ref, d, 2) - _moment(p_ref, d, 1) ** 2
    guess = torch.minimum((2 * budget / var.clamp(min=1e-12)).sqrt(), (lo + hi) / 2)
    last = torch.zeros_like(lo, dtype=torch.bool)  # the side the previous step moved (True: lo)
    for _ in range(SOLVER_STEPS):
        g = kl_of_tilt(r, d, guess, lr).sqrt() - target
        fits = g <= 0
        # Illinois: an end that stays twice has its value halved, so the next point moves past it
        g_hi = torch.where(fits & last, g_hi / 2, g_hi)
        g_lo = torch.where(~fits & ~last, g_lo / 2, g_lo)
        lo, g_lo = torch.where(fits, guess, lo), torch.where(fits, g, g_lo)
        hi, g_hi = torch.where(fits, hi, guess), torch.where(fits, g_hi, g)
        last = fits
        guess = hi - g_hi * (hi - lo) / (g_hi - g_lo).clamp(min=1e-12)
        guess = torch.where((guess > lo) & (guess < hi), guess, (lo + hi) / 2)
    return t.index_copy(0, rows, lo)


def _moment(p: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """(R,) E_p[d^k] over each row's candidates (entries with p = 0 add nothing)."""
    return torch.where(p > 0, p * d.pow(k), torch.zeros_like(p)).sum(-1)
