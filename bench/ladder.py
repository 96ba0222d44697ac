"""What decoding a ladder's runs in one batch buys on the transformers backend: Explore's default
Generate (its ladder at its defaults) through ``generate_runs`` (the runs of one shape in one batch of up
to ``core.backends.hf.loop.MAX_ROWS`` rows) beside the same runs one ``generate`` at a time, in pairs.

    python -m bench.ladder                                    # 3 pairs
    python -m bench.ladder --json bench/results/ladder.json --markdown bench/results/ladder.md

The two of a pair run the same seed; the report says how many answers drew the same tokens both ways
(a batch's rounding differs from a lone run's in the last bits) and the median of the per-pair ratios
one-at-a-time over together (the machine's drift moves both of a pair alike).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench import publish
from bench.live import default_runs
from core import RunConfig, SamplingConfig, generate, generate_runs, load_model
from core.backends.hardware import describe
from core.backends.hf.loop import MAX_ROWS

PROMPT = "Describe a city in the year 3000."


def timed(call) -> tuple[float, list]:
    start = time.perf_counter()
    traces = call()
    return time.perf_counter() - start, traces


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--dtype", default=None, help="default: the machine's (hardware.default_dtype)")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    lm = load_model(None, backend="transformers", dtype=args.dtype)
    generate(lm, ["Hello"], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=4)))  # warm
    pairs, same, answers = [], 0, 0
    for seed in range(args.pairs):
        configs = default_runs(args.n, args.tokens, seed)
        calls = {"together": lambda: generate_runs(lm, [PROMPT], configs),
                 "alone": lambda: [generate(lm, [PROMPT], c) for c in configs]}
        order = ("alone", "together") if seed % 2 else ("together", "alone")  # which goes first alternates
        got = {name: timed(calls[name]) for name in order}
        for a, b in zip(got["together"][1], got["alone"][1]):
            for x, y in zip(a.samples, b.samples):
                same += [t.id for t in x.tokens] == [t.id for t in y.tokens]
                answers += 1
        pairs.append((got["together"][0], got["alone"][0]))
        print(f"seed {seed}: together {pairs[-1][0]:.2f} s, one at a time {pairs[-1][1]:.2f} s", flush=True)
    report = {"cpu": describe(), "date": time.strftime("%Y-%m-%d"), "dtype": str(lm.dtype).removeprefix("torch."),
              "runs": len(configs), "n": args.n, "tokens": args.tokens, "max_rows": MAX_ROWS, "pairs": len(pairs),
              "together_s": round(statistics.median(a for a, _ in pairs), 2),
              "alone_s": round(statistics.median(b for _, b in pairs), 2),
              "ratio": round(statistics.median(b / a for a, b in pairs), 3),
              "ratios": [round(b / a, 3) for a, b in pairs], "same_answers": same, "answers": answers}
    return publish(report, args.json, args.markdown, markdown)


def markdown(r: dict) -> str:
    cpu = r["cpu"]
    return "\n".join([
        f"Measured {r['date']} on {cpu['cpu']} ({cpu['cpus']} cores, {cpu['torch_cpu_capability']}), {r['dtype']}: "
        f"Explore's default Generate ({r['runs']} runs x {r['n']} answers x {r['tokens']} tokens) on transformers, "
        f"its runs in one batch (up to {r['max_rows']} rows) and one at a time, {r['pairs']} pairs.", "",
        "| together s (median) | one at a time s (median) | one at a time / together (median) | per pair | "
        "answers with the same tokens |",
        "|---:|---:|---:|---|---:|",
        f"| {r['together_s']} | {r['alone_s']} | {r['ratio']} | {', '.join(map(str, r['ratios']))} | "
        f"{r['same_answers']} of {r['answers']} |", ""])


if __name__ == "__main__":
    raise SystemExit(main())
