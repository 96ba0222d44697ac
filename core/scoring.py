"""Perplexity of texts under the base model at T=1 (the coherence metric of ESAMP.md)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .engine import encode_prompts
from .models import LoadedModel


def perplexities(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str], chat: bool = True,
                 batch_size: int = 8) -> list[float]:
    """Perplexity of each answer given its prompt: exp(mean NLL of the answer's tokens).

    prompts[i] is answers[i]'s prompt (repeat a prompt for its n answers). An empty answer
    gets NaN.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts for {len(answers)} answers: give one prompt per answer.")
    prefix = encode_prompts(lm, list(prompts), chat, 1)
    bodies = [lm.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
    if getattr(lm, "backend", "transformers") == "vllm":
        from .vllm_backend import answer_logprobs

        return [math.exp(-sum(lp) / len(lp)) if lp else math.nan for lp in answer_logprobs(lm, prefix, bodies)]
    out: list[float] = []
    with lm.lock, torch.no_grad():
        for start in range(0, len(answers), batch_size):
            rows = [(p, b) for p, b in zip(prefix[start:start + batch_size], bodies[start:start + batch_size])]
            width = max(len(p) + len(b) for p, b in rows)
            ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (p, b) in enumerate(rows):  # right padding: positions start at 0 for every row
                ids[i, :len(p) + len(b)] = torch.tensor(p + b)
                mask[i, :len(p) + len(b)] = 1
            logp = torch.log_softmax(lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
                                     .logits.float(), -1).cpu()
            for i, (p, b) in enumerate(rows):
                if not b:
                    out.append(math.nan)
                    continue
                targets = torch.tensor(b)
                pred = logp[i, len(p) - 1:len(p) + len(b) - 1]  # position t predicts token t+1
                nll = -pred.gather(-1, targets[:, None]).mean()
                out.append(float(torch.exp(nll)))
    return out


def trace_perplexities(lm: LoadedModel | None, trace) -> list[float]:
    """Perplexity of every sample of a run trace under its own prompt, in ``trace.samples`` order.

    From the log-probabilities the trace recorded while generating (``Token.logp_base``: no
    model call, ``lm`` may be None); a trace saved before they were recorded has its texts
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
        out.append(math.exp(-sum(lps) / len(lps)) if lps else math.nan)
    return out
