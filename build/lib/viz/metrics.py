"""Diversity, coherence and task metrics as small pure functions (ESAMP.md, 'Metrics').

Each takes plain lists or arrays and returns a float. Embeddings come from ``viz.spread.embed``;
perplexities from ``core.scoring.perplexities``.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Mean of 1 - cos(a, b) over all unordered pairs of rows; 0 for fewer than two rows."""
    n = len(emb)
    if n < 2:
        return 0.0
    sim = _unit_rows(emb) @ _unit_rows(emb).T
    return float((1 - sim)[np.triu_indices(n, k=1)].mean())


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
