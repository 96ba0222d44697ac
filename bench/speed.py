"""Speed of plain sampling and ESamp on each installed backend, from one row to 32 prompts x 16
samples, rounds interleaved in one process.

    python -m bench.speed                          # every backend, its default workloads, 64 tokens
    python -m bench.speed --backends vllm --workloads 24x16 --rounds 3
    python -m bench.speed --quick --json out.json  # a tiny run (tests check the report's structure)
    python -m bench.speed --pool a.json b.json     # several runs' ratios to native, pooled

Variants, on the same prompts (bench/prompts/open_ended.txt, one distinct prompt per prompt slot)
and sampling (T=1, top-k 50 or ``--filter``'s, EOS ignored so every run does the same work), light traces:
- ``plain``: no distiller at all (shadow off): the baseline of each ratio;
- ``esamp``: beta 0.25, one distiller per prompt, the default design;
and on the ``--extras`` workload only:
- ``esamp-overlap``: ESamp with the distiller's update in a worker thread (``overlap=True``);
- ``esamp-model-dtype``: ESamp with its distillers in the model's dtype (``distiller_dtype="model"``:
  bfloat16 for a bfloat16 model; the same as ``esamp`` for a float32 one);
- ``fire``: a hot first token, then plain sampling (distiller in shadow, as the app runs it);
- ``generate`` / ``vllm-native``: transformers' own ``model.generate()`` / vLLM's own sampler
  with no ESamp processor and no trace (outside references);
- ``plain`` and ``esamp`` in the backend's other dtype (float32 / bfloat16).

Every variant is warmed up at every workload's size before anything is timed (the first run
of a size pays for allocation; on a GPU the warm-up runs all the tokens, as the first full-length
run of a size was up to 3x slower there). Machines here drift: each ratio is taken within a round
(neighbours in time), then the median over rounds; each run also reports the share of its own
wall time ESamp's work took (distiller and fusion), which no drift can change. ``--profile``
reports where each step's time goes, by part, for plain and ESamp at one workload.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from core import EsampConfig, RunConfig, SamplingConfig, encode_prompts, generate, load_model
from core.backends import installed_backends
from core.backends.hardware import describe
from core.backends.hf.loop import left_pad
from core.esamp.clock import PARTS
from core.esamp.distiller import DistillerBank, weights_dtype
from core.methods import FILTERS

from . import measured_on, read_prompts

PROMPTS = read_prompts()
WORKLOADS = {"transformers": ["1x1", "1x16", "4x16", "8x16"],
             "vllm": ["1x1", "1x16", "4x16", "8x16", "24x16", "32x16"]}
CORE_VARIANTS = ["plain", "esamp"]
EXTRA_VARIANTS = {"transformers": ["esamp-overlap", "esamp-model-dtype", "fire", "generate"],
                  "vllm": ["esamp-overlap", "esamp-model-dtype", "fire", "vllm-native"]}
NATIVE = {"transformers": "generate", "vllm": "vllm-native"}  # what a user would run instead
FILTER = "top-k 50"  # transformers' default, so ``generate`` runs as a user's would with no settings


@dataclass
class Result:
    tokens_per_s: float
    tokens_per_cpu_s: float
    distiller_share: float  # of the run's wall time, in the distiller and fusion
    peak_extra_mib: float  # memory above the level before the run (CPU: RSS; CUDA: allocated)
    parts: dict[str, float] = field(default_factory=dict)  # seconds per part of the per-step work
    steps: int = 0


class PeakMemory:
    """Peak memory while a block runs, above the level at its start (RSS polled every 20 ms on CPU)."""

    def __init__(self, cuda: bool):
        self.cuda, self.peak = cuda, 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        proc = psutil.Process(os.getpid())
        self.start = proc.memory_info().rss
        self._top, self._stop = self.start, threading.Event()

        def poll():
            while not self._stop.wait(0.02):
                self._top = max(self._top, proc.memory_info().rss)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            top = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            top = self._top
        self.peak = max(top - self.start, 0) / 2**20


def sampling(n: int, tokens: int, seed: int, filt: str = FILTER) -> SamplingConfig:
    return SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, ignore_eos=True, **FILTERS[filt])


def config_of(variant: str, n: int, tokens: int, seed: int, filt: str = FILTER) -> RunConfig:
    method = {"esamp-overlap": "esamp", "esamp-model-dtype": "esamp"}.get(variant, variant)
    esamp = EsampConfig(shadow=variant != "plain", overlap=variant == "esamp-overlap" or None,
                        distiller_dtype="model" if variant == "esamp-model-dtype" else "float32")
    return RunConfig(method=method, esamp=esamp, sampling=sampling(n, tokens, seed, filt), trace="light")


def run_variant(lm, variant: str, prompts: list[str], n: int, tokens: int, seed: int, filt: str = FILTER) -> Result:
    cuda = lm.device.type == "cuda"
    cpu = time.process_time()
    parts, share, steps = {}, 0.0, tokens
    with PeakMemory(cuda) as mem:
        if variant in ("generate", "vllm-native"):
            seconds = (hf_generate if variant == "generate" else vllm_native)(lm, prompts, n, tokens, seed, filt)
        else:
            trace = generate(lm, prompts, config_of(variant, n, tokens, seed, filt))
            assert trace.timings.new_tokens == len(prompts) * n * tokens, trace.timings
            seconds, share = trace.timings.seconds, trace.timings.distiller_seconds / trace.timings.seconds
            parts, steps = trace.timings.parts, max(len(p.loss) for p in trace.prompts) or tokens
    cpu = time.process_time() - cpu
    total = len(prompts) * n * tokens
    return Result(total / seconds, total / cpu, share, mem.peak, parts, steps)


def hf_generate(lm, prompts, n, tokens, seed, filt: str = FILTER) -> float:
    """transformers' ``model.generate()`` with the same sampling; returns seconds."""
    sc = sampling(n, tokens, seed, filt)
    input_ids, mask = left_pad(encode_prompts(lm, prompts, True, tokens), lm.tokenizer.pad_token_id, lm.device)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with lm.lock, torch.no_grad():
        out = lm.model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=sc.temperature,
                                top_k=sc.top_k, top_p=sc.top_p, num_return_sequences=n, max_new_tokens=tokens,
                                min_new_tokens=tokens, pad_token_id=lm.tokenizer.pad_token_id)
    seconds = time.perf_counter() - t0
    assert out.shape == (len(prompts) * n, input_ids.shape[1] + tokens), out.shape
    return seconds


def vllm_native(lm, prompts, n, tokens, seed, filt: str = FILTER) -> float:
    """vLLM sampling with its own filters and no ESamp processor work; returns seconds."""
    from vllm import SamplingParams

    from core.backends.vllm.loop import native

    sc = sampling(n, tokens, seed, filt)
    ids = encode_prompts(lm, prompts, True, tokens)
    params = SamplingParams(n=n, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p, max_tokens=tokens,
                            ignore_eos=True, seed=seed, detokenize=False)
    t0 = time.perf_counter()
    outs = native(lm, ids, [params] * len(ids))  # through the engine every caller shares, as a run is
    seconds = time.perf_counter() - t0
    assert sum(len(c.token_ids) for o in outs for c in o.outputs) == len(prompts) * n * tokens
    return seconds


def other_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if dtype == torch.float32 else torch.float32


def parse_workload(w: str) -> tuple[int, int]:
    """'24x16' -> (24, 16); refuses a workload the prompt set cannot run as labelled."""
    try:
        p, n = map(int, w.split("x"))
    except ValueError:
        raise ValueError(f"A workload is PROMPTSxSAMPLES such as 24x16, not {w!r}.") from None
    if not 1 <= p <= len(PROMPTS) or n < 1:
        raise ValueError(f"Workload {w} needs {p} distinct prompts; bench/prompts/open_ended.txt has "
                         f"{len(PROMPTS)}. Add prompts there or run a smaller workload.")
    return p, n


Key = tuple[str, str, str, str]  # backend, dtype, workload, variant


def plan(workloads: dict[str, list[str]], extras: Sequence[str], dtypes: dict[str, tuple[str, str]],
         variants: Sequence[str] | None = None) -> list[Key]:
    """(backend, dtype, workload, variant) in the order of one round: each backend's default dtype at
    every workload, and at each extras workload the extra variants (those of ``variants`` only, when
    given) and the other dtype."""
    out = []
    for b, ws in workloads.items():
        main, other = dtypes[b]
        for w in ws:
            out += [(b, main, w, v) for v in CORE_VARIANTS]
            if w in extras:
                out += [(b, main, w, v) for v in EXTRA_VARIANTS[b] if variants is None or v in variants]
                if other:
                    out += [(b, other, w, v) for v in CORE_VARIANTS]
    return out


def summarize(results: dict[Key, list[Result]]) -> list[dict]:
    """One row per key with medians and within-round ratios to plain (same backend, dtype, workload)."""
    rows = []
    for (b, d, w, v), runs in results.items():
        base, native = results[(b, d, w, "plain")], results.get((b, d, w, NATIVE[b]))
        rows.append({
            "backend": b, "dtype": d, "workload": w, "rows": _rows(w), "variant": v,
            "median_tokens_per_s": statistics.median(r.tokens_per_s for r in runs),
            "ratio_to_plain": statistics.median(r.tokens_per_s / p.tokens_per_s for r, p in zip(runs, base)),
            "ratio_to_native": None if native is None else
            statistics.median(r.tokens_per_s / q.tokens_per_s for r, q in zip(runs, native)),
            "cpu_ratio_to_plain": statistics.median(r.tokens_per_cpu_s / p.tokens_per_cpu_s
                                                    for r, p in zip(runs, base)),
            "distiller_share": statistics.median(r.distiller_share for r in runs),
            "peak_extra_mib": max(r.peak_extra_mib for r in runs),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | dtype | prompts × samples | variant | median tokens/s | ratio to plain | ratio to native "
             "| CPU-time ratio | distiller + fusion share | peak extra memory |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        native = "" if r.get("ratio_to_native") is None else f"{r['ratio_to_native']:.3f}"
        lines.append(f"| {r['backend']} | {r['dtype']} | {r['workload']} | {r['variant']} "
                     f"| {r['median_tokens_per_s']:.1f} | {r['ratio_to_plain']:.3f} | {native} "
                     f"| {r['cpu_ratio_to_plain']:.3f} "
                     f"| {100 * r['distiller_share']:.1f}% | {r['peak_extra_mib']:.0f} MiB |")
    return "\n".join(lines)


def scaling(rows: list[dict], dtypes: dict[str, tuple[str, str]]) -> list[dict]:
    """Per backend at its default dtype: rows -> plain and ESamp tokens/s, their ratio, ESamp's share."""
    by = {(r["backend"], r["dtype"], r["workload"], r["variant"]): r for r in rows}
    out = []
    for (b, d, w, v), r in by.items():
        if v == "esamp" and d == dtypes[b][0]:
            plain = by[(b, d, w, "plain")]
            out.append({"backend": b, "dtype": d, "workload": w, "rows": r["rows"],
                        "plain": plain["median_tokens_per_s"], "esamp": r["median_tokens_per_s"],
                        "ratio": r["ratio_to_plain"], "share": r["distiller_share"]})
    return out


def scaling_markdown(table: list[dict]) -> str:
    lines = ["| backend | dtype | rows (prompts × samples) | plain tokens/s | ESamp tokens/s | ESamp / plain "
             "| ESamp's own share |", "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['dtype']} | {r['rows']} ({r['workload']}) | {r['plain']:.1f} | {r['esamp']:.1f} "
              f"| {r['ratio']:.3f} | {100 * r['share']:.1f}% |" for r in table]
    return "\n".join(lines)


def native_markdown(rows: list[dict]) -> str:
    """Against what a user would run instead (``NATIVE``), per backend, dtype and workload that ran it."""
    by = {(r["backend"], r["dtype"], r["workload"], r["variant"]): r for r in rows}
    lines = ["| backend | dtype | prompts × samples | native | tokens/s | plain / native | ESamp / native "
             "| ESamp / plain |", "|---|---|---|---|---:|---:|---:|---:|"]
    for (b, d, w, v), r in by.items():
        if v == NATIVE[b] and (b, d, w, "esamp") in by:
            plain, esamp = by[(b, d, w, "plain")], by[(b, d, w, "esamp")]
            lines.append(f"| {b} | {d} | {w} | {v} | {r['median_tokens_per_s']:.1f} | {plain['ratio_to_native']:.3f} "
                         f"| {esamp['ratio_to_native']:.3f} | {esamp['ratio_to_plain']:.3f} |")
    return "\n".join(lines)


def report_markdown(rows: list[dict], table: list[dict], profile: dict, workload: str) -> str:
    """The report's tables: every run, ESamp against plain by size, against native (when it ran), per step."""
    text = markdown(rows) + "\n\n" + scaling_markdown(table)
    if any(r["variant"] == NATIVE[r["backend"]] for r in rows):
        text += ("\n\nAgainst what a user would run instead (medians of within-round ratios):\n\n"
                 + native_markdown(rows))
    return text + f"\n\nPer step at {workload} (ms):\n\n" + profile_markdown(profile)


def profile_markdown(profile: dict) -> str:
    lines = ["| backend | variant | ms per step | " + " | ".join(PARTS) + " | the rest (model, sampling) |",
             "|---|---|---:|" + "---:|" * (len(PARTS) + 1)]
    for (b, v), p in profile.items():
        cells = [f"{p['parts'].get(part, 0.0):.1f}" for part in PARTS]
        lines.append(f"| {b} | {v} | {p['step_ms']:.1f} | " + " | ".join(cells) + f" | {p['rest_ms']:.1f} |")
    return "\n".join(lines)


def pooled(reports: Sequence[dict], draws: int = 4000) -> list[dict]:
    """The within-round ratios to native of several reports (runs of the same command: other draws of a
    machine, other machines of a kind), pooled per (backend, dtype, workload): their count, median, a 95%
    bootstrap interval of the median (resampling rounds, seeded) and their range. One run's three rounds
    cannot tell 0.95 from 0.98 where two rounds of the same code differ by 10 points; pooled rounds can
    say how sure a median is."""
    ratios: dict[tuple, dict[str, list[float]]] = {}
    for report in reports:
        runs = report["runs"]
        for key in runs:
            b, d, w, v = key.split("/")
            if v != NATIVE[b]:
                continue
            native = [r["tokens_per_s"] for r in runs[key]]
            for name, num, den in (("plain / native", "plain", None), ("ESamp / native", "esamp", None),
                                   ("ESamp / plain", "esamp", "plain")):
                top, bottom = runs.get(f"{b}/{d}/{w}/{num}"), runs.get(f"{b}/{d}/{w}/{den}") if den else None
                if top is None or (den and bottom is None):
                    continue
                under = [r["tokens_per_s"] for r in bottom] if bottom else native
                ratios.setdefault((b, d, w), {}).setdefault(name, []).extend(
                    t["tokens_per_s"] / u for t, u in zip(top, under))
    rng = random.Random(0)  # one for every ratio in turn: the same reports give the same intervals
    return [{"backend": b, "dtype": d, "workload": w, "ratio": name, **median_interval(xs, rng, draws)}
            for (b, d, w), by_name in ratios.items() for name, xs in by_name.items()]


def median_interval(xs: Sequence[float], rng: random.Random, draws: int = 4000) -> dict:
    """Rounds' ratios pooled: their count, median, a 95% bootstrap interval of the median (``draws``
    resamplings of the rounds by ``rng``) and their range."""
    medians = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(draws))
    return {"rounds": len(xs), "median": statistics.median(xs), "low": medians[int(0.025 * draws)],
            "high": medians[int(0.975 * draws) - 1], "min": min(xs), "max": max(xs)}


def pooled_markdown(rows: list[dict]) -> str:
    lines = ["| backend | dtype | prompts × samples | ratio | rounds | median | 95% interval of the median | range |",
             "|---|---|---|---|---:|---:|---|---|"]
    lines += [f"| {r['backend']} | {r['dtype']} | {r['workload']} | {r['ratio']} | {r['rounds']} | {r['median']:.3f} "
              f"| {r['low']:.3f} to {r['high']:.3f} | {r['min']:.3f} to {r['max']:.3f} |" for r in rows]
    return "\n".join(lines)


def _rows(workload: str) -> int:
    p, n = workload.split("x")
    return int(p) * int(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--backends", default=",".join(installed_backends()))
    ap.add_argument("--workloads", help="prompts x samples, comma separated, for every backend "
                    f"(default: {WORKLOADS})")
    ap.add_argument("--extras", default="4x16",
                    help="the workloads (comma separated) that also run the extra variants and dtype (none: no extras)")
    ap.add_argument("--extra-variants", help="only these extra variants, comma separated (default: all of "
                    f"{EXTRA_VARIANTS})")
    ap.add_argument("--other-dtype", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the backend's other dtype at the extras workload")
    ap.add_argument("--profile", default="24x16", help="the workload whose per-step time is split by part "
                    "(on the backends that run it)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--filter", default=FILTER, choices=list(FILTERS),
                    help=f"every variant's filter (default: {FILTER}, transformers' default; the app's is top-p 0.9)")
    ap.add_argument("--rounds", type=int, default=1, help="full passes over every (backend, dtype, workload, variant)")
    ap.add_argument("--quick", action="store_true", help="1x2 and 2x2, 8 tokens, one round: checks the plumbing")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--render", type=Path, help="write --markdown from this earlier --json report and exit")
    ap.add_argument("--pool", type=Path, nargs="+", help="pool the ratios to native of these earlier --json "
                    "reports (write --markdown, or print) and exit")
    a = ap.parse_args(argv)
    if a.pool:
        text = pooled_markdown(pooled([json.loads(f.read_text()) for f in a.pool]))
        (a.markdown.write_text(text + "\n") if a.markdown else print(text))
        return 0
    if a.render:
        report = json.loads(a.render.read_text())
        profile = {(p["backend"], p["variant"]): p for p in report["profile"]}
        text = measured_on(report, report.get("command", "python -m bench.speed")) + report_markdown(
            report["rows"], report["scaling"], profile, report["profile_workload"])
        (a.markdown.write_text(text + "\n") if a.markdown else print(text))
        return 0
    backends = a.backends.split(",")
    workloads = {b: a.workloads.split(",") if a.workloads else WORKLOADS[b] for b in backends}
    extras = [] if a.extras == "none" else a.extras.split(",")
    variants = a.extra_variants.split(",") if a.extra_variants else None
    if a.quick:
        workloads, extras, a.profile, a.tokens, a.rounds = {b: ["1x2", "2x2"] for b in backends}, ["2x2"], "2x2", 8, 1
    try:
        for ws in workloads.values():
            for w in ws + extras:
                parse_workload(w)
    except ValueError as exc:
        ap.error(str(exc))
    models = {}
    for b in backends:
        lm = load_model(a.model, backend=b)
        main_dtype = str(lm.dtype).removeprefix("torch.")
        models[(b, main_dtype)] = lm
        if a.other_dtype:
            other = other_dtype(lm.dtype)
            models[(b, str(other).removeprefix("torch."))] = load_model(a.model, backend=b, dtype=other)
    dtypes = {b: tuple([d for (bb, d) in models if bb == b] + [""])[:2] for b in backends}
    steps = plan(workloads, extras, dtypes, variants)
    print(f"warming up {len(steps)} runs ...", file=sys.stderr, flush=True)
    # a GPU's caching allocator grows by the sizes it meets: there the warm-up runs as long as the timed runs
    warm_tokens = a.tokens if any(lm.device.type == "cuda" for lm in models.values()) else 4
    for b, d, w, v in steps:  # every variant at every size once, before anything is timed
        p, n = parse_workload(w)
        run_variant(models[(b, d)], v, PROMPTS[:p], n, warm_tokens, seed=99, filt=a.filter)
    results: dict[Key, list[Result]] = {}
    t_start = time.perf_counter()
    for r in range(a.rounds):
        for key in steps if r % 2 == 0 else steps[::-1]:  # alternate the order against drift
            b, d, w, v = key
            p, n = parse_workload(w)
            res = run_variant(models[(b, d)], v, PROMPTS[:p], n, a.tokens, seed=r, filt=a.filter)
            results.setdefault(key, []).append(res)
            print(f"round {r + 1}/{a.rounds} {b:12s} {d:8s} {w:5s} {v:13s} {res.tokens_per_s:8.1f} tokens/s "
                  f"{res.tokens_per_cpu_s:8.1f} tokens/CPU-s  distiller+fusion {100 * res.distiller_share:4.1f}%  "
                  f"+{res.peak_extra_mib:.0f} MiB", file=sys.stderr, flush=True)
    rows = summarize(results)
    profile = {}
    for (b, d, w, v), runs in results.items():  # where a step's time goes, at the profile workload
        if w == a.profile and d == dtypes[b][0] and v in CORE_VARIANTS + [NATIVE[b]]:
            res = sorted(runs, key=lambda r: r.tokens_per_s)[len(runs) // 2]  # the median run
            step_ms = 1000 * _rows(w) * a.tokens / res.tokens_per_s / res.steps
            parts = {k: 1000 * s / res.steps for k, s in res.parts.items()}
            profile[(b, v)] = {"step_ms": step_ms, "parts": parts, "rest_ms": step_ms - sum(parts.values())}
    table = scaling(rows, dtypes)
    hidden = next(iter(models.values())).hidden_size
    out = {
        "command": "python -m bench.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tokens": a.tokens, "filter": a.filter, "rounds": a.rounds, "workloads": workloads, "extras": extras,
        "profile_workload": a.profile,
        "model": next(iter(models.values())).name,
        "backends": {b: {"device": str(models[(b, dtypes[b][0])].device), "dtypes": [d for d in dtypes[b] if d]}
                     for b in backends},
        "machine": describe(),
        "distiller_bytes_per_prompt": DistillerBank(1, hidden, EsampConfig(), dtype=weights_dtype(
            EsampConfig(), next(iter(models.values())).dtype)).nbytes_per_distiller,  # the first model's
        "seconds": time.perf_counter() - t_start,
        "rows": rows, "scaling": table,
        "profile": [{"backend": b, "variant": v, **p} for (b, v), p in profile.items()],
        "runs": {"/".join(k): [vars(r) for r in v] for k, v in results.items()},
    }
    text = measured_on(out) + report_markdown(rows, table, profile, a.profile)
    print("\n" + text)
    print(f"\ndistiller weights + Adam state per prompt: {out['distiller_bytes_per_prompt'] / 2**20:.1f} MiB")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        a.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
