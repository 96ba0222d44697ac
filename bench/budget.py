"""The cost of the bound on each token's push (``EsampConfig.max_kl``): the fusion of one step with the
bound and without it, on the same candidates, the two alternating many times (so the machine's drift
moves both alike).

    python -m bench.budget                                # 64 and 384 rows, top-p 0.9, β = 1.5, the default bound
    python -m bench.budget --json bench/results/budget.json --markdown bench/results/budget.md

The inputs are a real step's: the embedded model's shallow and final states over the first positions of
its answers to generic prompts (``core.backends.start.GENERIC_PROMPTS``), its top-p 0.9 candidates, and a
fresh distiller's prediction (an untrained error, the largest push the bound meets). Reported: each
fusion's median time, the extra of the bound, the share of rows it bound, and that share of a native
vLLM step where bench.speed measured one on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from core import EsampConfig, RunConfig, SamplingConfig, load_model
from core.backends.hardware import describe
from core.backends.hf.loop import states_of
from core.backends.start import GENERIC_PROMPTS
from core.esamp.budget import bounded
from core.esamp.candidates import select
from core.esamp.distiller import DistillerBank
from core.esamp.filters import run_filters
from core.esamp.fusion import fuse

from .sampler import native_steps


def inputs(lm, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(raw logits (R, V), h (R, H), a fresh distiller's h_hat (R, H)) at ``rows`` real positions."""
    ids = [lm.tokenizer(p)["input_ids"] for p in GENERIC_PROMPTS]
    s, h = states_of(lm, ids)
    while len(h) < rows:  # as many positions as rows, the texts' again if they are short
        s, h = torch.cat([s, s]), torch.cat([h, h])
    s, h = s[:rows], h[:rows]
    bank = DistillerBank(1, h.shape[-1], EsampConfig(), norm=lm.head.norm)
    with torch.no_grad():
        h_hat = bank.forward(s[None])[0].detach()
    return lm.head.logits32(h), h, h_hat


def measure(lm, rows: int, beta: float, max_kl: float, top_p: float, repeats: int) -> dict:
    raw, h, h_hat = inputs(lm, rows)
    config = RunConfig(sampling=SamplingConfig(top_k=0, top_p=top_p))
    cand = select(run_filters(config)[1], raw)
    seconds: dict[str, list[float]] = {"unbounded": [], "bounded": []}
    with torch.inference_mode():
        for i in range(repeats + 3):
            for name, kl in (("unbounded", None), ("bounded", max_kl))[::1 if i % 2 else -1]:
                t0 = time.perf_counter()
                fuse(cand, h, h_hat, lm.head, beta, 1.0, max_kl=kl)
                if i >= 3:  # the first rounds warm up
                    seconds[name].append(time.perf_counter() - t0)
        free = fuse(cand, h, h_hat, lm.head, beta, 1.0)
        t = bounded(cand.logits, (free - cand.logits).nan_to_num(0.0) / beta, beta, max_kl)
    ms = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
    return {"rows": rows, "candidates": int(cand.logits.shape[-1]), "ms": ms,
            "extra_ms": ms["bounded"] - ms["unbounded"], "rows_bound": float((t < beta).float().mean())}


def markdown(rows: list[dict], steps: dict[int, float], beta: float, max_kl: float) -> str:
    lines = [f"| rows | candidates (K) | fusion (ms) | with the bound, ≤ {max_kl:g} nats at β = {beta:g} (ms) | "
             "extra (ms) | rows the bound held back | extra / native step |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        step = steps.get(r["rows"])
        share = "" if step is None else f"{r['extra_ms'] / step:.2%}"
        lines.append(f"| {r['rows']} | {r['candidates']} | {r['ms']['unbounded']:.2f} | {r['ms']['bounded']:.2f} | "
                     f"{r['extra_ms']:.2f} | {r['rows_bound']:.0%} | {share} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="64,384")
    ap.add_argument("--beta", type=float, default=1.5)
    ap.add_argument("--max-kl", type=float, default=EsampConfig().max_kl)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--steps", type=Path, default=Path("bench/results/speed-native-vllm.json"),
                    help="bench.speed's report whose native step times the shares are of (if it exists)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    lm = load_model()
    rows = [measure(lm, int(r), a.beta, a.max_kl, a.top_p, a.repeats) for r in a.rows.split(",")]
    steps = native_steps(a.steps)
    text = markdown(rows, steps, a.beta, a.max_kl)
    write("bench.budget", argv, lm, text, a.json, a.markdown, rows=rows, native_step_ms=steps)
    return 0


def write(module: str, argv, lm, text: str, json_path: Path | None, markdown_path: Path | None, **fields) -> None:
    """Print a measurement's table and keep it: its command, model, dtype and machine with ``fields`` as
    JSON, the table under the CPU and dtype as markdown (each where a path is given)."""
    print(text)
    out = {"command": f"python -m {module} " + " ".join(sys.argv[1:] if argv is None else argv),
           "model": lm.name, "dtype": str(lm.dtype), "machine": describe(), **fields}
    if json_path:
        json_path.write_text(json.dumps(out, indent=2) + "\n")
    if markdown_path:
        markdown_path.write_text(f"{describe()['cpu']} ({describe()['torch_cpu_capability']}), {lm.dtype}:\n\n{text}\n")


if __name__ == "__main__":
    raise SystemExit(main())
