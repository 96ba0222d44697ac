"""How much a run's numbers depend on the model's dtype: recorded perplexity against scoring the
same text again, in float32 and in bfloat16, on every backend; and how often the two dtypes draw
the same tokens under the same seed.

    python -m bench.dtype                                   # every installed backend, both dtypes
    python -m bench.dtype --json bench/results/dtype.json --markdown bench/results/dtype.md

Recorded: the ``logp_base`` every token records while generating (float32 LM head and
log-softmax from the float32 final state). Re-scored: ``core.scoring.perplexities`` on the
transformers model of the same dtype (one forward pass over prompt + answer, the same float32
head). Only samples whose text tokenizes back to their own tokens are compared (the others are
another token sequence). The CPU and the dtype are in the report.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model
from core.backends import installed_backends
from core.backends.hardware import describe
from core.scoring import perplexities, recorded_perplexities

PROMPTS = ["Invent a name for a new colour and describe it.", "Write the opening line of a story.",
           "Suggest a name for a coffee shop and explain it.", "Describe a city in the year 3000."]
DTYPES = ("float32", "bfloat16")


def methods(n: int, tokens: int, seed: int) -> dict[str, RunConfig]:
    sampling = SamplingConfig(n=n, max_new_tokens=tokens, seed=seed)
    return {"plain": RunConfig(method="plain", sampling=sampling),
            "esamp β=0.5": RunConfig(method="esamp", sampling=sampling, esamp=EsampConfig(beta=0.5)),
            "esamp β=1": RunConfig(method="esamp", sampling=sampling, esamp=EsampConfig(beta=1.0))}


def agreement(scorer, trace) -> dict:
    """Recorded against re-scored perplexity, per sample and over all compared tokens."""
    tok = scorer.tokenizer
    same = [i for i, s in enumerate(trace.samples)
            if s.tokens and tok(s.text, add_special_tokens=False)["input_ids"] == [t.id for t in s.tokens]]
    if not same:
        return {"samples": 0, "of": len(trace.samples), "median_rel": None, "max_rel": None, "corpus_rel": None}
    recorded = recorded_perplexities(trace)
    scored = perplexities(scorer, [trace.prompts[trace.samples[i].prompt_index].text for i in same],
                          [trace.samples[i].text for i in same])
    rel = [abs(recorded[i] / p - 1) for i, p in zip(same, scored)]
    n_tok = [len(trace.samples[i].tokens) for i in same]
    mean_rec = sum(math.log(recorded[i]) * k for i, k in zip(same, n_tok)) / sum(n_tok)
    mean_sc = sum(math.log(p) * k for p, k in zip(scored, n_tok)) / sum(n_tok)
    return {"samples": len(same), "of": len(trace.samples), "median_rel": statistics.median(rel),
            "max_rel": max(rel), "corpus_rel": abs(math.exp(mean_rec - mean_sc) - 1)}


def token_match(a, b) -> dict:
    """How far two runs of the same config (other dtype) draw the same tokens."""
    ids = [([t.id for t in x.tokens], [t.id for t in y.tokens]) for x, y in zip(a.samples, b.samples)]
    forks = [next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y))) for x, y in ids if x != y]
    return {"identical": len(ids) - len(forks), "of": len(ids),
            "median_fork": statistics.median(forks) if forks else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=None, help="default: every installed backend")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one prompt, n = 2, 8 tokens (the test's run)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    prompts = PROMPTS[:1] if args.quick else PROMPTS
    n, tokens = (2, 8) if args.quick else (args.n, args.tokens)
    backends = args.backends or installed_backends()
    scorers = {d: load_model(dtype=d) for d in DTYPES}
    rows, traces = [], {}
    for backend in backends:
        for dtype in DTYPES:
            lm = scorers[dtype] if backend == "transformers" else load_model(backend=backend, dtype=dtype)
            for label, cfg in methods(n, tokens, args.seed).items():
                trace = generate(lm, prompts, cfg)
                traces[backend, dtype, label] = trace
                rows.append({"backend": backend, "dtype": dtype, "method": label,
                             **agreement(scorers[dtype], trace)})
                print(json.dumps(rows[-1]), flush=True)
            if lm is not scorers[dtype]:
                del lm  # one vLLM engine at a time
    tokens_rows = [{"backend": b, "method": m, **token_match(traces[b, "float32", m], traces[b, "bfloat16", m])}
                   for b in backends for m in methods(n, tokens, args.seed)]
    report = {"machine": describe(), "prompts": prompts, "n": n, "tokens": tokens, "seed": args.seed,
              "perplexity": rows, "tokens_across_dtypes": tokens_rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Measured on {m['cpu']} ({m['cpus']} CPUs, bfloat16 flags: {', '.join(m['cpu_bf16']) or 'none'}), "
             f"{len(report['prompts'])} prompts x {report['n']} samples x {report['tokens']} tokens, seed "
             f"{report['seed']} (`python -m bench.dtype`).", "",
             "| backend | dtype | method | samples compared | median |Δ| per sample | max |Δ| | all tokens |Δ| |",
             "|---|---|---|---:|---:|---:|---:|"]
    def pct(x):
        return "—" if x is None else f"{100 * x:.2f} %"

    for r in report["perplexity"]:
        lines.append(f"| {r['backend']} | {r['dtype']} | {r['method']} | {r['samples']}/{r['of']} | "
                     f"{pct(r['median_rel'])} | {pct(r['max_rel'])} | {pct(r['corpus_rel'])} |")
    lines += ["", "Same config and seed in float32 and in bfloat16:", "",
              "| backend | method | identical samples | the others' median position of their first different token |",
              "|---|---|---:|---:|"]
    for r in report["tokens_across_dtypes"]:
        fork = "—" if r["median_fork"] is None else f"{r['median_fork']:g}"
        lines.append(f"| {r['backend']} | {r['method']} | {r['identical']}/{r['of']} | {fork} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
