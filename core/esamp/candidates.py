"""The candidates of a decode step: the tokens the filters leave, as ids and logits, and the
top-k and top-p shortcuts that find them without filtering the whole vocabulary.

ESamp rewrites only the candidates (ESAMP.md, "Candidates"), so the fusion needs their ids and
their rows of the LM head, never a full projection. ``select`` is the one entry point: it takes a
step's ``StepFilters`` and the model's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .filters import NEG_INF, StepFilters, TopP, apply_filters
from .head import LMHead

# Above this share of the vocabulary, one full projection is cheaper than gathering rows of W.
_FULL_PROJECTION_SHARE = 0.25
EXACT_TOP = 64  # with the whole vocabulary as candidates, the tokens per row whose logits are made float32
TIE_SLACK = 32  # tokens past top-k's k looked at in the same pass, for ties with the k-th value
TOP_P_ROWS = 16  # rows the top-p shortcut reads at a time (its temporaries stay a few MB: see ``top_p``)


@dataclass
class Candidates:
    """The tokens a filter left, as (R, K) ids and logits; ``ids is None`` means all V tokens."""

    ids: torch.Tensor | None  # (R, K) long, or None for the whole vocabulary
    logits: torch.Tensor  # (R, K) or (R, V) float32; removed entries are -inf
    vocab: int = 0  # V; set by the constructors
    base: torch.Tensor | None = None  # (R, K) or (R, V) float32 logits at T=1 when ``exact`` recomputed them

    def exact(self, head: LMHead, h: torch.Tensor, temperature: float | torch.Tensor,
              raw: torch.Tensor) -> "Candidates":
        """The same candidates with their logits recomputed in float32 from the final state h (R, H),
        when the model computed its logits in a lower precision (bfloat16): which tokens survive
        the filters is the model's own logits' decision; their values, and so the fusion, the
        sampled distribution and every recorded log-probability, are float32. temperature: a
        float or (R,) per row; raw: (R, V) the model's logits. A no-op for a float32 model.

        With the whole vocabulary as candidates (no filter, or one that keeps most of it) only the
        ``EXACT_TOP`` most likely tokens of each row are recomputed (a full float32 projection
        would cost as much as a third of a bfloat16 model step here); the others keep the model's
        values, whose rounding averages out over tens of thousands of tokens."""
        return self.exact_with(head, h, temperature, raw)[0]

    def exact_with(self, head: LMHead, h: torch.Tensor, temperature: float | torch.Tensor, raw: torch.Tensor,
                   also: torch.Tensor | None = None) -> "tuple[Candidates, torch.Tensor | None]":
        """``exact``, and ``W also`` (R, K) at the candidates for another state also (R, H) (the
        fusion's e) from the same read of the candidates' rows of W; None where there is no such
        read to share (a float32 model, the whole vocabulary as candidates, a soft-capped head)."""
        if head.exact:
            return self, None
        also_w = None
        if self.ids is None:
            top = torch.topk(raw, min(EXACT_TOP, raw.shape[-1]), dim=-1).indices  # (R, M)
            base = raw.float().scatter(-1, top, head.logits32(h, top))  # (R, V)
        else:  # the surviving entries; a padding entry keeps the model's value (base_logprobs leaves it out)
            keep = torch.isfinite(self.logits)
            if also is None or head.softcap is not None:
                own = head.logits32(h, self.ids, keep)
            else:  # (2, R, K): one gather of the candidates' rows for both
                own, also_w = head.project(torch.stack([h.float(), also.float()]), self.ids, keep)
                own = head.output(own, self.ids)
            base = torch.where(keep, own, raw.gather(-1, self.ids).float())  # (R, K)
        t = temperature[:, None] if isinstance(temperature, torch.Tensor) else temperature
        logits = torch.where(torch.isfinite(self.logits), base / t, self.logits)
        return Candidates(self.ids, logits, self.vocab, base), also_w

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
    def top_p(cls, raw: torch.Tensor, nucleus: TopP, temperature: float = 1.0) -> "Candidates | None":
        """Top-p's candidates of ``raw / temperature`` straight from the raw logits (R, V), by
        ``TopP``'s rule and arithmetic (its ``guess`` most likely tokens of each row against the
        row's log-sum-exp), with no (R, V) tensor made: ``TOP_P_ROWS`` rows at a time. On a CPU a
        fresh (R, V) float32 tensor costs more in page faults than the arithmetic (``dense``), and
        the filter's way made three (the filtered logits, their mask, the log-sum-exp's own). A row
        whose nucleus reaches past the guess is filtered the long way (``TopP`` sorts its vocabulary),
        alone: the other rows keep the shortcut. None when some nucleus holds so much of the vocabulary
        that a full projection is cheaper. Two host syncs."""
        V, guess = raw.shape[-1], nucleus.guess
        if guess >= _FULL_PROJECTION_SHARE * V:
            return None
        parts = []
        for x in raw.split(TOP_P_ROWS):
            x = x.float() if temperature == 1.0 else x.float() / temperature
            parts.append((*torch.topk(x, guess, dim=-1), torch.logsumexp(x, -1, keepdim=True)))
        values, ids, lse = (torch.cat(p) for p in zip(*parts))
        probs = (values - lse).exp()
        keep = probs.cumsum(-1) - probs < nucleus.top_p  # the mass of the tokens above each
        wide = keep[:, -1]  # rows that may keep tokens past the guess: filtered the long way, alone
        counts, any_wide = keep.sum(-1), bool(wide.any())
        if any_wide:
            rows = wide.nonzero()[:, 0]
            x = raw[rows].float() if temperature == 1.0 else raw[rows].float() / temperature
            filtered = nucleus(x)  # (W, V)
            counts[rows] = (filtered > NEG_INF).sum(-1)
        k = int(counts.max())
        if k > _FULL_PROJECTION_SHARE * V:
            return None
        if k > guess:  # room for the wide rows' nuclei; the others pad with -inf
            ids = torch.cat([ids, ids.new_zeros(ids.shape[0], k - guess)], -1)
            values = torch.cat([values, values.new_full((values.shape[0], k - guess), NEG_INF)], -1)
            keep = torch.cat([keep, keep.new_zeros(keep.shape[0], k - guess)], -1)
        ids, logits = ids[:, :k], values[:, :k].masked_fill(~keep[:, :k], NEG_INF)
        if any_wide:
            logits[rows], ids[rows] = torch.topk(filtered, k, dim=-1)
        return cls(ids, logits, V)

    @classmethod
    def top_k(cls, raw: torch.Tensor, k: int, temperature: float = 1.0) -> "Candidates | None":
        """Top-k's candidates of ``raw / temperature`` straight from the raw logits (R, V): one pass
        over the vocabulary instead of filtering all of it first. Like transformers (and vLLM), a
        token tied with the k-th value is kept too (the row then has more than k; other rows pad
        with -inf). None when the ties run past 4k tokens, or k is so large that a full projection
        is cheaper (filter the full logits then). One host sync, two when the ties run long."""
        V = raw.shape[-1]
        if k >= _FULL_PROJECTION_SHARE * V:
            return None
        # A bfloat16 model's logits tie with the k-th value in most rows (8 bits of mantissa: at 384
        # rows of SmolLM2, 60% of rows at k = 50, up to 8 tokens wide), so look a little past k at
        # once: a wider top-k costs little (k + 32: 14 ms against 12 ms), a second pass a whole one.
        width = min(k + TIE_SLACK, V)
        while True:
            values, ids = torch.topk(raw, width, dim=-1)  # temperature keeps the order
            logits = values if temperature == 1.0 else values / temperature
            keep = logits >= logits[:, k - 1:k]
            kept = int(keep.sum(-1).max())
            if kept > 4 * k:
                return None
            if kept < width or width == V:  # every row's ties end inside the window
                return cls(ids[:, :kept], logits[:, :kept].masked_fill(~keep[:, :kept], NEG_INF), V)
            if width >= 4 * k + 1:
                return None
            width = min(4 * k + 1, V)

    def dense(self, logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate logits (R, K) as a full (R, V) tensor, -inf outside the candidates: written
        into ``out`` (R, V) when given, a tensor nobody reads again (the model's logits once the
        step's signals are taken). On a CPU a fresh (R, V) float32 tensor comes from the OS every
        step once it is over glibc's mmap threshold (32 MB: 171 rows of a 49k vocabulary), and
        touching its pages costs ten times the fill (at 384 rows: 18 against 2 ms). With the whole
        vocabulary as candidates ``logits`` is that tensor already and is returned as it is."""
        if self.ids is None:
            return logits
        out = logits.new_full((logits.shape[0], self.vocab), NEG_INF) if out is None else out.fill_(NEG_INF)
        return out.scatter_(-1, self.ids, logits)

    def token_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of candidate positions (R, k) -> (R, k)."""
        return positions if self.ids is None else self.ids.gather(-1, positions)

    def position_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Candidate position of each row's token (R,) -> (R,)."""
        if self.ids is None:
            return tokens
        return (self.ids == tokens[:, None]).int().argmax(-1)


def select(step: StepFilters, raw: torch.Tensor) -> Candidates:
    """A step's candidates from the model's logits (R, V): temperature -> top-k -> top-p -> min-p.
    Top-k alone or top-p alone (after a temperature or not) takes them straight from the raw
    logits instead of filtering all of them first."""
    if step.top_k_only or step.top_p_only is not None:
        cand = (Candidates.top_k(raw, step.top_k, step.temperature) if step.top_k_only
                else Candidates.top_p(raw, step.top_p_only, step.temperature))
        if cand is not None:
            return cand
    return Candidates.from_filtered(apply_filters(step.filters, raw), step.active, step.top_k)


def select_mixed(first: torch.Tensor, on_first: StepFilters, later: StepFilters, raw: torch.Tensor) -> Candidates:
    """Candidates when some rows (first: (R,) bool) draw their first token with other filters
    (FIRE) and the rest do not: each row filtered its own way."""
    filtered = torch.where(first[:, None], apply_filters(on_first.filters, raw), apply_filters(later.filters, raw))
    bound = max(on_first.top_k, later.top_k) if on_first.top_k and later.top_k else None
    return Candidates.from_filtered(filtered, on_first.active or later.active, bound)
