"""ESamp's fusion step and the novelty signal, as functions over tensors.

Independent of any backend: a backend hands in the filtered reference logits, the final
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
_GATHER_ROWS = 32  # rows per gather of candidate output rows on CPU (see LMHead.project)


@dataclass(frozen=True)
class FinalNorm:
    """The model's last norm as a function of tensors: what turns the last residual stream into
    the final state h. ``(x - mean) / sqrt(var + eps) * weight + bias`` for a LayerNorm, ``x /
    sqrt(mean(x^2) + eps) * weight`` for an RMSNorm; float32 copies of the model's parameters."""

    weight: torch.Tensor  # (H,) the per-dimension gain (Gemma's ``1 + w`` already added)
    bias: torch.Tensor | None = None  # (H,) LayerNorm only
    eps: float = 1e-6
    centred: bool = False  # LayerNorm subtracts the mean, RMSNorm does not

    @classmethod
    def of(cls, module: torch.nn.Module) -> "FinalNorm":
        """Read a norm module of transformers or vLLM (RMSNorm, Gemma's RMSNorm, LayerNorm)."""
        weight = module.weight.detach().float().clone()
        eps = next((float(getattr(module, a)) for a in ("variance_epsilon", "eps") if hasattr(module, a)), 1e-6)
        if isinstance(module, torch.nn.LayerNorm):
            bias = None if module.bias is None else module.bias.detach().float().clone()
            return cls(weight, bias, eps, centred=True)
        if "gemma" in type(module).__name__.lower():  # Gemma scales by (1 + weight)
            weight = weight + 1.0
        return cls(weight, None, eps)

    def to(self, device: torch.device) -> "FinalNorm":
        bias = None if self.bias is None else self.bias.to(device)
        return FinalNorm(self.weight.to(device), bias, self.eps, self.centred)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., H) float32."""
        x = x.float()
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        out = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight
        return out if self.bias is None else out + self.bias


@dataclass(frozen=True)
class LMHead:
    """What maps a final state to logits: ``softcap(W h + b)``, and the norm that makes h."""

    weight: torch.Tensor  # (V, H), the model's own (no copy)
    bias: torch.Tensor | None = None  # (V,)
    softcap: float | None = None  # gemma-2 style final logit soft-capping
    norm: FinalNorm | None = None  # the model's final norm: h = norm(last residual stream)

    def __post_init__(self):
        # The model's parameters track gradients (transformers' do): a fusion built on them would
        # record an autograd graph every step, holding the gathered (R, K, H) rows. Same storage.
        object.__setattr__(self, "weight", self.weight.detach())
        if self.bias is not None:
            object.__setattr__(self, "bias", self.bias.detach())

    @property
    def exact(self) -> bool:
        """Whether the model's own logits are float32 (then they are what ``logits`` computes)."""
        return self.weight.dtype == torch.float32

    def logits32(self, h: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` computed in float32 throughout, from a float32 h (R, H): for the candidates,
        the model's rows of W upcast; for all tokens (ids None) a float32 copy of W, made once."""
        if ids is not None or self.exact:
            return self.logits(h, ids)
        weight = self.__dict__.get("_weight32")
        if weight is None:
            weight = self.weight.float()
            object.__setattr__(self, "_weight32", weight)
        out = h.float() @ weight.T
        if self.bias is not None:
            out = out + self.bias.float()
        return out if self.softcap is None else torch.tanh(out / self.softcap) * self.softcap

    def project(self, x: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``W x`` for x (R, H): all tokens (R, V), or candidate ids (R, K) -> (R, K)."""
        if ids is None:
            return (x.to(self.weight.dtype) @ self.weight.T).float()
        # The candidates' rows of W, gathered (R, K, H) in row chunks that stay in a CPU's cache: the
        # whole gather is tens of MB at hundreds of rows (384 x 50: 43 -> 18 ms here, same values).
        chunk = max(len(ids), 1) if x.is_cuda else _GATHER_ROWS
        x, out = x.float(), x.new_empty(ids.shape, dtype=torch.float32)
        for i in range(0, len(ids), chunk):
            rows = slice(i, i + chunk)
            out[rows] = (F.embedding(ids[rows], self.weight).float() @ x[rows, :, None])[..., 0]
        return out

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
    vocab: int = 0  # V; set by the constructors
    base: torch.Tensor | None = None  # (R, K) or (R, V) float32 logits at T=1 when ``exact`` recomputed them

    def exact(self, head: LMHead, h: torch.Tensor, temperature: float | torch.Tensor) -> "Candidates":
        """The same candidates with their logits recomputed in float32 from the final state h (R, H),
        when the model computed its logits in a lower precision (bfloat16): which tokens survive
        the filters is the model's own logits' decision; their values, and so the fusion, the
        sampled distribution and every recorded log-probability, are float32. temperature: a
        float or (R,) per row. A no-op for a float32 model."""
        if head.exact:
            return self
        base = head.logits32(h, self.ids)  # (R, K) or (R, V)
        t = temperature[:, None] if isinstance(temperature, torch.Tensor) else temperature
        logits = torch.where(torch.isfinite(self.logits), base / t, self.logits)
        return Candidates(self.ids, logits, self.vocab, base)

    @classmethod
    def from_filtered(cls, filtered: torch.Tensor, filters_active: bool, bound: int | None = None) -> "Candidates":
        """Gather the surviving tokens of filtered logits (R, V). One host sync for K when filtering.

        ``bound`` is top-k's k when it is one of the filters: no row keeps more (ties with the k-th
        aside, which are checked), so K is known without counting every row's survivors.
        """
        V = filtered.shape[-1]
        if not filters_active:
            return cls(None, filtered, V)
        if bound is not None and bound < _FULL_PROJECTION_SHARE * V:
            logits, ids = torch.topk(filtered, bound + 1, dim=-1)
            if not bool(torch.isfinite(logits[:, -1]).any()):  # no tie kept a (k+1)-th token
                return cls(ids[:, :-1], logits[:, :-1], V)
        k = int((filtered > NEG_INF).sum(-1, dtype=torch.int32).max())  # the widest row decides K
        if k > _FULL_PROJECTION_SHARE * V:
            return cls(None, filtered, V)
        logits, ids = torch.topk(filtered, k, dim=-1)  # rows with fewer survivors pad with -inf
        return cls(ids, logits, V)

    @classmethod
    def top_k(cls, raw: torch.Tensor, k: int, temperature: float = 1.0) -> "Candidates | None":
        """Top-k's candidates of ``raw / temperature`` straight from the raw logits (R, V): one pass
        over the vocabulary instead of filtering all of it first. Like transformers, a token tied
        with the k-th value is kept too (the row then has more than k; other rows pad with -inf).
        None when the ties run past 4k tokens, or k is so large that a full projection is cheaper
        (filter the full logits then). One host sync, two with ties."""
        V = raw.shape[-1]
        if k >= _FULL_PROJECTION_SHARE * V:
            return None
        values, ids = torch.topk(raw, k + 1, dim=-1)  # temperature keeps the order
        logits = values if temperature == 1.0 else values / temperature
        if not bool((logits[:, k] == logits[:, k - 1]).any()):
            return cls(ids[:, :k], logits[:, :k], V)
        # Ties with the k-th value (tokens whose output rows are equal, which exploring does meet):
        # look a little further instead of filtering the whole vocabulary (~10x the time here).
        values, ids = torch.topk(raw, min(4 * k, V - 1) + 1, dim=-1)
        logits = values if temperature == 1.0 else values / temperature
        keep = logits >= logits[:, k - 1:k]
        if bool(keep[:, -1].any()):
            return None
        width = int(keep.sum(-1).max())
        return cls(ids[:, :width], logits[:, :width].masked_fill(~keep[:, :width], NEG_INF), V)

    def dense(self, logits: torch.Tensor) -> torch.Tensor:
        """Candidate logits (R, K) as a full (R, V) tensor, -inf outside the candidates."""
        if self.ids is None:
            return logits
        return logits.new_full((logits.shape[0], self.vocab), NEG_INF).scatter_(-1, self.ids, logits)

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


def novelty(h: torch.Tensor, h_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||e||, ||e|| / ||h||) per row for e = h - h_hat; (R, H) -> (R,), (R,)."""
    err = torch.linalg.vector_norm(h - h_hat, dim=-1)
    return err, err / torch.linalg.vector_norm(h, dim=-1).clamp(min=1e-12)
