"""Speed of plain sampling, ESamp and FIRE on each installed backend, rounds interleaved in one process.

    python -m bench.speed                          # every backend, workloads 1x1 1x16 4x16 8x16, 128 tokens
    python -m bench.speed --backends transformers --workloads 4x16 --rounds 3
    python -m bench.speed --quick --json out.json  # a tiny run (tests check the report's structure)

Variants, on the same prompts and sampling (T=1, top-k 50, EOS ignored so every run does the
same work):
- ``plain``: our engine with no distiller at all (shadow off): the baseline of each ratio;
- ``esamp``: beta 0.25, one distiller per prompt;
- ``fire``: a hot first token, then plain sampling (distiller in shadow, as the app runs it);
- ``generate``: transformers' own ``model.generate()`` with the same sampling (outside reference);
- ``vllm-native``: vLLM's own sampler with no ESamp processor and no trace (outside reference).

The extra variants (fire and the references) run on the ``--extras`` workload only, to keep the
full benchmark under 30 minutes on two cores (one round; ``--rounds 3`` for steadier ratios).
Machines here are noisy: every ratio is taken within a round (neighbours in time), then the
median over rounds; each run also reports the share of its own time ESamp's work took, which
no drift of the machine can change.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model
from core.config import FireConfig
from core.esamp.distiller import DistillerBank
from core import encode_prompts
from core.backends.hf.loop import left_pad

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
WORKLOADS = ["1x1", "1x16", "4x16", "8x16"]
CORE_VARIANTS = ["plain", "esamp"]
EXTRA_VARIANTS = {"transformers": ["fire", "generate"], "vllm": ["fire", "vllm-native"]}


@dataclass
class Result:
    tokens_per_s: float
    tokens_per_cpu_s: float
    distiller_share: float  # of the run's wall time, in the distiller and fusion
    peak_extra_mib: float  # memory above the level before the run (CPU: RSS; CUDA: allocated)


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


def sampling(n: int, tokens: int, seed: int) -> SamplingConfig:
    return SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, ignore_eos=True)


def run_variant(lm, variant: str, prompts: list[str], n: int, tokens: int, seed: int) -> Result:
    cuda = lm.device.type == "cuda"
    cpu = time.process_time()
    with PeakMemory(cuda) as mem:
        if variant in ("generate", "vllm-native"):
            seconds = (hf_generate if variant == "generate" else vllm_native)(lm, prompts, n, tokens, seed)
            share = 0.0
        else:
            cfg = RunConfig(method=variant, esamp=EsampConfig(shadow=variant != "plain"),
                            sampling=sampling(n, tokens, seed), fire=FireConfig())
            trace = generate(lm, prompts, cfg)
            assert trace.timings.new_tokens == len(prompts) * n * tokens, trace.timings
            seconds, share = trace.timings.seconds, trace.timings.distiller_seconds / trace.timings.seconds
    cpu = time.process_time() - cpu
    total = len(prompts) * n * tokens
    return Result(total / seconds, total / cpu, share, mem.peak)


def hf_generate(lm, prompts, n, tokens, seed) -> float:
    """transformers' ``model.generate()`` with the engine's default sampling; returns seconds."""
    sc = sampling(n, tokens, seed)
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


def vllm_native(lm, prompts, n, tokens, seed) -> float:
    """vLLM sampling with its own filters and no ESamp processor work; returns seconds."""
    from vllm import SamplingParams

    sc = sampling(n, tokens, seed)
    ids = encode_prompts(lm, prompts, True, tokens)
    params = SamplingParams(n=n, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p, max_tokens=tokens,
                            ignore_eos=True, seed=seed, detokenize=False)
    t0 = time.perf_counter()
    with lm.lock:
        outs = lm.llm.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    assert sum(len(c.token_ids) for o in outs for c in o.outputs) == len(prompts) * n * tokens
    return seconds


def installed_backends() -> list[str]:
    return ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])


def plan(backends, workloads, extras) -> list[tuple[str, str, str]]:
    """(backend, workload, variant) in the order of one round."""
    out = []
    for w in workloads:
        for b in backends:
            variants = CORE_VARIANTS + (EXTRA_VARIANTS[b] if w == extras else [])
            out += [(b, w, v) for v in variants]
    return out


def summarize(results: dict, backends, workloads) -> list[dict]:
    """One row per (backend, workload, variant) with medians and within-round ratios."""
    rows = []
    for (b, w, v), runs in results.items():
        base = results.get((b, w, "plain"))
        tf_plain = results.get(("transformers", w, "plain"))
        row = {
            "backend": b, "workload": w, "rows": _rows(w), "variant": v,
            "median_tokens_per_s": statistics.median(r.tokens_per_s for r in runs),
            "ratio_to_plain": statistics.median(r.tokens_per_s / p.tokens_per_s for r, p in zip(runs, base)),
            "cpu_ratio_to_plain": statistics.median(r.tokens_per_cpu_s / p.tokens_per_cpu_s
                                                    for r, p in zip(runs, base)),
            "distiller_share": statistics.median(r.distiller_share for r in runs),
            "peak_extra_mib": max(r.peak_extra_mib for r in runs),
        }
        if tf_plain and b != "transformers" and v == "plain":
            row["ratio_to_transformers_plain"] = statistics.median(
                r.tokens_per_s / p.tokens_per_s for r, p in zip(runs, tf_plain))
        rows.append(row)
    order = {(b, w): i for i, (b, w) in enumerate((b, w) for w in workloads for b in backends)}
    return sorted(rows, key=lambda r: order[(r["backend"], r["workload"])])


def markdown(rows: list[dict]) -> str:
    lines = ["| backend | prompts x samples | variant | median tokens/s | ratio to plain | CPU-time ratio "
             "| distiller + fusion share | peak extra memory |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        extra = f" (vLLM/transformers plain: {r['ratio_to_transformers_plain']:.2f})" \
            if "ratio_to_transformers_plain" in r else ""
        lines.append(f"| {r['backend']} | {r['workload']} | {r['variant']}{extra} | {r['median_tokens_per_s']:.1f} "
                     f"| {r['ratio_to_plain']:.3f} | {r['cpu_ratio_to_plain']:.3f} "
                     f"| {100 * r['distiller_share']:.1f}% | {r['peak_extra_mib']:.0f} MiB |")
    return "\n".join(lines)


def _rows(workload: str) -> int:
    p, n = workload.split("x")
    return int(p) * int(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--backends", default=",".join(installed_backends()))
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="prompts x samples, comma separated")
    ap.add_argument("--extras", default="4x16", help="the workload that also runs fire and the references")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1,
                    help="full passes over every (backend, workload, variant); one takes ~22 min on 2 CPU cores")
    ap.add_argument("--quick", action="store_true", help="1x2 and 2x2, 8 tokens, one round: checks the plumbing")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.workloads, a.extras, a.tokens, a.rounds = "1x2,2x2", "2x2", 8, 1
    backends, workloads = a.backends.split(","), a.workloads.split(",")
    models = {b: load_model(a.model, backend=b) for b in backends}
    for b, lm in models.items():  # warm-up: first calls allocate and build kernels
        run_variant(lm, "esamp", PROMPTS[:1], 2, 4, 0)
    results: dict[tuple[str, str, str], list[Result]] = {}
    steps = plan(backends, workloads, a.extras)
    t_start = time.perf_counter()
    for r in range(a.rounds):
        for b, w, v in steps if r % 2 == 0 else steps[::-1]:  # alternate the order against drift
            p, n = map(int, w.split("x"))
            res = run_variant(models[b], v, PROMPTS[:p], n, a.tokens, seed=r)
            results.setdefault((b, w, v), []).append(res)
            print(f"round {r + 1}/{a.rounds} {b:12s} {w:5s} {v:12s} {res.tokens_per_s:8.1f} tokens/s "
                  f"{res.tokens_per_cpu_s:8.1f} tokens/CPU-s  distiller+fusion {100 * res.distiller_share:4.1f}%  "
                  f"+{res.peak_extra_mib:.0f} MiB", file=sys.stderr, flush=True)
    rows = summarize(results, backends, workloads)
    hidden = next(iter(models.values())).hidden_size
    out = {
        "command": "python -m bench.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tokens": a.tokens, "rounds": a.rounds, "workloads": workloads, "extras": a.extras,
        "model": next(iter(models.values())).name,
        "backends": {b: {"device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch.")}
                     for b, lm in models.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "distiller_bytes_per_prompt": DistillerBank(1, hidden, EsampConfig()).nbytes_per_distiller,
        "seconds": time.perf_counter() - t_start,
        "rows": rows,
        "runs": {"/".join(k): [vars(r) for r in v] for k, v in results.items()},
    }
    table = markdown(rows)
    print("\n" + table)
    print(f"\ndistiller weights + Adam state per prompt: {out['distiller_bytes_per_prompt'] / 2**20:.1f} MiB")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        a.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
