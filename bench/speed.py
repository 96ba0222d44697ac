"""Speed of plain sampling vs ESamp on the same workload, rounds interleaved in one process.

    python -m bench.speed                       # 4 prompts x 16 samples x 128 tokens, embedded model
    python -m bench.speed --rounds 5 --json out.json

The plain baseline runs with no distiller at all (shadow off), so the ratio esamp/plain is
what ESamp really costs. EOS is ignored so every run does the same work. Machines here are
noisy: compare the ratio within one run, not tokens/s across runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model

PROMPTS = [
    "Describe a city in the year 3000.",
    "Write a short poem about the colour of rain.",
    "Explain why the sky is blue to a five-year-old.",
    "Invent a new board game and describe its rules.",
    "What would you pack for a month on a desert island?",
    "Tell the story of a lighthouse keeper who finds a message.",
    "List three unusual uses for a paperclip.",
    "Describe the taste of a fruit that does not exist.",
]

VARIANTS = {
    "plain": dict(method="plain", shadow=False),  # no distiller: the true baseline
    "plain+shadow": dict(method="plain", shadow=True),  # distiller trained, beta=0: novelty logged
    "esamp": dict(method="esamp", shadow=True),
}


def run_once(lm, variant: str, prompts: int, n: int, tokens: int, seed: int) -> tuple[float, float, float]:
    """(tokens/s by the wall clock, tokens per CPU-second of this process, share of the run's wall
    time spent in the distiller and fusion) for one run."""
    v = VARIANTS[variant]
    cfg = RunConfig(method=v["method"], esamp=EsampConfig(shadow=v["shadow"]),
                    sampling=SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, ignore_eos=True))
    cpu = time.process_time()
    trace = generate(lm, PROMPTS[:prompts], cfg)
    cpu = time.process_time() - cpu
    assert trace.timings.new_tokens == prompts * n * tokens
    t = trace.timings
    return t.tokens_per_s, t.new_tokens / cpu, t.distiller_seconds / t.seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="plain,esamp", help=f"comma list of {','.join(VARIANTS)}")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    lm = load_model(a.model, device=a.device)
    run_once(lm, variants[0], 1, 2, 4, 0)  # warm-up
    results: dict[str, list[float]] = {v: [] for v in variants}
    cpu_results: dict[str, list[float]] = {v: [] for v in variants}
    shares: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(a.rounds):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate order against drift
        for v in order:
            tps, cpu_tps, share = run_once(lm, v, a.prompts, a.n, a.tokens, seed=r)
            results[v].append(tps)
            cpu_results[v].append(cpu_tps)
            shares[v].append(share)
            print(f"round {r + 1}/{a.rounds} {v:13s} {tps:8.1f} tokens/s  {cpu_tps:8.1f} tokens/CPU-s  "
                  f"distiller+fusion {100 * share:4.1f}% of the run", file=sys.stderr, flush=True)
    median = {v: statistics.median(x) for v, x in results.items()}
    base = median.get("plain")
    # Ratios within each round (neighbours in time share the machine's mood), then their median.
    round_ratio = {v: statistics.median(x / b for x, b in zip(results[v], results["plain"]))
                   for v in variants} if base else {}
    cpu_ratio = {v: statistics.median(x / b for x, b in zip(cpu_results[v], cpu_results["plain"]))
                 for v in variants} if base else {}
    out = {
        "workload": {"prompts": a.prompts, "n": a.n, "new_tokens": a.tokens, "rounds": a.rounds},
        "model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype),
        "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__},
        "tokens_per_s": results, "tokens_per_cpu_s": cpu_results, "median_tokens_per_s": median,
        "ratio_to_plain": {v: m / base for v, m in median.items()} if base else {},
        "median_round_ratio_to_plain": round_ratio, "median_cpu_ratio_to_plain": cpu_ratio,
        "distiller_share_of_run": shares,
    }
    print("\n| variant | median tokens/s | ratio of medians | median per-round ratio | CPU-time ratio "
          "| distiller + fusion share of the run |\n|---|---:|---:|---:|---:|---:|")
    for v in variants:
        share = f"{100 * statistics.median(shares[v]):.1f}%"
        if base:
            print(f"| {v} | {median[v]:.1f} | {median[v] / base:.3f} | {round_ratio[v]:.3f} | {cpu_ratio[v]:.3f} "
                  f"| {share} |")
        else:
            print(f"| {v} | {median[v]:.1f} | - | - | - | {share} |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
