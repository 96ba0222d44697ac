"""What ESamp's distillers cost an engine step at a class's scale: one shared bank (``SharedBank``, the
one every vLLM run's distillers live in) predicting and learning for G distillers of m rows each, as
K sessions of the app's default ladder make it (4 distillers of 16 rows a session: G = 4K).

    python -m bench.bank                        # G = 4, 32, 64 (one session, 8 and 16 sessions' ladders)
    python -m bench.bank --gs 4 --repeats 3     # the plumbing

Per G, the median over ``--repeats`` steps (after warm-up steps) of the bank's forward pass for every
distiller (``predict``), its update (``learn``: the backward pass, each distiller's gradient clipped,
one fused Adam call), and, apart, one fused Adam call on the same weights alone: what of ``learn`` is
the optimiser's memory traffic and what is the products of the backward pass. Random states of the
embedded model's width (576); the distillers' default shape and dtype (``EsampConfig``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.optim.adam import adam

from core import EsampConfig
from core.backends.hardware import describe
from core.esamp.distiller import BETA1, BETA2, SharedBank

HIDDEN = 576  # the embedded model's width
ROWS = 16  # a distiller's rows a step: a prompt's n answers, the app's default
PER_SESSION = 4  # distillers a session's ladder leases: one a rung


def measure(g: int, repeats: int, warmup: int = 3, cfg: EsampConfig = EsampConfig()) -> dict:
    """The median times (ms) of a bank step's parts for ``g`` distillers of ``ROWS`` rows."""
    torch.manual_seed(0)
    bank = SharedBank(HIDDEN, cfg)
    leases = [bank.lease(PER_SESSION, seed=i) for i in range(g // PER_SESSION)]
    s = [torch.randn(PER_SESSION, ROWS, HIDDEN) * 5 for _ in leases]
    h = [torch.randn(PER_SESSION, ROWS, HIDDEN) for _ in leases]
    mask = torch.ones(PER_SESSION, ROWS, dtype=torch.bool)
    times: dict[str, list[float]] = {"predict": [], "learn": [], "adam alone": []}
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        bank.predict(list(zip(leases, s)))
        t1 = time.perf_counter()
        for lease, x, y in zip(leases, s, h):
            lease.update(lease.forward(x), y, mask)
        t2 = time.perf_counter()
        bank.learn()
        t3 = time.perf_counter()
        if i >= warmup:
            times["predict"].append(t1 - t0)
            times["learn"].append(t3 - t2)
    weights = [p[:g] for p in bank.params]
    grads = [torch.randn_like(p) * 1e-3 for p in weights]
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        adam(weights, grads, [m[:g] for m in bank.m], [v[:g] for v in bank.v], [],
             [torch.tensor(1.0) for _ in weights], fused=True, amsgrad=False, beta1=BETA1, beta2=BETA2,
             lr=cfg.lr, weight_decay=0.0, eps=cfg.eps, maximize=False)
        if i >= warmup:
            times["adam alone"].append(time.perf_counter() - t0)
    return {"g": g, "rows": g * ROWS, "megabytes": bank.nbytes_per_distiller * g / 1e6,
            **{part: 1000 * statistics.median(ts) for part, ts in times.items()}}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"A shared bank's step, G distillers of {ROWS} rows (the embedded model's width, the default "
             f"distiller in float32), median ms over {report['repeats']} steps on {m['cpu']} "
             f"({m['torch_cpu_capability']} kernels, {report['threads']} threads); `{report['command']}`.", "",
             "| G | rows | weights + Adam state (MB) | predict | learn | of which one fused Adam call, alone |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['g']} | {r['rows']} | {r['megabytes']:.0f} | {r['predict']:.2f} | {r['learn']:.2f} | "
              f"{r['adam alone']:.2f} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bank", description=__doc__.split("\n")[0])
    ap.add_argument("--gs", default="4,32,64", help=f"distillers in the bank, multiples of {PER_SESSION}")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    gs = [int(g) for g in a.gs.split(",")]
    if a.repeats < 1 or any(g < PER_SESSION or g % PER_SESSION for g in gs):
        ap.error(f"--gs are multiples of {PER_SESSION} and --repeats at least 1")
    report = {"command": "python -m bench.bank " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": describe(), "threads": torch.get_num_threads(), "repeats": a.repeats,
              "rows": [measure(g, a.repeats) for g in gs]}
    text = markdown(report)
    print(text)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    if a.markdown:
        a.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
