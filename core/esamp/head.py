"""The model's own output layer as functions of tensors: its final norm (what makes the final
state h) and its LM head (what turns h into logits). Read once from a transformers or vLLM model;
no parameters of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_GATHER_ROWS = 32  # rows per gather of candidate output rows on CPU (see LMHead.project)
_ENTRIES = 4096  # (row, token) entries per gather of the packed projection (LMHead.project with ``keep``)
# The packed projection reads a row of W per kept entry; one GEMM over the whole vocabulary does about
# this many multiply-adds in the time of one such read (an estimate for 2 CPU cores, not tuned: under
# top-p 0.9 the kept entries are ~0.4% of the vocabulary, far on the packed side of it).
_GEMM_SPEEDUP = 8
# On a CPU a padded block of candidates narrower than this is projected whole (one batched product over
# its rows) even where few of its entries are kept: a row's own product costs more than reading the
# padding there (384 rows, 10-30 % kept: 7.3 against 8.1-10.8 ms at 64 wide, 16-18 against 10-14 at 128,
# 38-40 against 12-26 at 256; 2-core EPYC, bfloat16: ``python -m bench.projection --crossover``).
_BY_ROW_WIDTH = 128
_VOCAB_CHUNK = 8192  # rows of W upcast at a time by LMHead.logits32 (19 MB at H = 576)


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
    # (V,) bool: which tokens start a word (core.esamp.words), from the model's tokenizer; None where the
    # backend has not read it (a run with ``EsampConfig.between_words`` needs it)
    starts: torch.Tensor | None = None

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

    def logits32(self, h: torch.Tensor, ids: torch.Tensor | None = None, keep: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """``logits`` computed in float32 throughout, from a float32 h (R, H): for the candidates,
        the model's rows of W upcast; for all tokens (ids None; scoring a text, not a decode step)
        W upcast a slice of the vocabulary at a time, so no float32 copy of it stays in memory."""
        if ids is not None or self.exact:
            return self.logits(h, ids, keep)
        h = h.float()
        out = torch.cat([h @ rows.float().T for rows in self.weight.split(_VOCAB_CHUNK)], dim=-1)  # (R, V)
        if self.bias is not None:
            out = out + self.bias.float()
        return out if self.softcap is None else torch.tanh(out / self.softcap) * self.softcap

    def project(self, x: torch.Tensor, ids: torch.Tensor | None = None, keep: torch.Tensor | None = None
                ) -> torch.Tensor:
        """float32 ``W x`` for x (R, H): all tokens (R, V), or candidate ids (R, K) -> (R, K). x may
        also be (C, R, H), C vectors per row projected at once with one read of the rows of W
        (the result then (C, R, V) or (C, R, K)).

        ``keep`` (same shape as one vector's result, bool): only those entries are needed; the
        others may come back 0. Where they are few (top-p or min-p leave most of a padded (R, K),
        or of the whole vocabulary, empty) only the kept entries are computed (on a CPU, not in a
        block of candidates narrower than ``_BY_ROW_WIDTH``)."""
        one = x.dim() == 2
        x = x[None] if one else x  # (C, R, H)
        narrow = ids is not None and not x.is_cuda and ids.shape[-1] < _BY_ROW_WIDTH
        if keep is not None and not narrow and int(keep.sum()) < keep.numel() / (_GEMM_SPEEDUP if ids is None else 2):
            out = self._project_kept(x, keep, ids)
        elif ids is None:
            out = (x.to(self.weight.dtype) @ self.weight.T).float()
        else:
            # The candidates' rows of W, gathered (R, K, H) in row chunks that stay in a CPU's cache: the
            # whole gather is tens of MB at hundreds of rows (384 x 50: 43 -> 18 ms here, same values).
            chunk = max(len(ids), 1) if x.is_cuda else _GATHER_ROWS
            x, out = x.float(), x.new_empty((x.shape[0],) + ids.shape, dtype=torch.float32)
            for i in range(0, len(ids), chunk):
                rows = slice(i, i + chunk)
                out[:, rows] = torch.bmm(F.embedding(ids[rows], self.weight).float(),
                                         x[:, rows].permute(1, 2, 0)).permute(2, 0, 1)
        return out[0] if one else out

    def _project_kept(self, x: torch.Tensor, keep: torch.Tensor, ids: torch.Tensor | None,
                      by_row: bool | None = None) -> torch.Tensor:
        """``project`` of x (C, R, H) at the kept entries only: one row of W per (row, token) entry.
        ``by_row`` (None: on a CPU) computes them with ``kept_by_row``, else ``kept_packed``."""
        rows, cols = keep.nonzero(as_tuple=True)
        tokens = cols if ids is None else ids[rows, cols]
        x = x.float()
        out = x.new_zeros((x.shape[0],) + keep.shape)
        if len(rows):
            by_row = not x.is_cuda if by_row is None else by_row
            out[:, rows, cols] = kept_by_row(self.weight, x, tokens, keep.sum(-1).tolist()) if by_row else \
                kept_packed(self.weight, x, tokens, rows)
        return out

    def logits(self, h: torch.Tensor, ids: torch.Tensor | None = None, keep: torch.Tensor | None = None
               ) -> torch.Tensor:
        """float32 logits ``softcap(W h + b)``, for all tokens or for candidate ids, like ``project``
        (``keep``: the entries needed, as there)."""
        return self.output(self.project(h, ids, keep), ids)

    def output(self, projected: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from ``project``'s ``W h`` (R, V), or (R, K) at candidate ids: ``softcap(W h + b)``."""
        out = projected
        if self.bias is not None:
            out = out + (self.bias if ids is None else self.bias[ids]).float()
        if self.softcap is not None:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def kept_packed(weight: torch.Tensor, x: torch.Tensor, tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(C, E) ``W[tokens[e]] . x[:, rows[e]]`` for E entries, each W row multiplied by x gathered to it,
    ``_ENTRIES`` entries a step: few launches on a GPU, but (C, E, H) temporaries."""
    return torch.cat([(F.embedding(t, weight).float() * x[:, r]).sum(-1)
                      for t, r in zip(tokens.split(_ENTRIES), rows.split(_ENTRIES))], dim=-1)


def kept_by_row(weight: torch.Tensor, x: torch.Tensor, tokens: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """``kept_packed`` for entries grouped by row (``counts[r]`` entries of row r, in order): one matrix
    product ``W[tokens of r] x_r^T`` a row (at most ``_ENTRIES`` entries each), no temporaries beyond W's
    rows; on a CPU at real top-p steps about 2x faster with one vector and 3-4x with two
    (``python -m bench.projection``). A row's values depend only on its own entries, never on its
    neighbours'."""
    parts = [F.embedding(t, weight).float() @ x[:, r].T  # (entries, C)
             for r, row in enumerate(tokens.split(counts)) if len(row) for t in row.split(_ENTRIES)]
    return torch.cat(parts).T
