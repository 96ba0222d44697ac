"""ESamp's fusion step and the per-token signals, as functions over tensors.

Independent of transformers: an engine hands in the filtered reference logits, the final
state h, the distiller's prediction h_hat and the LM head; it gets back the logits to sample
from. Shapes: R rows, V vocabulary, H hidden, K candidates per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .filters import NEG_INF

# Above this share of the vocabulary, one full projection is cheaper than gathering rows of W.
_FULL_PROJECTION_SHARE = 0.25


@dataclass(frozen=True)
class LMHead:
    """What maps a final state to logits: ``softcap(W h + b)``."""

    weight: torch.Tensor  # (V, H), the model's own (no copy)
    bias: torch.Tensor | None = None  # (V,)
    softcap: float | None = None  # gemma-2 style final logit soft-capping

    def project(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``W x`` for x (R, H): all tokens (R, V), or candidate ids (R, K) -> (R, K)."""
        if ids is None:
            return (x.to(self.weight.dtype) @ self.weight.T).float()
        return torch.einsum("rkh,rh->rk", self.weight[ids].float(), x.float())  # gathers (R, K, H)

    def logits(self, h: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """float32 logits ``softcap(W h + b)``, for all tokens or for candidate ids, like ``project``."""
        out = self.project(h, ids)
        if self.bias is not None:
            out = out + (self.bias if ids is None else self.bias[ids]).float()
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


@dataclass
class Candidates:
    """The tokens a filter left, as (R, K) ids and logits; ``ids is None`` means all V tokens."""

    ids: torch.Tensor | None  # (R, K) long, or None for the whole vocabulary
    logits: torch.Tensor  # (R, K) or (R, V) float32; removed entries are -inf

    @classmethod
    def from_filtered(cls, filtered: torch.Tensor, filters_active: bool, bound: int | None = None) -> "Candidates":
        """Gather the surviving tokens of filtered logits (R, V). One host sync for K when filtering.

        ``bound`` is top-k's k when it is one of the filters: no row keeps more (ties with the k-th
        aside, which are checked), so K is known without counting every row's survivors.
        """
        V = filtered.shape[-1]
        if not filters_active:
            return cls(None, filtered)
        if bound is not None and bound < _FULL_PROJECTION_SHARE * V:
            logits, ids = torch.topk(filtered, bound + 1, dim=-1)
            if not bool(torch.isfinite(logits[:, -1]).any()):  # no tie kept a (k+1)-th token
                return cls(ids[:, :-1], logits[:, :-1])
        k = int((filtered > NEG_INF).sum(-1, dtype=torch.int32).max())  # the widest row decides K
        if k > _FULL_PROJECTION_SHARE * V:
            return cls(None, filtered)
        logits, ids = torch.topk(filtered, k, dim=-1)  # rows with fewer survivors pad with -inf
        return cls(ids, logits)

    def scatter(self, filtered: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Candidate logits (R, K) written back into a full (R, V) tensor."""
        return logits if self.ids is None else filtered.scatter(-1, self.ids, logits)

    def token_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of candidate positions (R, k) -> (R, k)."""
        return positions if self.ids is None else self.ids.gather(-1, positions)

    def position_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Candidate position of each row's token (R,) -> (R,)."""
        if self.ids is None:
            return tokens
        return (self.ids == tokens[:, None]).int().argmax(-1)


def fuse(cand: Candidates, h: torch.Tensor, h_hat: torch.Tensor, head: LMHead, beta: float,
         temperature: float) -> torch.Tensor:
    """ESamp's fused logits on the candidates: ``(1 + beta) l_ref - beta l_dist``.

    cand.logits: (R, K) filtered reference logits ``l_ref`` (already divided by T);
    h, h_hat: (R, H) final state and the distiller's prediction. Returns (R, K) float32;
    tokens outside the candidate set stay -inf. With a linear head this is
    ``l_ref + beta * w . (h - h_hat) / T``: the bias cancels and only ``e`` is projected.
    A row whose prediction is not finite is left unguided.
    """
    if head.softcap is None:
        delta = head.project(h - h_hat, cand.ids) * (beta / temperature)
    else:
        l_dist = head.logits(h_hat, cand.ids) / temperature
        delta = beta * (cand.logits - l_dist)  # (1+b) l_ref - b l_dist = l_ref + b (l_ref - l_dist)
    delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
    return cand.logits + delta


@dataclass
class StepSignals:
    """Per-row signals of one decode step, all on the device (no host sync)."""

    logp_ref: torch.Tensor  # (R,) log-probability of the chosen token before fusion
    logp_new: torch.Tensor  # (R,) and after
    entropy_ref: torch.Tensor  # (R,) nats, of the distribution sampled from before fusion
    entropy_new: torch.Tensor  # (R,)
    top_ids: torch.Tensor  # (R, k) most likely tokens after fusion
    top_p_ref: torch.Tensor  # (R, k)
    top_p_new: torch.Tensor  # (R, k)
    logp_base: torch.Tensor | None = None  # (R,) of the chosen token under the model itself (T=1, no filters)


def step_signals(cand: Candidates, fused: torch.Tensor, tokens: torch.Tensor, raw: torch.Tensor | None = None,
                 top: int = 5) -> StepSignals:
    """Signals for chosen tokens (R,) given reference candidates and fused logits (R, K);
    with the model's raw logits (R, V), also the chosen tokens' ``logp_base``."""
    lp_ref, lp_new, sig = distribution_signals(cand, fused, top)
    lps = (lp_ref, lp_new) if raw is None else (lp_ref, lp_new, base_logprobs(raw, cand))
    sig.logp_ref, sig.logp_new, *base = chosen_logps(cand, tokens, *lps)
    sig.logp_base = base[0] if base else None
    return sig


def distribution_signals(cand: Candidates, fused: torch.Tensor, top: int = 5
                         ) -> tuple[torch.Tensor, torch.Tensor, StepSignals]:
    """What a step's signals are before the token is known: (lp_ref, lp_new (R, K), signals with
    ``logp_ref``/``logp_new`` still empty). ``chosen_logps`` fills those in once it is."""
    lp_ref = torch.log_softmax(cand.logits, -1)  # (R, K)
    lp_new = lp_ref if fused is cand.logits else torch.log_softmax(fused, -1)
    k = min(top, fused.shape[-1])
    top_lp_new, top_pos = torch.topk(lp_new, k, dim=-1)  # (R, k)
    pad = top - k  # fewer candidates than `top`: pad with id -1 and probability 0
    empty = lp_ref.new_empty(0)
    return lp_ref, lp_new, StepSignals(
        logp_ref=empty,
        logp_new=empty,
        entropy_ref=_entropy(lp_ref),
        entropy_new=_entropy(lp_new),
        top_ids=F.pad(cand.token_ids(top_pos), (0, pad), value=-1),
        top_p_ref=F.pad(lp_ref.gather(-1, top_pos).exp(), (0, pad)),
        top_p_new=F.pad(top_lp_new.exp(), (0, pad)),
    )


def base_logprobs(raw: torch.Tensor, cand: Candidates) -> torch.Tensor:
    """(R, K) log-probabilities of the candidates under the model itself, at T=1 with no filters,
    from its raw logits (R, V): what perplexity is measured with, at no extra forward pass."""
    at = raw if cand.ids is None else raw.gather(-1, cand.ids)
    return at.float() - _logsumexp_rows(raw.float())[:, None]


def _logsumexp_rows(x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """logsumexp over the last dim of (R, V), a few rows at a time: each chunk stays in cache
    (2.5x faster than ``torch.logsumexp`` on 384 x 49152 on CPU). A row of all -inf gives -inf."""
    out = []
    for c in x.split(chunk):
        m = c.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
        out.append((c - m).exp_().sum(-1).log_() + m[:, 0])
    return torch.cat(out)


def chosen_logps(cand: Candidates, tokens: torch.Tensor, *logps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each (R, K) log-probability tensor read at each row's chosen token (R,): one (R,) apiece."""
    pos = cand.position_of(tokens)[:, None]  # (R, 1)
    return tuple(lp.gather(-1, pos)[:, 0] for lp in logps)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return torch.special.entr(logp.exp()).sum(-1)


def novelty(h: torch.Tensor, h_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||e||, ||e|| / ||h||) per row for e = h - h_hat; (R, H) -> (R,), (R,)."""
    err = torch.linalg.vector_norm(h - h_hat, dim=-1)
    return err, err / torch.linalg.vector_norm(h, dim=-1).clamp(min=1e-12)
