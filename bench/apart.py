"""What a run pays a step when its rows lie apart in vLLM's batch (other sessions' rows between them, or
vLLM's last rows moved into the places of answers that ended) against side by side: apart, it reads its
logits from a copy of its rows and writes its logits to sample into that copy and back
(``RunState._begin``, ``Registry.step``); side by side, it works on a view of the batch. Timed: the copy
and the write (``Candidates.dense``), on the same candidates both ways, alternating; and, as a way tried
and dropped on 2026-12-07, the same copy with the write straight into the batch at the run's rows.

    python -m bench.apart                    # a 64-row run (the default ladder's) in 512 rows (vLLM's slots)
    python -m bench.apart --json bench/results/apart.json --markdown bench/results/apart.md

The candidates are top-p's of the embedded model's logits at each of 32 steps of 64 plain answers to
Explore's default prompt (``bench.nucleus``); the batch around the run is the first step's logits
repeated, the run's rows drawn at random among its rows (one draw a step, the same for every way).
"""

from __future__ import annotations

import torch

from core import load_model
from core.esamp.candidates import NEG_INF, Candidates
from core.esamp.filters import StepFilters

from .budget import write
from .nucleus import alternating, arguments, step_logits


def at_rows(cand: Candidates, batch: torch.Tensor, rows: torch.Tensor) -> None:
    """The dropped way: the logits to sample written straight into ``batch`` at ``rows``."""
    kept = torch.isfinite(cand.logits)
    ids = torch.where(kept, cand.ids, cand.ids[:, :1])
    batch.index_fill_(0, rows, NEG_INF)
    batch.index_put_((rows[:, None], ids), torch.where(kept, cand.logits, cand.logits[:, :1]))


def measure(steps: list[torch.Tensor], batch_rows: int, top_p: float, repeats: int) -> dict:
    nucleus = StepFilters.of(top_p=top_p).first
    gen = torch.Generator().manual_seed(0)
    n = steps[0].shape[0]
    batch = steps[0].repeat(-(-batch_rows // n), 1)[:batch_rows].clone()  # (its other rows are never read)
    cases = {id(raw): (Candidates.top_p(raw, nucleus), torch.randperm(batch_rows, generator=gen)[:n].sort().values)
             for raw in steps}

    def apart(raw) -> None:
        cand, rows = cases[id(raw)]
        batch[rows] = cand.dense(cand.logits, batch.index_select(0, rows))

    def apart_at_rows(raw) -> None:
        cand, rows = cases[id(raw)]
        batch.index_select(0, rows)  # (read from, as ``apart``)
        at_rows(cand, batch, rows)

    def side_by_side(raw) -> None:
        cand, _ = cases[id(raw)]
        cand.dense(cand.logits, batch[:n])

    median = alternating({"apart": apart, "apart, written at its rows": apart_at_rows, "side by side": side_by_side},
                         steps, repeats)
    agree = True  # the two ways for rows apart leave the same batch
    for cand, rows in cases.values():
        one, two = batch.clone(), batch.clone()
        one[rows] = cand.dense(cand.logits, one.index_select(0, rows))
        at_rows(cand, two, rows)
        agree &= torch.equal(one, two)
    widths = [int(c.logits.shape[-1]) for c, _ in cases.values()]
    return {"rows": n, "batch": batch_rows, "calls": len(steps), "ms": {k: 1000 * t for k, t in median.items()},
            "widths": [min(widths), max(widths)], "agree": agree}


def markdown(r: dict) -> str:
    ms, (low, high) = r["ms"], r["widths"]
    return "\n".join([
        f"A run of {r['rows']} rows in a batch of {r['batch']} (top-p's candidates {low}-{high} wide a step): "
        f"its copy and its logits to sample written, median ms a call over {r['calls']} steps:", "",
        "| rows apart: copy, written back (ms) | the same, written at its rows (ms) | side by side: a view (ms) | "
        "apart ÷ side by side |", "|---:|---:|---:|---:|",
        f"| {ms['apart']:.2f} | {ms['apart, written at its rows']:.2f} | {ms['side by side']:.2f} | "
        f"{ms['apart'] / ms['side by side']:.1f} |"])


def main(argv=None) -> int:
    ap = arguments(__doc__, "the run's rows (the default ladder: 4 rungs x 16)")
    ap.add_argument("--batch", type=int, default=512, help="the batch's rows (vLLM's slots on CPU)")
    a = ap.parse_args(argv)
    lm = load_model()
    result = measure(step_logits(lm, a.n, a.tokens, a.top_p), a.batch, a.top_p, a.repeats)
    write("bench.apart", argv, lm, markdown(result), a.json, a.markdown, result=result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
