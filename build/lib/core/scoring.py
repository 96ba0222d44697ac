"""Perplexity of texts under the base model at T=1 (the coherence metric of ESAMP.md)."""

from __future__ import annotations

import math
from typing import Sequence

from .backends import answer_logprobs
from .backends.base import LanguageModel, encode_prompts


def perplexities(lm: LanguageModel, prompts: Sequence[str], answers: Sequence[str], chat: bool = True) -> list[float]:
    """Perplexity of each answer given its prompt: exp(mean NLL of the answer's tokens).

    prompts[i] is answers[i]'s prompt (repeat a prompt for its n answers). An empty answer
    gets NaN.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers: give one prompt per answer.")
    prefix = encode_prompts(lm, list(prompts), chat, 1)
    bodies = [lm.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    return [_perplexity(lp) for lp in answer_logprobs(lm, prefix, bodies)]


def trace_perplexities(lm: LanguageModel | None, trace) -> list[float]:
    """Perplexity of every sample of a run trace under its own prompt, in ``trace.samples`` order.

    From the log-probabilities the trace recorded while generating (``Token.logp_base``: no
    model call, ``lm`` may be None); a version 1 trace that did not record them has its texts
    scored by ``lm``. An empty sample gets NaN.
    """
    recorded = recorded_perplexities(trace)
    if recorded is not None:
        return recorded
    if lm is None:
        raise ValueError("This trace has no recorded log-probabilities: scoring it needs the model.")
    prompts = [trace.prompts[s.prompt_index].text for s in trace.samples]
    return perplexities(lm, prompts, [s.text for s in trace.samples], chat=trace.config.chat)


def recorded_perplexities(trace) -> list[float] | None:
    """exp(mean NLL) of each sample's own tokens under the model at T=1, or None if not recorded."""
    out = []
    for s in trace.samples:
        lps = [t.logp_base for t in s.tokens]
        if any(lp is None for lp in lps):
            return None
        out.append(_perplexity(lps))
    return out


def _perplexity(logps: Sequence[float]) -> float:
    return math.exp(-sum(logps) / len(logps)) if logps else math.nan
