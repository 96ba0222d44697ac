"""The candidates of a decode step: the tokens the filters leave, as ids and logits, and the
top-k, top-p and min-p shortcuts that find them without filtering the whole vocabulary.

ESamp rewrites only the candidates (ESAMP.md, "Candidates"), so the fusion needs their ids and
their rows of the LM head, never a full projection. ``select`` is the one entry point: it takes a
step's ``StepFilters`` and the model's logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .filters import NEG_INF, MinP, StepFilters, TopK, TopP, apply_filters
from .head import LMHead

# Above this share of the vocabulary, one full projection is cheaper than gathering rows of W.
_FULL_PROJECTION_SHARE = 0.25
EXACT_TOP = 64  # with the whole vocabulary as candidates, the tokens per row whose logits are made float32
TIE_SLACK = 32  # tokens past top-k's k looked at in the same pass, for ties with the k-th value
TOP_P_ROWS = 16  # rows the top-p shortcut reads at a time (its temporaries stay a few MB: see ``top_p``)
# How many of a row's likeliest tokens the top-p shortcut looks for its nucleus among, stage by stage
# (``top_p``): a row moves on to the next only when its nucleus did not fit, and past the last it is
# filtered the long way (sorted). A top-k costs more the more it takes (on 64 rows here: 3 ms for 128, 14
# for 1024), and top-p 0.9's nuclei of the embedded model answering Explore's default prompt hold 44 tokens
# at the median, 189 at the third quartile, 1,280 at the 99th percentile: with these stages 64 such rows
# take 13.7 ms a step where one stage of 1024 took 22.9 (``python -m bench.nucleus``, docs/results.md).
TOP_P_WIDTHS = (128, 512, 4096)
# The widths the fusion works at, row group by row group (``Candidates.by_width``): the stages of top-p's
# search, where a row's nucleus is found; and the padded blocks too small to split (each group's pass costs
# its own calls: at Explore's top-p 0.9 with a β ladder, 64 rows x 1,347 columns fused in 2.9 ms in groups
# against 2.2 whole, 128 x 1,347 in 4.0 against 4.5, 256 in 7.6 against 8.9; 2-core EPYC, /tmp script).
ROW_WIDTHS = TOP_P_WIDTHS[:2]
GROUP_ELEMENTS = 1 << 17
# Tempered nats below min-p's bound that its shortcut still takes (``min_p``): the rule itself then decides
# them, so a token its float32 arithmetic keeps at the bound's last bit is never missed.
MIN_P_SLACK = 1e-3


@dataclass
class Candidates:
    """The tokens a filter left, as (R, K) ids and logits; ``ids is None`` means all V tokens."""

    ids: torch.Tensor | None  # (R, K) long, or None for the whole vocabulary
    logits: torch.Tensor  # (R, K) or (R, V) float32; removed entries are -inf
    vocab: int = 0  # V; set by the constructors
    base: torch.Tensor | None = None  # (R, K) or (R, V) float32 logits at T=1 when ``exact`` recomputed them
    # (R,) each row's float32 log-sum-exp of the model's logits over the whole vocabulary at T = 1, where the
    # filter computed it anyway (top-p's first stage): ``signals.base_logprobs`` then takes no pass of its own
    lse: torch.Tensor | None = None

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
        return replace(self, logits=logits, base=base), also_w

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
    def top_p(cls, raw: torch.Tensor, nucleus: TopP, temperature: float = 1.0,
              widths: Sequence[int] = TOP_P_WIDTHS) -> "Candidates | None":
        """Top-p's candidates of ``raw / temperature`` straight from the raw logits (R, V), by
        ``TopP``'s rule and arithmetic (a row's likeliest tokens against its log-sum-exp), with no (R, V)
        tensor made: ``TOP_P_ROWS`` rows at a time. On a CPU a fresh (R, V) float32 tensor costs more in
        page faults than the arithmetic (``dense``), and the filter's way made three (the filtered logits,
        their mask, the log-sum-exp's own). Each row's nucleus is looked for among its likeliest tokens,
        ``widths`` of them stage by stage (only the rows it did not fit go on), then the long way
        (``TopP.sorted``) for the rows wider still. None when some nucleus holds so much of the vocabulary
        that a full projection is cheaper. A host sync a stage, and one for the widest."""
        V = raw.shape[-1]
        widths = [w for w in widths if w < _FULL_PROJECTION_SHARE * V]
        if not widths:
            return None
        rows, part, lse = None, raw, None  # the rows still looked for (None: all), their logits, log-sum-exp
        found = []  # (rows, values, ids, keep) of the rows whose nucleus ends inside a stage's tokens
        every = None  # every row's log-sum-exp at T = 1 (``lse``): the first stage's, at T = 1
        for width in widths:
            values, ids, lse = _likeliest(part, width, temperature, lse)
            if rows is None and temperature == 1.0:
                every = lse[:, 0]
            probs = (values - lse).exp()
            keep = probs.cumsum(-1) - probs < nucleus.top_p  # the mass of the tokens above each
            wide = keep[:, -1]  # rows that may keep tokens past these
            if not bool(wide.any()):
                found.append((rows, values, ids, keep))
                rows = None
                break
            if rows is None:
                rows = torch.arange(raw.shape[0], device=raw.device)
            fit = ~wide
            found.append((rows[fit], values[fit], ids[fit], keep[fit]))
            rows, part, lse = rows[wide], part[wide], lse[wide]
        counts = [keep.sum(-1).max() for *_, keep in found if len(keep)]
        if rows is not None:  # the long way, alone
            filtered = nucleus.sorted(part.float() if temperature == 1.0 else part.float() / temperature)  # (W, V)
            counts.append((filtered > NEG_INF).sum(-1).max())
        k = int(torch.stack(counts).max())
        if k > _FULL_PROJECTION_SHARE * V:
            return None
        if len(found) == 1 and rows is None:  # every row's nucleus inside the first stage's tokens
            _, values, ids, keep = found[0]
            return cls(ids[:, :k], values[:, :k].masked_fill(~keep[:, :k], NEG_INF), V, lse=every)
        # The rows of narrower stages pad with -inf and id 0, which may be one of their candidates (``dense``).
        out_ids = raw.new_zeros((raw.shape[0], k), dtype=torch.long)
        logits = raw.new_full((raw.shape[0], k), NEG_INF, dtype=torch.float32)
        for at, values, ids, keep in found:
            w = min(k, values.shape[1])
            out_ids[at, :w] = ids[:, :w]
            logits[at, :w] = values[:, :w].masked_fill(~keep[:, :w], NEG_INF)
        if rows is not None:
            logits[rows], out_ids[rows] = torch.topk(filtered, k, dim=-1)
        return cls(out_ids, logits, V, lse=every)

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

    @classmethod
    def min_p(cls, raw: torch.Tensor, rule: MinP, temperature: float = 1.0) -> "Candidates | None":
        """Min-p's candidates of ``raw / temperature`` straight from the raw logits (R, V). A token keeps
        ``p >= min_p * p_max``, that is a tempered logit at most ``-log(min_p)`` below its row's largest:
        only the tokens that close to the top (and ``MIN_P_SLACK`` closer to the bound, for rounding) are
        taken, the widest row's count of them by a top-k, and the rule itself (``MinP``) decides them in
        float32. None when some row keeps so much of the vocabulary that a full projection is cheaper.
        One host sync."""
        V = raw.shape[-1]
        floor = raw.amax(-1, keepdim=True).float() + temperature * (math.log(rule.min_p) - MIN_P_SLACK)
        k = int((raw >= floor).sum(-1).max())
        if k > _FULL_PROJECTION_SHARE * V:
            return None
        values, ids = torch.topk(raw, k, dim=-1)
        return cls(ids, rule(values.float() if temperature == 1.0 else values.float() / temperature), V)

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
        # A padding entry's id may be one of its row's candidates' (``top_p`` pads with 0): it writes the
        # row's first candidate's own value at that one's id, so no write of -inf lands on a candidate.
        kept = torch.isfinite(logits)
        return out.scatter_(-1, torch.where(kept, self.ids, self.ids[:, :1]),
                            torch.where(kept, logits, logits[:, :1]))

    def rows(self, rows: torch.Tensor | None, width: int | None = None) -> "Candidates":
        """The candidates of ``rows`` (None: all), their first ``width`` columns (None: all of them)."""
        return Candidates(rows_of(self.ids, rows, width), rows_of(self.logits, rows, width), self.vocab,
                          rows_of(self.base, rows, width), None if rows is None else rows_of(self.lse, rows))

    def by_width(self, widths: Sequence[int] = ROW_WIDTHS) -> "list[tuple[torch.Tensor | None, int]] | None":
        """The rows in groups by how many columns they need (their last candidate's position + 1),
        each group's (rows, width) with width the least of ``widths`` (or all K) that holds them; None
        where no width is under half of K, or the block is under ``GROUP_ELEMENTS`` (one group of every
        row then, as it is). A padded block is as wide as its widest row: under top-p 0.9 one nucleus of
        thousands of tokens makes every row that wide, where most hold tens (``TOP_P_WIDTHS``), so work
        row by row over the candidates (the fusion: ``core.esamp.fusion.fuse``) goes group by group.
        One host sync."""
        K = self.logits.shape[-1]
        widths = [w for w in widths if 2 * w <= K]
        if self.ids is None or not widths or self.logits.numel() < GROUP_ELEMENTS:
            return None
        at = torch.arange(1, K + 1, device=self.logits.device, dtype=torch.int32)
        need = torch.where(self.logits > NEG_INF, at, 0).amax(-1)  # (R,) columns each row needs (-inf: none)
        bounds = torch.tensor(widths, device=need.device, dtype=need.dtype)
        group = torch.bucketize(need, bounds)  # the first width >= need; len(widths): all K
        counts = torch.bincount(group, minlength=len(widths) + 1).tolist()
        order = torch.argsort(group, stable=True)
        out, start = [], 0
        for width, count in zip([*widths, K], counts):
            if count:
                out.append((order[start:start + count], width))
            start += count
        return out

    def token_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of candidate positions (R, k) -> (R, k)."""
        return positions if self.ids is None else self.ids.gather(-1, positions)

    def position_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Candidate position of each row's token (R,) -> (R,)."""
        if self.ids is None:
            return tokens
        return (self.ids == tokens[:, None]).int().argmax(-1)


def rows_of(x, rows: torch.Tensor | None, width: int | None = None):
    """A per-row tensor's ``rows`` (None: all of them) and first ``width`` columns (None: all); a float
    or None as it is. Columns first, then rows by ``index_select``: a row gathered whole and then cut
    was 9 times as slow, and strided, and an index's gather (``x[rows]``) of a (64, 576) tensor's rows
    took 6 times ``index_select``'s on CPU."""
    if not isinstance(x, torch.Tensor):
        return x
    x = x if width is None else x[:, :width]
    return x if rows is None else x.index_select(0, rows)


def select(step: StepFilters, raw: torch.Tensor) -> Candidates:
    """A step's candidates from the model's logits (R, V): temperature -> top-k -> top-p -> min-p.
    The first filter besides temperature takes its candidates straight from the raw logits instead
    of filtering all of them first (``top_k``, ``top_p``, ``min_p``), and the filters after it run on
    those candidates' float32 values alone: a token the first one removed has no probability left to
    count in theirs, so they keep what they would keep of the whole filtered vocabulary (but for a
    token at a bound's last bit: the sums run over fewer entries)."""
    first, cand = step.first, None
    if isinstance(first, TopK):
        cand = Candidates.top_k(raw, first.top_k, step.temperature)
    elif isinstance(first, TopP):
        cand = Candidates.top_p(raw, first, step.temperature)
    elif isinstance(first, MinP):
        cand = Candidates.min_p(raw, first, step.temperature)
    if cand is None:
        return Candidates.from_filtered(apply_filters(step.filters, raw), step.active, step.top_k)
    if step.rest:
        return replace(cand, logits=apply_filters(step.rest, cand.logits.float()))
    return cand


def select_mixed(first: torch.Tensor, on_first: StepFilters, later: StepFilters, raw: torch.Tensor) -> Candidates:
    """Candidates when some rows (first: (R,) bool) draw their first token with other filters
    (FIRE) and the rest do not: each row filtered its own way."""
    filtered = torch.where(first[:, None], apply_filters(on_first.filters, raw), apply_filters(later.filters, raw))
    bound = max(on_first.top_k, later.top_k) if on_first.top_k and later.top_k else None
    return Candidates.from_filtered(filtered, on_first.active or later.active, bound)


def _likeliest(raw: torch.Tensor, width: int, temperature: float, lse: torch.Tensor | None = None):
    """Each row's ``width`` likeliest tokens of ``raw / temperature`` in float32 (values, ids), and the
    row's log-sum-exp (R, 1) (``lse`` when already known), ``TOP_P_ROWS`` rows at a time."""
    parts = []
    for x in raw.split(TOP_P_ROWS):
        x = x.float() if temperature == 1.0 else x.float() / temperature
        parts.append((*torch.topk(x, width, dim=-1), torch.logsumexp(x, -1, keepdim=True) if lse is None else None))
    values, ids = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return values, ids, torch.cat([p[2] for p in parts]) if lse is None else lse
