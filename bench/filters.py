"""A step's candidates under each filter setting: ``candidates.select`` (the first filter's candidates
straight from the raw logits, the filters after it on those alone) against filtering the whole
vocabulary first (``apply_filters``, then ``Candidates.from_filtered``: what ``select`` falls back to),
on the same logits, the two alternating many times.

    python -m bench.filters                    # Explore's prompt, 64 answers, the settings below
    python -m bench.filters --json bench/results/filters.json --markdown bench/results/filters.md

The logits are the sampler's own (``bench.nucleus.step_logits``: the embedded model's plain answers to
Explore's default prompt at top-p 0.9, read back at every position in the model's dtype, a row per
answer). Reported per setting: each way's median time a call, the candidates a row keeps, and the rows
where the two ways keep different tokens: at tied logits (which of equal values a top-k or a sort lists
first depends on how many it takes; a bfloat16 model's logits tie often), or otherwise (the shortcut's
sums run over fewer entries, so a token at a bound's last bit may fall on the other side), with the most
probability such tokens hold in a row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from core import load_model
from core.esamp.candidates import Candidates, select
from core.esamp.filters import StepFilters, apply_filters

from .budget import write
from .nucleus import alternating, step_logits

SETTINGS = {  # name -> StepFilters.of's arguments: each filter alone, then the pairs a user may combine
    "top-k 50": dict(top_k=50), "top-p 0.9": dict(top_p=0.9), "min-p 0.1": dict(min_p=0.1),
    "top-k 50, top-p 0.9": dict(top_k=50, top_p=0.9), "top-k 50, min-p 0.1": dict(top_k=50, min_p=0.1),
    "top-p 0.9, min-p 0.05": dict(top_p=0.9, min_p=0.05)}


def whole(step: StepFilters, raw: torch.Tensor) -> Candidates:
    """The candidates of the whole vocabulary filtered first."""
    return Candidates.from_filtered(apply_filters(step.filters, raw), step.active, step.top_k)


def measure(steps: list[torch.Tensor], settings: dict, repeats: int) -> list[dict]:
    out = []
    for name, args in settings.items():
        step = StepFilters.of(**args)
        ways = {"whole": whole, "select": select}
        median = alternating({w: lambda raw, f=f: f(step, raw) for w, f in ways.items()}, steps, repeats)
        with torch.inference_mode():
            kept, moved, tied = [], [], 0
            for raw in steps:
                a, b = (f(step, raw) for f in ways.values())
                keep_a, keep_b = torch.isfinite(a.dense(a.logits)), torch.isfinite(b.dense(b.logits))
                kept.append(keep_b.sum(-1))
                p = torch.softmax(raw.float() / step.temperature, -1)
                moved.append(torch.where(keep_a ^ keep_b, p, 0.0).sum(-1))
                for r in torch.nonzero((keep_a ^ keep_b).any(-1)).flatten().tolist():
                    # every token one way keeps and the other not is tied with the last either keeps
                    edge = torch.stack([raw[r][keep_a[r]].min(), raw[r][keep_b[r]].min()])
                    tied += bool(torch.isin(raw[r][keep_a[r] ^ keep_b[r]], edge).all())
        kept, moved = torch.cat(kept).float(), torch.cat(moved)
        ms = {w: 1000 * t for w, t in median.items()}
        out.append({"setting": name, "args": args, "calls": len(steps), "rows": int(steps[0].shape[0]), "ms": ms,
                    "speedup": ms["whole"] / ms["select"], "kept_median": float(kept.median()),
                    "kept_max": int(kept.max()), "rows_differ_at_ties": tied,
                    "rows_differ_otherwise": int((moved > 0).sum()) - tied, "moved_max": float(moved.max())})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| filters | rows a call | whole vocabulary first (ms) | select (ms) | whole ÷ select | "
             "candidates: median / max | rows | differ at ties | differ otherwise | "
             "their tokens' probability, at most |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['rows']} | {r['ms']['whole']:.1f} | {r['ms']['select']:.1f} | "
                     f"{r['speedup']:.2f} | {r['kept_median']:.0f} / {r['kept_max']} | "
                     f"{r['rows'] * r['calls']} | {r['rows_differ_at_ties']} | {r['rows_differ_otherwise']} | "
                     f"{r['moved_max']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="answers: the rows of each call")
    ap.add_argument("--tokens", type=int, default=32, help="steps: one call each")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    lm = load_model()
    rows = measure(step_logits(lm, a.n, a.tokens, 0.9), SETTINGS, a.repeats)
    write("bench.filters", argv, lm, markdown(rows), a.json, a.markdown, settings=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
