"""Does the distiller learn within one generation? Learning curves of each distiller design on
the embedded model, and the check that novelty is higher on contexts the distiller has not seen.

    python -m bench.distiller                       # 2 prompts x 16 samples x 128 tokens, every design
    python -m bench.distiller --quick --json /tmp/d.json
    python -m bench.distiller --starts              # where a run's distiller starts, and how it is trained
    python -m bench.distiller --dtypes              # float32 against bfloat16 weights and Adam state

1. Plain sampling (T=1, top-k 50, EOS ignored, seed 5) generates each prompt's answers with
   ``core.generate``; one teacher-forced forward pass per prompt gives the states a run sees at
   every step: s (after decoder layer 0) and h (after the final norm).
2. For each design and width, a fresh ``DistillerBank`` (the one every run uses) is trained
   online on those states as a run trains it: at step t it predicts h from s for the prompt's
   rows (that step's novelty), then takes one Adam step on them.
3. Reported per design: relative novelty ``||h - h_hat|| / ||h||`` by position and by quarter
   (1 = no better than predicting zero), the same distiller's relative novelty at step
   ``--probe`` on the other prompt's states (an unseen context) against its own, and the cost of
   one update (ms at the prompt's rows, parameters, bytes with Adam state).
4. Then the default design through ``core.generate`` itself on every installed backend, plain
   (distiller in shadow) and ESamp β=0.25: the traces' relative novelty by quarter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from core import EsampConfig, RunConfig, SamplingConfig, encode_prompts, generate, load_model
from core.backends import installed_backends
from core.backends.hardware import keep_freed_memory
from core.esamp.distiller import DESIGNS, Design, DistillerBank
from core.esamp.fusion import novelty
from viz.charts import learning_curves_figure
from viz.report import write_images
from viz.summary import quarter_means, trace_quarters

from . import measured_on
from .quality import machine

PROMPTS = ["Describe a city in the year 3000.", "Explain how a refrigerator works."]
WIDTHS = (64, 384)  # the default and the paper's
GAINS = (2.0, 4.0, 8.0, 32.0)  # more input scales of the default design (it uses 16, normed-unit 1)


def states(lm, prompt: str, n: int, tokens: int, seed: int, prompt_states: bool = False, **filters):
    """(s, h), each (T, n, H): the states at each step of a plain run's n answers to ``prompt``; with
    ``prompt_states`` also (s, h) (L - 1, H) at the prompt's own positions before the first answer token."""
    cfg = RunConfig(method="plain", esamp=EsampConfig(shadow=False),
                    sampling=SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, ignore_eos=True, **filters))
    trace = generate(lm, [prompt], cfg)
    prefix = encode_prompts(lm, [prompt], True, tokens)[0]
    ids = torch.tensor([prefix + [t.id for t in s.tokens] for s in trace.samples], device=lm.device)
    with torch.no_grad():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states  # embeddings, each layer, final norm
    at = slice(len(prefix) - 1, len(prefix) - 1 + tokens)  # the positions that predict tokens 0..T-1
    answers = hidden[1][:, at].float().transpose(0, 1), hidden[-1][:, at].float().transpose(0, 1)
    if not prompt_states:
        return answers
    before = slice(0, len(prefix) - 1)
    return answers, (hidden[1][0, before].float(), hidden[-1][0, before].float())


def replay(lm, design: Design, width: int, own: tuple[torch.Tensor, torch.Tensor],
           other: tuple[torch.Tensor, torch.Tensor], probe: int, seed: int, dtype: torch.dtype = torch.float32) -> dict:
    """Train a fresh distiller online on ``own`` states; its novelty along the way, and at ``probe``
    on both its own and the ``other`` prompt's states (before that step's update). ``dtype``: its weights'."""
    (s, h), (s_other, h_other) = own, other
    cfg = EsampConfig(intermediate=width)  # the run defaults for everything else: lr, eps, clipping, blocks
    bank = DistillerBank(1, lm.hidden_size, cfg, device=lm.device, seed=seed, norm=lm.head.norm, design=design,
                         dtype=dtype)
    rows = torch.ones(1, s.shape[1], dtype=torch.bool, device=lm.device)
    curve, seconds, probed = [], [], {}
    for t in range(s.shape[0]):
        pred = bank.forward(s[t][None])  # (1, n, H)
        curve.append(novelty(h[t], pred.detach()[0])[1].mean().item())
        if t == probe:
            with torch.no_grad():
                unseen = bank.forward(s_other[t][None])[0]
            probed = {"own": curve[-1], "unseen": novelty(h_other[t], unseen)[1].mean().item()}
        t0 = time.perf_counter()
        bank.update(pred, h[t][None], rows)
        seconds.append(time.perf_counter() - t0)
    return {"curve": curve, "quarters": quarter_means(curve), "probe": probed,
            "update_ms": 1000 * statistics.median(seconds),
            "parameters": sum(p[0].numel() for p in bank.params), "bytes": bank.nbytes_per_distiller}


START_PROMPTS = ["Describe a city in the year 3000.", "Write a short poem about the colour of rain.",
                 "Invent a new board game and explain how to win it.",
                 "What would you pack for a month on a desert island, and why?"]
PRIME_STEPS = (4, 16, 32)  # Adam steps on the prompt's own states before the answer's first token
BANDS = ((0, 1), (1, 9), (9, 17), (17, 32))  # the first token; the warm-up's 8; the next 8; the rest of 32
# A fresh distiller trained otherwise: the paper's lr 4e-4 (the default until 2026-12-05, when the public
# reference's 1e-3 became it: bench/results/distiller-starts-lr.md was measured before, its "fresh" at 4e-4 and
# "fresh, lr 1e-3" today's default), and the reference's one gated block of rank 64 (ESAMP.md); its
# LayerNorm output, gate bias and taps are not among DistillerBank's options.
FRESH_VARIANTS = (("lr 4e-4", {"lr": 4e-4}), ("1 block", {"blocks": 1}),
                  ("1 block, lr 4e-4", {"blocks": 1, "lr": 4e-4}))


def starts(lm, seed: int, tokens: int = 32, probe: int = 16, n: int = 16) -> list[dict]:
    """Where a run's distiller starts, measured over an answer's first ``tokens``: fresh (the paper), first
    trained k steps on the prompt's own states, the model's pretrained distiller (core.backends.start:
    what ships), and fresh ones at the paper's lr or with one block (``FRESH_VARIANTS``). Plain
    sampling's answers (top-p 0.9, the app's candidates), replayed online; relative novelty by band of
    positions, and at ``probe`` on the own prompt's states against the next prompt's."""
    from core.backends import start

    data = {p: states(lm, p, n, tokens, seed, prompt_states=True, top_k=0, top_p=0.9) for p in START_PROMPTS}
    default = EsampConfig()
    pretrained = start.initial_for(lm, RunConfig(esamp=EsampConfig(start="pretrained")))
    variants = [("fresh", None, 0, default)] + [(f"prompt x{k}", None, k, default) for k in PRIME_STEPS] + [
        ("pretrained", pretrained, 0, default)] + [(f"fresh, {name}", None, 0, dataclasses.replace(default, **change))
                                                  for name, change in FRESH_VARIANTS]
    out = []
    for name, initial, prime, cfg in variants:
        curves, probes = [], []
        for own, other in zip(START_PROMPTS, START_PROMPTS[1:] + START_PROMPTS[:1]):
            (s, h), (sp, hp) = data[own]
            bank = DistillerBank(1, lm.hidden_size, cfg, device=lm.device, seed=seed, norm=lm.head.norm,
                                 initial=initial)
            for _ in range(prime):
                bank.update(bank.forward(sp[None]), hp[None], torch.ones(1, len(sp), dtype=torch.bool))
            curve = []
            for t in range(s.shape[0]):
                pred = bank.forward(s[t][None])
                curve.append(novelty(h[t], pred.detach()[0])[1].mean().item())
                if t == probe:
                    with torch.no_grad():
                        unseen = bank.forward(data[other][0][0][t][None])[0]
                    probes.append((curve[-1], novelty(data[other][0][1][t], unseen)[1].mean().item()))
                bank.update(pred, h[t][None], torch.ones(1, s.shape[1], dtype=torch.bool))
            curves.append(curve)
        mean = [statistics.mean(c) for c in zip(*curves)]
        bands = [statistics.mean(mean[a:b]) if mean[a:b] else float("nan") for a, b in BANDS]
        out.append({"start": name, "curve": mean, "bands": bands,
                    "own": statistics.mean(p[0] for p in probes), "unseen": statistics.mean(p[1] for p in probes)})
        print(f"{name:12s} " + " ".join(f"{x:.2f}" for x in out[-1]["bands"])
              + f"  step {probe}: own {out[-1]['own']:.2f} unseen {out[-1]['unseen']:.2f}", file=sys.stderr, flush=True)
    return out


def starts_markdown(rows: list[dict], probe: int = 16) -> str:
    lines = ["| start | token 1 | tokens 2-9 | tokens 10-17 | tokens 18-32 | step " + f"{probe}: own vs unseen "
             "(unseen / own) |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['start']} | " + " | ".join(f"{x:.2f}" for x in r["bands"])
                     + f" | {r['own']:.2f} vs {r['unseen']:.2f} ({r['unseen'] / r['own']:.2f}) |")
    return "\n".join(lines)


def engine_check(backend: str, n: int, tokens: int, seed: int) -> dict:
    """The default design in real runs: relative novelty by quarter per prompt, plain (shadow) and ESamp."""
    lm = load_model(backend=backend)
    out = {}
    for method in ("plain", "esamp"):
        cfg = RunConfig(method=method, sampling=SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, ignore_eos=True))
        trace = generate(lm, PROMPTS, cfg)
        out[method] = {p: trace_quarters(trace, i) for i, p in enumerate(PROMPTS)}
        print(f"{backend:12s} {method:6s} " + "  ".join(
            " ".join(f"{q:.2f}" for q in out[method][p]) for p in PROMPTS), file=sys.stderr, flush=True)
    return out


DTYPE_SEEDS = (5, 6, 7)


def dtypes(lm, data: dict, probe: int, seeds: Sequence[int] = DTYPE_SEEDS) -> list[dict]:
    """The default design at each width with float32 and with bfloat16 weights and Adam state (what
    ``distiller_dtype="model"`` keeps for a bfloat16 model), each seed's fresh distiller replayed on the
    same states."""
    rows = []
    for width in WIDTHS:
        for dtype in (torch.float32, torch.bfloat16):
            for seed in seeds:
                per = {p: replay(lm, DESIGNS["normed"], width, data[p], data[q], probe, seed, dtype)
                       for p, q in zip(PROMPTS, PROMPTS[::-1])}
                rows.append({"width": width, "dtype": str(dtype).removeprefix("torch."), "seed": seed, "prompts": per})
                print(f"{width:4d} {rows[-1]['dtype']:9s} seed {seed}  " + "   ".join(
                    " ".join(f"{x:.3f}" for x in per[p]["quarters"]) for p in PROMPTS), file=sys.stderr, flush=True)
    return rows


BANK_SIZES = (4, 32, 64)  # distillers a step: one 4x16 run; 8 and 16 sessions of 4-rung ladders (bench.concurrency)


def bank_steps(hidden: int, sizes: Sequence[int] = BANK_SIZES, rows: int = 16, repeats: int = 15) -> list[dict]:
    """One step of a bank of G distillers (forward, then update) on random states, float32 against bfloat16
    weights, alternating, the median of ``repeats`` each (after two unmeasured): what a step's distillers
    cost as their number grows and their weights stop fitting the CPU's cache. With malloc keeping freed
    memory, as in every run's process (without it, fresh pages each step made both dtypes twice as slow)."""
    keep_freed_memory()
    out = []
    for groups in sizes:
        gen = torch.Generator().manual_seed(groups)
        s, h = torch.randn(groups, rows, hidden, generator=gen), torch.randn(groups, rows, hidden, generator=gen)
        mask = torch.ones(groups, rows, dtype=torch.bool)
        banks = {d: DistillerBank(groups, hidden, EsampConfig(), dtype=d) for d in (torch.float32, torch.bfloat16)}
        seconds: dict[torch.dtype, list[float]] = {d: [] for d in banks}
        for i in range(repeats + 2):
            for d, bank in banks.items():
                t0 = time.perf_counter()
                bank.update(bank.forward(s), h, mask)
                if i >= 2:
                    seconds[d].append(time.perf_counter() - t0)
        name = {d: str(d).removeprefix("torch.") for d in banks}
        out.append({"distillers": groups, "rows": rows,
                    "mib": {name[d]: groups * b.nbytes_per_distiller / 2**20 for d, b in banks.items()},
                    "ms": {name[d]: 1000 * statistics.median(x) for d, x in seconds.items()}})
        print(f"{groups:3d} distillers x {rows}: " + "  ".join(f"{k} {v:.1f} ms" for k, v in out[-1]["ms"].items()),
              file=sys.stderr, flush=True)
    return out


def bank_markdown(steps: list[dict]) -> str:
    lines = ["| distillers × rows | weights + Adam state: float32 / bfloat16 | step (forward + update), float32 | "
             "bfloat16 | bfloat16 ÷ float32 |", "|---|---|---:|---:|---:|"]
    for r in steps:
        f32, bf16 = r["ms"]["float32"], r["ms"]["bfloat16"]
        lines.append(f"| {r['distillers']} × {r['rows']} | {r['mib']['float32']:.0f} / {r['mib']['bfloat16']:.0f} MiB "
                     f"| {f32:.1f} ms | {bf16:.1f} ms | {bf16 / f32:.2f} |")
    return "\n".join(lines)


def dtypes_markdown(rows: list[dict], probe: int) -> str:
    """Per width and dtype: relative novelty by quarter and at the probe, the mean over seeds and prompts,
    the largest gap between a seed's float32 and bfloat16 quarters, and the update's time."""
    lines = [f"| width | weights | rel. novelty by quarter (mean of {len(PROMPTS)} prompts × seeds) | largest gap to "
             f"float32, same seed | step {probe}: own vs unseen | update (ms) |", "|---:|---|---|---:|---|---:|"]
    for width in WIDTHS:
        f32 = {(r["seed"], p): r["prompts"][p]["quarters"] for r in rows if r["width"] == width
               and r["dtype"] == "float32" for p in PROMPTS}
        for dtype in ("float32", "bfloat16"):
            mine = [r for r in rows if r["width"] == width and r["dtype"] == dtype]
            quarters = [statistics.mean(r["prompts"][p]["quarters"][i] for r in mine for p in PROMPTS)
                        for i in range(4)]
            gap = max(abs(a - b) for r in mine for p in PROMPTS for a, b in zip(r["prompts"][p]["quarters"],
                                                                               f32[(r["seed"], p)]))
            own = statistics.mean(r["prompts"][p]["probe"]["own"] for r in mine for p in PROMPTS)
            unseen = statistics.mean(r["prompts"][p]["probe"]["unseen"] for r in mine for p in PROMPTS)
            ms = statistics.median(r["prompts"][p]["update_ms"] for r in mine for p in PROMPTS)
            lines.append(f"| {width} | {dtype} | {' '.join(f'{q:.3f}' for q in quarters)} | {gap:.3f} "
                         f"| {own:.3f} vs {unseen:.3f} | {ms:.2f} |")
    return "\n".join(lines)


def markdown(results: dict, probe: int) -> str:
    lines = [f"| design | width | rel. novelty by quarter ({PROMPTS[0][:16]}…) | ({PROMPTS[1][:16]}…) "
             f"| step {probe}: own vs unseen | update (ms) | parameters |", "|---|---:|---|---|---|---:|---:|"]
    for r in results:
        q = [" ".join(f"{x:.2f}" for x in r["prompts"][p]["quarters"]) for p in PROMPTS]
        probes = " / ".join(f"{r['prompts'][p]['probe']['own']:.2f} vs {r['prompts'][p]['probe']['unseen']:.2f}"
                            for p in PROMPTS)
        ms = statistics.mean(r["prompts"][p]["update_ms"] for p in PROMPTS)
        lines.append(f"| {r['design']} | {r['width']} | {q[0]} | {q[1]} | {probes} | {ms:.1f} "
                     f"| {r['prompts'][PROMPTS[0]]['parameters'] / 1e6:.2f} M |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.distiller", description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=16, help="samples per prompt")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--probe", type=int, default=64, help="the step at which own and unseen contexts are compared")
    ap.add_argument("--backends", default=",".join(installed_backends()), help="for the check through generate()")
    ap.add_argument("--quick", action="store_true", help="4 samples x 16 tokens, probe at 8: checks the plumbing")
    ap.add_argument("--starts", action="store_true", help="only where a run's distiller starts: fresh, primed on "
                    "the prompt, pretrained, fresh at the paper's lr or with one block (4 prompts x 16 answers x 32 "
                    "tokens, top-p 0.9)")
    ap.add_argument("--dtypes", action="store_true", help="only the distillers' dtype: the default design at each "
                    f"width with float32 and bfloat16 weights, seeds {', '.join(map(str, DTYPE_SEEDS))}")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--images", type=Path, help="folder for the learning-curve plot (PNG, SVG)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.tokens, a.probe = 4, 16, 8
    if not 0 <= a.probe < a.tokens:
        ap.error(f"--probe must be a step from 0 to {a.tokens - 1}, but is {a.probe}.")
    t_start = time.perf_counter()
    command = "python -m bench.distiller " + " ".join(argv if argv is not None else sys.argv[1:])
    lm = load_model()
    if a.starts:
        rows = starts(lm, a.seed, tokens=12 if a.quick else 32, probe=4 if a.quick else 16, n=3 if a.quick else 16)
        table = starts_markdown(rows, 4 if a.quick else 16)
        print("\n" + table)
        if a.json:
            a.json.write_text(json.dumps({"command": command, "model": lm.name, "machine": machine(lm),
                "prompts": START_PROMPTS, "seed": a.seed, "starts": rows}, indent=2))
        if a.markdown:
            a.markdown.write_text(measured_on({"machine": machine(lm)}, command) + table + "\n")
        return 0
    data = {p: states(lm, p, a.n, a.tokens, a.seed) for p in PROMPTS}
    if a.dtypes:
        rows = dtypes(lm, data, a.probe, DTYPE_SEEDS[:1] if a.quick else DTYPE_SEEDS)
        steps = bank_steps(lm.hidden_size, BANK_SIZES[:1] if a.quick else BANK_SIZES, repeats=2 if a.quick else 15)
        table = dtypes_markdown(rows, a.probe) + "\n\n" + bank_markdown(steps)
        print("\n" + table)
        if a.json:
            a.json.write_text(json.dumps({"command": command, "model": lm.name, "machine": machine(lm),
                "prompts": PROMPTS, "n": a.n, "tokens": a.tokens, "seed": a.seed, "probe": a.probe,
                "seconds": time.perf_counter() - t_start, "dtypes": rows, "bank_steps": steps}, indent=2))
        if a.markdown:
            a.markdown.write_text(measured_on({"machine": machine(lm)}, command) + table + "\n")
        return 0
    results = []
    designs = [(name, d) for name, d in DESIGNS.items()]
    designs += [(f"normed rms {g:g}", dataclasses.replace(DESIGNS["normed"], input_rms=g)) for g in GAINS]
    for name, design in designs:
        for width in WIDTHS:
            per = {p: replay(lm, design, width, data[p], data[q], a.probe, a.seed)
                   for p, q in zip(PROMPTS, PROMPTS[::-1])}
            results.append({"design": name, "width": width, **dataclasses.asdict(design), "prompts": per})
            print(f"{name:15s} {width:4d}  " + "   ".join(
                " ".join(f"{x:.2f}" for x in per[p]["quarters"]) + f"  own {per[p]['probe']['own']:.2f} unseen "
                f"{per[p]['probe']['unseen']:.2f}" for p in PROMPTS) + f"  {per[PROMPTS[0]]['update_ms']:.1f} ms",
                file=sys.stderr, flush=True)
    engine = {b: engine_check(b, a.n, a.tokens, a.seed) for b in a.backends.split(",") if b}
    table = markdown(results, a.probe) + "\n\n" + engine_markdown(engine)
    print("\n" + table)
    out = {"command": command,
           "model": lm.name, "prompts": PROMPTS, "n": a.n, "tokens": a.tokens, "seed": a.seed, "probe": a.probe,
           "default": dataclasses.asdict(EsampConfig()), "machine": machine(lm),
           "seconds": time.perf_counter() - t_start, "designs": results, "engine": engine}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        a.markdown.write_text(measured_on(out) + table + "\n")
    if a.images:
        write_images({"distiller-learning": learning_figure(results)}, a.images)
    return 0


def engine_markdown(engine: dict) -> str:
    """Relative novelty by quarter through ``generate()``, per backend and method (the distiller that ships)."""
    prompts = list(next(iter(next(iter(engine.values())).values())))
    lines = ["| backend | method | " + " | ".join(prompts) + " |", "|---|---|" + "---|" * len(prompts)]
    for backend, by_method in engine.items():
        for method, curves in by_method.items():
            lines.append(f"| {backend} | {method} | " + " | ".join(" ".join(f"{q:.2f}" for q in curves[p])
                                                                for p in prompts) + " |")
    return "\n".join(lines)


def learning_figure(results: list[dict]):
    """The named designs' learning curves (mean over the prompts), from the results or their JSON."""
    return learning_curves_figure({f"{r['design']}, width {r['width']}": [statistics.mean(c) for c in zip(
        *(p["curve"] for p in r["prompts"].values()))] for r in results if r["design"] in DESIGNS})


if __name__ == "__main__":
    sys.exit(main())
