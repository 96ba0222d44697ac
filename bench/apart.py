"""A run whose rows lie apart in vLLM's batch (other sessions' rows between them, or vLLM's last rows moved
into the places of answers that ended): how long writing its logits to sample takes, into a copy of its
rows written back (the way until 2026-12-07; the run reads its logits from that copy either way) against
straight into the batch's logits at its rows (``Candidates.dense(..., rows=...)``), with rows side by side
(a view of the batch: no copy at all) as the floor. The same candidates all three ways, alternating.

    python -m bench.apart                    # a 64-row run (the default ladder's) in 512 rows (vLLM's slots)
    python -m bench.apart --json bench/results/apart.json --markdown bench/results/apart.md

The candidates are top-p's of the embedded model's logits at each of 32 steps of 64 plain answers to
Explore's default prompt (``bench.nucleus``); the batch around the run is those logits repeated, the
run's rows drawn at random among its rows (one draw a step, the same for every way).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from core import load_model
from core.esamp.candidates import Candidates
from core.esamp.filters import StepFilters

from .budget import write
from .nucleus import alternating, step_logits


def measure(steps: list[torch.Tensor], batch_rows: int, top_p: float, repeats: int) -> dict:
    nucleus = StepFilters.of(top_p=top_p).first
    gen = torch.Generator().manual_seed(0)
    n = steps[0].shape[0]
    cases = {}  # id(raw) -> (candidates, the batch, the run's rows in it, the run's copy of them)
    for raw in steps:
        rows = torch.randperm(batch_rows, generator=gen)[:n].sort().values
        batch = raw.repeat(-(-batch_rows // n), 1)[:batch_rows].clone()
        cases[id(raw)] = (Candidates.top_p(raw, nucleus), batch, rows, batch.index_select(0, rows))

    def copied(raw) -> None:  # (the copy is the run's already: it read its logits there)
        cand, batch, rows, copy = cases[id(raw)]
        batch[rows] = cand.dense(cand.logits, copy)

    def at_rows(raw) -> None:
        cand, batch, rows, _ = cases[id(raw)]
        cand.dense(cand.logits, batch, rows)

    def side_by_side(raw) -> None:
        cand, batch, _, _ = cases[id(raw)]
        cand.dense(cand.logits, batch[:n])

    median = alternating({"copy written back": copied, "at its rows": at_rows, "side by side": side_by_side},
                         steps, repeats)
    agree = True  # the two ways for rows apart leave the same batch (each from the batch as it was)
    for cand, batch, rows, _ in cases.values():
        one, two = batch.clone(), batch.clone()
        one[rows] = cand.dense(cand.logits, one.index_select(0, rows))
        agree &= torch.equal(one, cand.dense(cand.logits, two, rows))
    widths = [int(c.logits.shape[-1]) for c, *_ in cases.values()]
    return {"rows": n, "batch": batch_rows, "calls": len(steps), "ms": {k: 1000 * t for k, t in median.items()},
            "widths": [min(widths), max(widths)], "agree": agree}


def markdown(r: dict) -> str:
    ms, (low, high) = r["ms"], r["widths"]
    return "\n".join([
        f"A run's logits to sample ({r['rows']} rows, top-p's candidates {low}-{high} wide a step) written into "
        f"a batch of {r['batch']} rows; median ms a call over {r['calls']} steps:", "",
        "| the run's rows | copy written back (ms) | at its rows (ms) | side by side, a view (ms) | copy ÷ at rows |",
        "|---|---:|---:|---:|---:|",
        f"| apart | {ms['copy written back']:.2f} | {ms['at its rows']:.2f} | {ms['side by side']:.2f} | "
        f"{ms['copy written back'] / ms['at its rows']:.2f} |"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="the run's rows (the default ladder: 4 rungs x 16)")
    ap.add_argument("--batch", type=int, default=512, help="the batch's rows (vLLM's slots on CPU)")
    ap.add_argument("--tokens", type=int, default=32, help="steps: one call each")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    lm = load_model()
    result = measure(step_logits(lm, a.n, a.tokens, a.top_p), a.batch, a.top_p, a.repeats)
    write("bench.apart", argv, lm, markdown(result), a.json, a.markdown, result=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
