"""What stepping a β ladder as one run buys on vLLM (``core.config.ladder_key``): K sessions' default
Generates batched (``bench.concurrency.batched``), each ladder as one run in the engine (what every call
does), beside the same work with each rung apart: every rung given its own seed, so no two rungs share a
ladder key and each is a run of its own, as every rung was before. ESamp and plain sampling (no
distiller) alike, the four alternating in rounds in one engine; tokens/s, and the median of each
round's together ÷ apart (the machine's drift moves a round's four alike).

    python -m bench.rungs                       # K = 8, 16 tokens, 3 rounds
    python -m bench.rungs --ks 1,8 --json bench/results/rungs.json --markdown bench/results/rungs.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

from core import generate_runs, load_model

from .budget import write
from .concurrency import PROMPT, SAMPLING, session_configs

VARIANTS = ("esamp together", "esamp apart", "plain together", "plain apart")


def configs(k: int, tokens: int, variant: str, n: int = SAMPLING.n) -> list:
    """K sessions' ladders; apart: each rung with a seed of its own (the same work, other draws)."""
    out = []
    for i in range(k):
        ladder = session_configs(tokens, i, n)
        if variant.endswith("apart"):  # seeds no session's ladder uses (sessions use 0 .. K-1)
            ladder = [replace(c, sampling=replace(c.sampling, seed=1000 * (i + 1) + j)) for j, c in enumerate(ladder)]
        if variant.startswith("plain"):
            ladder = [replace(c, method="plain", esamp=replace(c.esamp, shadow=False)) for c in ladder]
        out += ladder
    return out


def measure(lm, k: int, tokens: int, rounds: int, n: int = SAMPLING.n) -> dict:
    generate_runs(lm, [PROMPT], configs(1, 2, "esamp together", n))  # warm-up
    got: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        for v in VARIANTS[::1 if i % 2 == 0 else -1]:
            t0 = time.perf_counter()
            traces = generate_runs(lm, [PROMPT], configs(k, tokens, v, n))
            got[v].append(sum(t.timings.new_tokens for t in traces) / (time.perf_counter() - t0))
    ratio = {m: statistics.median(a / b for a, b in zip(got[f"{m} together"], got[f"{m} apart"]))
             for m in ("esamp", "plain")}
    return {"k": k, "runs_apart": 4 * k, "tokens_per_s": got, "together_over_apart": ratio,
            "esamp_over_plain": {w: statistics.median(a / b for a, b in zip(got[f"esamp {w}"], got[f"plain {w}"]))
                                 for w in ("together", "apart")}}


def table(rows: list[dict]) -> str:
    lines = ["| K | runs apart | variant | tokens/s, rounds | together ÷ apart (median) | ESamp ÷ plain (median) |",
             "|---:|---:|---|---|---:|---:|"]
    for r in rows:
        for v in VARIANTS:
            method, way = v.split()
            rounds = ", ".join(f"{x:.0f}" for x in r["tokens_per_s"][v])
            vs_plain = f"{r['esamp_over_plain'][way]:.3f}" if method == "esamp" else ""
            lines.append(f"| {r['k']} | {r['runs_apart']} | {v} | {rounds} | {r['together_over_apart'][method]:.3f} "
                         f"| {vs_plain} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.rungs", description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="8", help="numbers of sessions")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=SAMPLING.n, help="answers a run (a session runs the 4-rung ladder)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    lm = load_model(backend="vllm", placement="inline")
    rows = [measure(lm, int(k), a.tokens, a.rounds, a.n) for k in a.ks.split(",")]
    write("bench.rungs", argv, lm, table(rows), a.json, a.markdown, tokens=a.tokens, rounds=a.rounds, n=a.n,
          rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
