"""Diversity, coherence and task metrics as small pure functions (ESAMP.md, 'Metrics').

Each takes plain lists or arrays and returns a float. Embeddings come from ``viz.spread.embed``;
perplexities from ``core.scoring.perplexities``.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)


def pairwise_cosine_distances(emb: np.ndarray) -> np.ndarray:
    """1 - cos(a, b) of every unordered pair of rows, (n (n - 1) / 2,); empty for fewer than two rows."""
    sim = _unit_rows(emb) @ _unit_rows(emb).T if len(emb) else np.zeros((0, 0))
    return (1 - sim)[np.triu_indices(len(emb), k=1)]


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Mean of 1 - cos(a, b) over all unordered pairs of rows; 0 for fewer than two rows."""
    d = pairwise_cosine_distances(emb)
    return float(d.mean()) if len(d) else 0.0


def vendi_score(emb: np.ndarray) -> float:
    """Vendi score: exp of the entropy of the eigenvalues of K/n, K the cosine similarity matrix.

    The effective number of distinct answers: 1 when all are the same, n when all are orthogonal.
    Uses the authors' package (vendi-score).
    """
    from vendi_score import vendi

    if len(emb) == 0:
        return 0.0
    return float(vendi.score_K(_unit_rows(emb) @ _unit_rows(emb).T))


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams over all n-grams in the answers (whitespace tokens, lower-cased)."""
    grams = Counter()
    for text in texts:
        words = text.lower().split()
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def seq_rep(ids: Sequence[int], n: int = 4) -> float:
    """Welleck et al. (2019)'s seq-rep-n of one answer, on its token ids: the share of its n-grams
    that repeat an earlier n-gram of the same answer (0 = none does; 0 for fewer than n + 1 tokens).
    On tokens, not words: a loop glued into one non-word ("ESSEESSEESSEES") repeats too.

    >>> seq_rep([1, 2, 3, 1, 2, 3], n=2)  # bigrams 12 23 31 12 23: the last two repeat
    0.4
    """
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


# An answer loops when more than this share of its token 4-grams repeat an earlier one: plain sampling's
# own answers stay under it (docs/results.md, "Broken text", has their spread).
DEGENERATE_SEQ_REP_4 = 0.2

# An answer glues a non-word when this many of its tokens in a row join letters or symbols with no space,
# digit or punctuation between them ("spacespacespacename", "REDEFITTOREDPURPLE", "✨✨✨✨"): real words
# take one to four of this model's tokens. Plain sampling's own answers reach it about once in a hundred
# at 128 tokens (docs/results.md, "Glued non-words").
GLUED_TOKENS = 8


def _glues(ch: str) -> bool:
    """Letters and symbols (emoji, box drawing) make up a glued non-word; spaces, digits and
    punctuation end one."""
    return ch.isalpha() or unicodedata.category(ch).startswith("S")


def glued_run(pieces: Sequence[str]) -> int:
    """The most tokens in a row of one answer (its tokens' text pieces) that are glued into one run of
    letters and symbols. A piece that starts with a space starts a run; tokens with an empty piece (the
    first bytes of a character a later token completes: an emoji's) count with the piece that completes
    it. Scripts written without spaces (Chinese, Japanese) are one long run: the measure is for
    space-separated text.

    >>> glued_run([" The", " space", "space", "space", "name", ","])
    4
    """
    best = run = pending = 0
    for piece in pieces:
        if not piece:
            pending += 1
            continue
        tokens, pending = pending + 1, 0
        if _glues(piece[0]):  # it joins the run before it
            run += tokens
            best = max(best, run)
        if not all(_glues(c) for c in piece):  # a space, digit or punctuation in it ends that run; a tail of
            run = tokens if _glues(piece[-1]) else 0  # letters or symbols after it starts the next
            best = max(best, run)
    return best


def is_degenerate(ids: Sequence[int], pieces: Sequence[str] | None = None,
                  threshold: float = DEGENERATE_SEQ_REP_4) -> bool:
    """Whether an answer is broken: it repeats itself (its seq-rep-4 on token ids is above ``threshold``)
    or, given its tokens' text ``pieces``, glues a non-word of ``GLUED_TOKENS`` tokens or more."""
    return seq_rep(ids, 4) > threshold or (pieces is not None and glued_run(pieces) >= GLUED_TOKENS)


def degenerate_share(answers: Sequence[Sequence[int]], pieces: Sequence[Sequence[str]] | None = None,
                     threshold: float = DEGENERATE_SEQ_REP_4) -> float:
    """The share of answers (token id lists; with their text pieces, in the same order, to see glued
    non-words too) that are broken (``is_degenerate``); 0 for none."""
    if not answers:
        return 0.0
    texts = pieces if pieces is not None else [None] * len(answers)
    return sum(is_degenerate(a, p, threshold) for a, p in zip(answers, texts, strict=True)) / len(answers)


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Mean BLEU of each answer against all the others (lower = more diverse); nltk's BLEU
    with smoothing method 1, whitespace tokens. 0 for fewer than two answers."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    toks = [t.lower().split() for t in texts]
    if len(toks) < 2:
        return 0.0
    weights = tuple([1.0 / max_n] * max_n)
    smooth = SmoothingFunction().method1
    scores = [sentence_bleu(toks[:i] + toks[i + 1:], hyp, weights=weights, smoothing_function=smooth)
              for i, hyp in enumerate(toks) if hyp]
    return float(np.mean(scores)) if scores else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: ``1 - C(n-c, k) / C(n, k)`` for n samples of which c are correct.

    Computed in the stable product form ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, but n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], 0.0
    return float(np.mean(vals)), float(np.std(vals, ddof=1) / math.sqrt(len(vals)))


def pass_at_k_curve(correct_counts: Sequence[int], n: int) -> list[float]:
    """Mean pass@k over tasks for k = 1..n, given each task's number of correct samples out of n."""
    if not correct_counts:
        return []
    return [float(np.mean([pass_at_k(n, c, k) for c in correct_counts])) for k in range(1, n + 1)]


# Bootstrap intervals over answers. Resampling answers with replacement draws some twice, and a
# repeated answer lowers both diversity metrics (a pair with itself is at distance 0; a copy adds no
# eigenvalue), so the resampled values sit below the observed one. Two corrections: pairs of the
# same drawn answer are left out of the mean distance, and every interval is shifted by the
# bootstrap's bias (observed value minus the resamples' mean) so it is centred on what was observed.
BOOTSTRAP_METRICS = ("cosine_distance", "vendi")
MIN_BOOTSTRAP_ANSWERS = 3  # two answers have one distance: every resample repeats it, so no interval


@dataclass(frozen=True)
class Interval:
    """A value with a bootstrap confidence interval."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def bootstrap_interval(emb: np.ndarray, metric: str = "cosine_distance", resamples: int = 1000,
                       level: float = 0.95, seed: int = 0) -> Interval:
    """``metric`` ("cosine_distance" or "vendi") of the answers' embeddings, with a bias-corrected
    percentile bootstrap interval over the answers (deterministic under ``seed``). NaN bounds for
    fewer than ``MIN_BOOTSTRAP_ANSWERS`` answers. The bounds stay inside the metric's
    range (cosine distance 0..2, Vendi 1..n)."""
    value, boot = _bootstrap(emb, metric, resamples, seed)
    interval = _interval(value, boot, level)
    lo, hi = (0.0, 2.0) if metric == "cosine_distance" else (1.0, float(len(emb)))  # the metric's range
    return Interval(value, min(max(interval.low, lo), hi), min(max(interval.high, lo), hi), level)


def bootstrap_difference(emb_a: np.ndarray, emb_b: np.ndarray, metric: str = "cosine_distance",
                         resamples: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """``metric`` of b minus that of a, with a bootstrap interval (each set resampled on its own).
    An interval that holds 0 means: with this many answers the difference cannot be told from noise."""
    value_a, boot_a = _bootstrap(emb_a, metric, resamples, seed)
    value_b, boot_b = _bootstrap(emb_b, metric, resamples, seed + 1)
    return _interval(value_b - value_a, boot_b - boot_a, level)


def _interval(value: float, boot: np.ndarray, level: float) -> Interval:
    boot = boot[np.isfinite(boot)]
    if not len(boot) or not math.isfinite(value):
        return Interval(value, math.nan, math.nan, level)
    shift = value - float(boot.mean())
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]) + shift
    return Interval(value, float(low), float(high), level)


def _bootstrap(emb: np.ndarray, metric: str, resamples: int, seed: int) -> tuple[float, np.ndarray]:
    """The observed value and ``resamples`` values on answers drawn with replacement."""
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"metric must be one of {BOOTSTRAP_METRICS}, not {metric!r}")
    n = len(emb)
    if n < MIN_BOOTSTRAP_ANSWERS:
        value = mean_pairwise_cosine_distance(emb) if metric == "cosine_distance" else vendi_score(emb)
        return value, np.full(resamples, math.nan)
    sim = _unit_rows(emb) @ _unit_rows(emb).T
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    k = sim[idx[:, :, None], idx[:, None, :]]  # (B, n, n): each resample's similarity matrix
    if metric == "cosine_distance":
        distinct = idx[:, :, None] != idx[:, None, :]  # pairs of two different answers
        with np.errstate(invalid="ignore"):
            boot = ((1 - k) * distinct).sum((1, 2)) / distinct.sum((1, 2))  # NaN when one answer was drawn n times
        return mean_pairwise_cosine_distance(emb), boot
    return vendi_score(emb), _vendi_of_kernels(k)


def _vendi_of_kernels(k: np.ndarray) -> np.ndarray:
    """The Vendi score of each (n, n) similarity matrix in a (B, n, n) stack (as vendi_score computes it)."""
    w = np.linalg.eigvalsh(k / k.shape[-1])
    w = np.where(w > 0, w, 1.0)  # eigenvalues <= 0 add nothing to the entropy (log 1 = 0)
    return np.exp(-(w * np.log(w)).sum(-1))
