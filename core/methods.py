"""The methods ESamp is compared with, defined once: the app's Sweep and the benchmarks
(bench.quality, bench.passk) build their runs here, so one label means one setting everywhere."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from .config import EsampConfig, RunConfig, SamplingConfig

MIN_P = 0.1  # the paper's min-p baseline, with top-k off: min-p alone decides the candidates
# The candidate sets the benchmarks compare, by label (SamplingConfig's filter fields): top-k off wherever
# top-p or min-p is the point.
FILTERS = {"top-k 50": dict(top_k=50), "top-p 0.9": dict(top_k=0, top_p=0.9), "top-p 0.95": dict(top_k=0, top_p=0.95),
           "min-p 0.05": dict(top_k=0, min_p=0.05), "min-p 0.1": dict(top_k=0, min_p=MIN_P),
           "min-p 0.2": dict(top_k=0, min_p=0.2)}


def esamp(sampling: SamplingConfig, beta: float, noise: bool = False, **settings) -> RunConfig:
    """ESamp at β (``noise``: the paper's ablation, Gaussian noise as long as the distiller's error;
    ``settings``: more of EsampConfig's, such as warmup_steps, max_kl, start)."""
    return RunConfig(method="esamp", sampling=sampling, esamp=EsampConfig(beta=beta, noise=noise, **settings))


def plain(sampling: SamplingConfig, temperature: float | None = None, shadow: bool = True) -> RunConfig:
    """Plain sampling (at another temperature if given); ``shadow``: its distiller logs novelty."""
    if temperature is not None:
        sampling = replace(sampling, temperature=temperature)
    return RunConfig(method="plain", sampling=sampling, esamp=EsampConfig(shadow=shadow))


def min_p(sampling: SamplingConfig, shadow: bool = True) -> RunConfig:
    return plain(replace(sampling, top_k=0, min_p=MIN_P), shadow=shadow)


def fire(sampling: SamplingConfig, shadow: bool = True) -> RunConfig:
    return RunConfig(method="fire", sampling=sampling, esamp=EsampConfig(shadow=shadow))


def compared(sampling: SamplingConfig, betas: Sequence[float], temperatures: Sequence[float],
             noise_betas: Sequence[float] = (), shadow: bool = True) -> dict[str, RunConfig]:
    """ESamp at each β (and its noise ablation at ``noise_betas``), plain sampling at each temperature,
    min-p and FIRE, all from the same sampling settings, by label. ``shadow``: the baselines' distillers
    log novelty (nothing in a benchmark reads it: it turns them off)."""
    out = {f"esamp β={b}": esamp(sampling, b) for b in betas}
    out.update({f"esamp-noise β={b}": esamp(sampling, b, noise=True) for b in noise_betas})
    out.update({f"plain T={t}": plain(sampling, t, shadow) for t in temperatures})
    out[f"min-p {MIN_P:g}"] = min_p(sampling, shadow)
    out["FIRE"] = fire(sampling, shadow)
    return out
