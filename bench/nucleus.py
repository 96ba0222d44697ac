"""Top-p's candidates a step (``Candidates.top_p``): a row's nucleus looked for among its likeliest
tokens in stages (``TOP_P_WIDTHS``) against one stage as wide as ``TopP``'s guess (1024, what the
shortcut did before), on the same logits, the two alternating many times.

    python -m bench.nucleus                    # Explore's default: its prompt, top-p 0.9, 64 answers
    python -m bench.nucleus --json bench/results/nucleus.json --markdown bench/results/nucleus.md

The logits are the ones the sampler saw: the embedded model's plain answers to Explore's default prompt
(n = 64, top-p 0.9, 32 tokens) read back at every position, one call per position with a row per answer
(the rows of a step as vLLM hands them to a run of the app's ladder), in the model's dtype (a bfloat16
model's logits are bfloat16 values: its ties are real). Reported: each way's median time a call, the
nuclei's widths, and how many rows' nuclei the two ways agree on (they may differ only among tokens
tied with the last one kept: which of equal logits a top-k lists first depends on how many it takes).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from core import RunConfig, SamplingConfig, encode_prompts, generate, load_model
from core.backends.hf.loop import states_of
from core.esamp.candidates import TOP_P_WIDTHS, Candidates
from core.esamp.filters import StepFilters

from .budget import write
from .concurrency import PROMPT

ONE_STAGE = (1024,)  # TopP's guess: the shortcut's one stage before TOP_P_WIDTHS


def step_logits(lm, n: int, tokens: int, top_p: float, seed: int = 0) -> list[torch.Tensor]:
    """The model's logits (n, V) at each of ``tokens`` steps of n plain answers to ``PROMPT``."""
    config = RunConfig(method="plain", sampling=SamplingConfig(n=n, max_new_tokens=tokens, top_k=0, top_p=top_p,
                                                               seed=seed, ignore_eos=True))
    trace = generate(lm, [PROMPT], config)
    prompt = encode_prompts(lm, [PROMPT], config.chat, tokens)[0]
    answers = [[t.id for t in s.tokens] for s in trace.samples]
    _, h = states_of(lm, [prompt + a for a in answers])
    at = torch.tensor([len(prompt) + len(a) for a in answers]).cumsum(0)  # each sequence's end in h
    rows = torch.stack([h[end - len(a) - 1:end - 1] for end, a in zip(at.tolist(), answers)])  # (n, tokens, H)
    w = lm.head.weight
    return [(rows[:, t].to(w.dtype) @ w.T).float() for t in range(tokens)]


def alternating(ways: dict[str, Callable[[torch.Tensor], object]], steps: list[torch.Tensor],
                repeats: int) -> dict[str, float]:
    """Each way's median seconds a call over ``steps``: the ways in turn, in alternating order, after two
    rounds that warm up (a drift of the machine's speed then falls on every way alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    with torch.inference_mode():
        for i in range(repeats + 2):
            for name in list(ways)[::1 if i % 2 else -1]:
                t0 = time.perf_counter()
                for raw in steps:
                    ways[name](raw)
                if i >= 2:
                    seconds[name].append((time.perf_counter() - t0) / len(steps))
    return {name: statistics.median(s) for name, s in seconds.items()}


def measure(steps: list[torch.Tensor], top_p: float, repeats: int) -> dict:
    nucleus = StepFilters.of(top_p=top_p).first
    ways = {"one stage": ONE_STAGE, "stages": TOP_P_WIDTHS}
    median = alternating({name: lambda raw, w=w: Candidates.top_p(raw, nucleus, widths=w) for name, w in ways.items()},
                         steps, repeats)
    with torch.inference_mode():
        got = {name: [Candidates.top_p(raw, nucleus, widths=w) for raw in steps] for name, w in ways.items()}
    widths = torch.cat([torch.isfinite(c.logits).sum(-1) for c in got["stages"]]).float()
    agree = tied = 0
    for raw, a, b in zip(steps, got["one stage"], got["stages"]):
        kept_a, kept_b = torch.isfinite(a.dense(a.logits)), torch.isfinite(b.dense(b.logits))
        for r in range(len(raw)):
            if torch.equal(kept_a[r], kept_b[r]):
                agree += 1
            else:  # every token in one nucleus and not the other is tied with a nucleus's last
                edge = torch.stack([raw[r][kept_a[r]].min(), raw[r][kept_b[r]].min()])
                tied += bool(torch.isin(raw[r][kept_a[r] ^ kept_b[r]], edge).all())
    ms = {name: 1000 * t for name, t in median.items()}
    return {"calls": len(steps), "rows": int(steps[0].shape[0]), "ms": ms, "speedup": ms["one stage"] / ms["stages"],
            "widths": {q: float(widths.quantile(q / 100)) for q in (50, 75, 90, 99)},
            "over_last_stage": float((widths > TOP_P_WIDTHS[-1]).float().mean()),
            "rows_agree": agree, "rows_differ_at_ties": tied, "rows_differ_otherwise": len(widths) - agree - tied}


def markdown(r: dict) -> str:
    w = r["widths"]
    return "\n".join([
        f"| rows a call | one stage of {ONE_STAGE[0]} (ms) | stages {', '.join(map(str, TOP_P_WIDTHS))} (ms) | "
        "one ÷ stages | nucleus: median / 3rd quartile / 90th / 99th percentile | past the last stage | "
        "rows whose nuclei agree | differ at ties | differ otherwise |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {r['rows']} | {r['ms']['one stage']:.1f} | {r['ms']['stages']:.1f} | {r['speedup']:.2f} | "
        f"{w[50]:.0f} / {w[75]:.0f} / {w[90]:.0f} / {w[99]:.0f} | {r['over_last_stage']:.1%} | "
        f"{r['rows_agree']} | {r['rows_differ_at_ties']} | {r['rows_differ_otherwise']} |"])


def arguments(doc: str, rows: str = "answers: the rows of each call") -> argparse.ArgumentParser:
    """The options of a measurement on ``step_logits``: its rows, steps, top-p, repeats and where to write."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help=rows)
    ap.add_argument("--tokens", type=int, default=32, help="steps: one call each")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    return ap


def main(argv=None) -> int:
    a = arguments(__doc__).parse_args(argv)
    lm = load_model()
    result = measure(step_logits(lm, a.n, a.tokens, a.top_p), a.top_p, a.repeats)
    write("bench.nucleus", argv, lm, markdown(result), a.json, a.markdown, result=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
