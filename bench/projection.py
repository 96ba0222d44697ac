"""The candidates' projection under top-p (``LMHead.project`` with ``keep``): the float32 values of a
bfloat16 model's candidates (one vector a row, what plain sampling pays) and the fusion's error riding
along (two), computed entry by entry (``kept_packed``, a GPU's way) or a row at a time
(``kept_by_row``, a CPU's), the two alternating many times on the same candidates.

    python -m bench.projection                      # 16 rows (one run of Explore's ladder) and 384
    python -m bench.projection --json bench/results/projection.json --markdown bench/results/projection.md
    python -m bench.projection --crossover            # a narrow block whole or a row at a time (_BY_ROW_WIDTH)

The inputs are a real step's (``bench.budget.inputs``: the embedded model's states over generic text and
its top-p 0.9 candidates at T = 1), padded as a run pads them: to its widest row.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from core import RunConfig, SamplingConfig, load_model
from core.esamp.candidates import select
from core.esamp.filters import run_filters
from core.esamp.head import kept_by_row, kept_packed

from .budget import inputs, write

WAYS = {"packed": kept_packed, "by row": kept_by_row}


def measure(lm, rows: int, vectors: int, top_p: float, repeats: int) -> dict:
    raw, h, h_hat = inputs(lm, rows)
    cand = select(run_filters(RunConfig(sampling=SamplingConfig(top_k=0, top_p=top_p)))[1], raw)
    keep = torch.isfinite(cand.logits)
    r, c = keep.nonzero(as_tuple=True)
    tokens, counts = cand.ids[r, c], keep.sum(-1).tolist()
    x = torch.stack([h, h - h_hat][:vectors]).float()
    args = {"packed": (lm.head.weight, x, tokens, r), "by row": (lm.head.weight, x, tokens, counts)}
    seconds: dict[str, list[float]] = {name: [] for name in WAYS}
    with torch.inference_mode():
        for i in range(repeats + 2):
            for name in list(WAYS)[::1 if i % 2 else -1]:
                t0 = time.perf_counter()
                WAYS[name](*args[name])
                if i >= 2:  # the first rounds warm up
                    seconds[name].append(time.perf_counter() - t0)
        gap = (kept_packed(*args["packed"]) - kept_by_row(*args["by row"])).abs().max().item()
    ms = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
    return {"rows": rows, "vectors": vectors, "padded": int(keep.numel()), "kept": int(keep.sum()), "ms": ms,
            "speedup": ms["packed"] / ms["by row"], "max_difference": gap}


def crossover(lm, rows: int, width: int, kept: float, repeats: int) -> dict:
    """A padded block ``width`` wide with a share ``kept`` of its entries kept (random tokens, the fusion's
    two vectors): projected whole (``LMHead.project`` without ``keep``) or a row at a time; ms each."""
    gen = torch.Generator().manual_seed(width)
    ids = torch.randint(0, lm.head.weight.shape[0], (rows, width), generator=gen)
    keep = torch.rand(rows, width, generator=gen) < kept
    x = torch.randn(2, rows, lm.head.weight.shape[1], generator=gen)
    seconds: dict[str, list[float]] = {"whole": [], "by row": []}
    with torch.inference_mode():
        for i in range(repeats + 2):
            for name in list(seconds)[::1 if i % 2 else -1]:
                t0 = time.perf_counter()
                if name == "whole":
                    lm.head.project(x, ids)
                else:
                    lm.head._project_kept(x, keep, ids, by_row=True)
                if i >= 2:
                    seconds[name].append(time.perf_counter() - t0)
    return {"rows": rows, "width": width, "kept": kept,
            "ms": {name: 1000 * statistics.median(s) for name, s in seconds.items()}}


def markdown(results: list[dict]) -> str:
    lines = ["| rows | vectors a row | kept of padded entries | packed (ms) | by row (ms) | packed ÷ by row | "
             "largest difference |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['rows']} | {r['vectors']} | {r['kept']} of {r['padded']} | {r['ms']['packed']:.2f} | "
                     f"{r['ms']['by row']:.2f} | {r['speedup']:.2f} | {r['max_difference']:.1e} |")
    return "\n".join(lines)


def crossover_markdown(results: list[dict]) -> str:
    lines = ["| rows | block width | kept | whole block (ms) | by row (ms) |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rows']} | {r['width']} | {r['kept']:.0%} | {r['ms']['whole']:.2f} | {r['ms']['by row']:.2f} |"
              for r in results]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="16,384")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--crossover", action="store_true", help="instead: narrow blocks, whole or by row")
    ap.add_argument("--widths", default="64,128,256,512", help="the block widths of --crossover")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    lm = load_model()
    if a.crossover:
        results = [crossover(lm, int(r), int(w), k, a.repeats) for r in a.rows.split(",")
                   for w in a.widths.split(",") for k in (0.1, 0.3)]
        text = crossover_markdown(results)
    else:
        results = [measure(lm, int(r), v, a.top_p, a.repeats) for r in a.rows.split(",") for v in (1, 2)]
        text = markdown(results)
    write("bench.projection", argv, lm, text, a.json, a.markdown, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
