"""Per-run labels and the metrics table. Perplexities are computed by core.scoring and passed in:
viz never loads a language model."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from core.config import RunConfig
from core.trace import RunTrace

from . import metrics


def run_label(trace: RunTrace) -> str:
    return config_label(trace.config)


def config_label(config: RunConfig) -> str:
    """A short name for a run's settings: 'esamp β=0.25', 'plain', 'plain T=0.7', 'min-p 0.1', 'fire'."""
    s = config.sampling
    if config.method == "esamp":
        label = f"esamp β={config.esamp.beta:g}"
    elif config.method == "plain" and s.min_p > 0:
        label = f"min-p {s.min_p:g}"
    else:
        label = config.method
    if s.temperature != 1.0:
        label += f" T={s.temperature:g}"
    return label


@dataclass
class RunSummary:
    label: str
    samples: int
    tokens_per_s: float
    mean_novelty: float | None
    cosine_distance: float  # mean over prompts of the mean pairwise cosine distance
    vendi: float  # mean over prompts
    distinct_2: float
    self_bleu: float
    perplexity: float | None  # mean over answers, when given

    def as_row(self) -> dict:
        return asdict(self)


def per_prompt(trace: RunTrace, emb: np.ndarray) -> list[tuple[list[str], np.ndarray]]:
    """Split a run's answers and their embeddings (rows in sample order) by prompt."""
    out = []
    for p in range(len(trace.prompts)):
        idx = [i for i, s in enumerate(trace.samples) if s.prompt_index == p]
        out.append(([trace.samples[i].text for i in idx], emb[idx]))
    return out


def summarize(trace: RunTrace, emb: np.ndarray, perplexities: Sequence[float] | None = None) -> RunSummary:
    """Metrics of one run; ``emb`` holds one embedding per sample, in ``trace.samples`` order."""
    groups = per_prompt(trace, emb)
    ppl = [p for p in (perplexities or []) if p is not None and math.isfinite(p)]
    return RunSummary(
        label=run_label(trace), samples=len(trace.samples), tokens_per_s=trace.timings.tokens_per_s,
        mean_novelty=trace.mean_novelty(),
        cosine_distance=float(np.mean([metrics.mean_pairwise_cosine_distance(e) for _, e in groups])),
        vendi=float(np.mean([metrics.vendi_score(e) for _, e in groups])),
        distinct_2=float(np.mean([metrics.distinct_n(t, 2) for t, _ in groups])),
        self_bleu=float(np.mean([metrics.self_bleu(t) for t, _ in groups])),
        perplexity=float(np.mean(ppl)) if ppl else None,
    )


def summarize_runs(traces: Sequence[RunTrace], emb: np.ndarray,
                   perplexities: Sequence[Sequence[float]] | None = None) -> list[RunSummary]:
    """One summary per run; ``emb`` holds the embeddings of all runs' samples, run after run."""
    out, start = [], 0
    for i, t in enumerate(traces):
        out.append(summarize(t, emb[start:start + len(t.samples)], perplexities[i] if perplexities else None))
        start += len(t.samples)
    return out
