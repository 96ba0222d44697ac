"""How a continuation's distiller should start: fresh, or first trained on the given tokens' states
(EsampConfig.prime). The one to prefer makes novelty along a continuation match the original run's
at the same positions.

    python -m bench.branch --json bench/results/branch.json --markdown bench/results/branch.md
    python -m bench.branch --quick --json /tmp/b.json      # 2 prompts x 4 samples, 8 + 4 tokens

For each prompt: plain sampling (its distiller in shadow, EOS ignored) gives n answers of
``--given + --tokens`` tokens; each of the first ``--answers`` answers is continued from its first
``--given`` tokens with n new answers, once with a fresh distiller and once primed. Compared: the
continuation's mean relative novelty at each of its tokens against the original run's mean over
its answers at the same positions of the answer. Transformers backend (priming needs the given
tokens' states, which vLLM's worker does not see).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model

from . import read_prompts
from .quality import machine, write_report


def mean_rel_novelty(trace, start: int, length: int) -> list[float]:
    """The mean over a run's answers of each token's relative novelty, at positions start .. start+length-1."""
    return [statistics.fmean(s.tokens[t].rel_novelty for s in trace.samples if len(s.tokens) > t)
            for t in range(start, start + length)]


def one_prompt(lm, prompt: str, a) -> dict:
    base = RunConfig(method="plain", sampling=SamplingConfig(n=a.n, max_new_tokens=a.given + a.tokens, seed=a.seed,
                                                             top_k=0, top_p=0.9, ignore_eos=True))
    original = generate(lm, [prompt], base)
    want = mean_rel_novelty(original, a.given, a.tokens)
    out = {"prompt": prompt, "original": want, "fresh": [], "primed": []}
    for k in range(a.answers):
        given = tuple(t.id for t in original.samples[k].tokens[:a.given])
        for start in ("fresh", "primed"):
            cfg = replace(base, prefix_ids=given, sampling=replace(base.sampling, max_new_tokens=a.tokens),
                          esamp=EsampConfig(prime=start == "primed"))
            out[start].append(mean_rel_novelty(generate(lm, [prompt], cfg), 0, a.tokens))
    return out


def gaps(rows: list[dict], start: str) -> tuple[float, float]:
    """(mean |continuation - original|, mean continuation - original) over prompts, answers and positions."""
    diffs = [c - o for r in rows for curve in r[start] for c, o in zip(curve, r["original"])]
    return statistics.fmean(abs(d) for d in diffs), statistics.fmean(diffs)


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"{len(report['rows'])} prompts, {report['answers']} answers each continued from their first "
             f"{report['given']} tokens, n = {report['n']}, {report['tokens']} new tokens, plain sampling under "
             f"top-p 0.9 (distiller in shadow), {m['dtype']} on {m['cpu']} ({m['cpus']} CPUs), "
             f"{report['seconds'] / 60:.0f} minutes (`python -m bench.branch`).", "",
             "| distiller start | mean abs. gap to the original's relative novelty ↓ "
             "| mean gap (continuation − original) |",
             "|---|---:|---:|"]
    for start in ("fresh", "primed"):
        absolute, signed = report["gaps"][start]
        lines.append(f"| {start} | {absolute:.3f} | {signed:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.branch", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--given", type=int, default=16, help="tokens of the original answer the continuation keeps")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens of each continuation")
    ap.add_argument("--answers", type=int, default=2, help="answers of each prompt continued")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.prompts, a.n, a.given, a.tokens, a.answers = 2, 4, 8, 4, 1
    lm = load_model(a.model, backend="transformers")
    t0 = time.perf_counter()
    rows = []
    for prompt in read_prompts()[:a.prompts]:
        rows.append(one_prompt(lm, prompt, a))
        print(f"{len(rows)}/{a.prompts} prompts ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    report = {"command": "python -m bench.branch " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": lm.name, "n": a.n, "given": a.given, "tokens": a.tokens, "answers": a.answers, "seed": a.seed,
              "machine": machine(lm), "seconds": time.perf_counter() - t0, "rows": rows,
              "gaps": {start: gaps(rows, start) for start in ("fresh", "primed")}}
    write_report(a, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
