"""Where a run's distillers start (``EsampConfig.start``): fresh random weights (the paper), or this
model's pretrained distiller, trained once on the model's own answers to generic prompts and kept
in the cache beside the converted models (``$ESAMP_CACHE_DIR/distillers``).

A pretrained distiller has learned what every context of the model shares (h's scale and the rough
map from a first-layer state to a final one) before a run begins, so a run's guidance starts from a
prediction error that says something about the context (docs/results.md, "Guidance that knows
something when it starts"). It never learns across requests: every run starts from the same
weights and adapts its own copy online.

The transformers backend builds it with the model it has; vLLM's backend builds it (with transformers,
on this machine's CPU) in the caller's thread of the first run that asks, before its requests go in,
and ``python -m core serve --dtype D`` before its engine starts, so no engine step waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Sequence

import torch

from ..config import EsampConfig, RunConfig, SamplingConfig
from ..esamp.distiller import pretrain
from .base import cache_dir

log = logging.getLogger(__name__)
VERSION = 1  # of the recipe below: a change makes every cached distiller stale

# Generic requests an assistant model answers every day; none is one of the benchmarks' prompts
# (bench/prompts/open_ended.txt), so a benchmark never measures a distiller that has seen its prompts.
GENERIC_PROMPTS = (
    "What is the capital of France?",
    "Summarise the causes of the First World War in a few sentences.",
    "How do I boil an egg?",
    "Write a Python function that reverses a string.",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish and German.",
    "Give me three tips for a job interview.",
    "Explain photosynthesis.",
)
ANSWERS = SamplingConfig(n=4, max_new_tokens=64, top_k=0, top_p=0.9, seed=0, ignore_eos=True)

_memory: dict[str, list[torch.Tensor]] = {}
_lock = threading.Lock()


def key(source: str, dtype: str, cfg: EsampConfig) -> str:
    """The cache key of a model's pretrained distiller: the model, its dtype, the distiller's shape."""
    text = (f"v{VERSION}|{source}|{dtype}|{cfg.distiller}|{cfg.intermediate}|{cfg.blocks}|{cfg.lr}|{cfg.eps}"
            f"|{cfg.grad_clip}")
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def path_of(source: str, dtype: str, cfg: EsampConfig) -> Path:
    return cache_dir() / "distillers" / f"{key(source, dtype, cfg)}.pt"


def initial(source: str, dtype: str, cfg: EsampConfig, lm=None) -> list[torch.Tensor] | None:
    """The weights a run's distillers start from: None for ``start="fresh"``; else the model's
    pretrained distiller, from memory, from the cache, or built now (with ``lm``, a transformers
    model of ``source`` in ``dtype``, or one loaded on the CPU for it) and cached."""
    if cfg.start == "fresh":
        return None
    k = key(source, dtype, cfg)
    with _lock:  # one build at a time; every later caller finds it in memory
        if k not in _memory:
            path = path_of(source, dtype, cfg)
            if path.exists():
                _memory[k] = torch.load(path, weights_only=True)
            else:
                _memory[k] = build(lm if lm is not None else _load(source, dtype), cfg)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp")  # no two writers share it
                torch.save(_memory[k], tmp)
                tmp.replace(path)  # whole or not at all: another process may be reading the cache
        return _memory[k]


def initial_for(lm, config: RunConfig) -> list[torch.Tensor] | None:
    """``initial`` for a run on a transformers model (None where the run has no distiller)."""
    if not config.uses_distiller:
        return None
    from .embedded import model_source

    return initial(model_source(lm.name), str(lm.dtype).removeprefix("torch."), config.esamp, lm)


def build(lm, cfg: EsampConfig) -> list[torch.Tensor]:
    """Plain sampling's answers to GENERIC_PROMPTS on ``lm`` (a transformers model), their states
    read again in one pass each, and ``pretrain`` on them."""
    from .hf.loop import generate, states_of

    log.info("building the pretrained distiller of %s (once; cached in %s)", lm.name, cache_dir() / "distillers")
    trace = generate(lm, list(GENERIC_PROMPTS), RunConfig(method="plain", sampling=ANSWERS,
                                                            esamp=EsampConfig(shadow=False)))
    s, h = states_of(lm, [list(trace_ids) for trace_ids in _token_rows(lm, trace)])
    return pretrain(s, h, cfg, norm=lm.head.norm)


def _token_rows(lm, trace) -> Sequence[list[int]]:
    """Each answer as the whole token sequence the model read: its prompt's ids, then the answer's."""
    from .base import encode_prompts

    prompts = encode_prompts(lm, [p.text for p in trace.prompts], True, ANSWERS.max_new_tokens)
    return [prompts[s.prompt_index] + [t.id for t in s.tokens] for s in trace.samples]


def _load(source: str, dtype: str):
    from .hf.model import load

    return load(source, device="cpu", dtype=dtype)
