"""What the memory allocator costs the in-process vLLM engine on a CPU: the same runs (vLLM's own
sampling, plain sampling through ESamp's processor, and ESamp; Explore's default sampling, top-p 0.9,
EOS ignored, the light trace) in fresh processes that alternate glibc's malloc (as this project sets
it, ``core.backends.hardware.keep_freed_memory``) and TCMalloc preloaded (``LD_PRELOAD``; vLLM's own
advice on CPUs, whose wheel on PyPI does not bundle it). glibc serves a block over 32 MB with fresh
pages from the OS every time, and vLLM's logits at a class's 512 rows are 50 to 100 MB a step.

    python -m bench.allocator                        # 4x16 and 32x16 (512 rows), 32 tokens, 2 pairs
    python -m bench.allocator --pairs 1 --shapes 1x2 --tokens 2 --repeats 1   # the plumbing
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from core import EsampConfig, RunConfig, SamplingConfig, encode_prompts, generate, load_model

from . import alternate, measured_on, read_prompts
from .quality import machine, write_report

RUNS = ("vllm-native", "plain", "esamp")
ALLOCATORS = ("glibc", "tcmalloc")


def tcmalloc() -> str | None:
    """The name of TCMalloc's library where the dynamic linker finds one (what ``LD_PRELOAD`` takes), or None."""
    return ctypes.util.find_library("tcmalloc_minimal")


def child(a: argparse.Namespace) -> dict:
    """This process's runs: per shape and run, tokens/s of each repeat, and the minor page faults and
    kernel CPU seconds of the last."""
    from vllm import SamplingParams

    from core.backends.vllm.loop import native

    lm = load_model(backend="vllm")
    out: dict = {"machine": machine(lm), "preloaded": os.environ.get("LD_PRELOAD", ""), "shapes": {}}
    for shape in a.shapes.split(","):
        prompts_n, samples = (int(x) for x in shape.split("x"))
        prompts = (read_prompts() * prompts_n)[:prompts_n]
        ids = encode_prompts(lm, prompts, True, a.tokens)
        params = [SamplingParams(n=samples, top_p=0.9, max_tokens=a.tokens, ignore_eos=True, seed=i, detokenize=False)
                  for i in range(len(prompts))]
        sampling = SamplingConfig(n=samples, max_new_tokens=a.tokens, top_k=0, top_p=0.9, ignore_eos=True, seed=0)
        esamp = RunConfig(trace="light", sampling=sampling)
        plain = RunConfig(method="plain", trace="light", sampling=sampling, esamp=EsampConfig(shadow=False))
        runs = {"vllm-native": lambda: native(lm, ids, params), "plain": lambda: generate(lm, prompts, plain),
                "esamp": lambda: generate(lm, prompts, esamp)}
        tokens = len(prompts) * samples * a.tokens
        got: dict = {name: {"tokens_per_s": []} for name in RUNS}
        for name in RUNS:
            runs[name]()  # warm-up: an engine's first run of a shape pays for its allocations
        for _ in range(a.repeats):
            for name in RUNS:
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                runs[name]()
                seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
                got[name]["tokens_per_s"].append(tokens / seconds)
                got[name]["page_faults"] = r1.ru_minflt - r0.ru_minflt
                got[name]["system_s"] = r1.ru_stime - r0.ru_stime
        out["shapes"][shape] = got
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def spawn(allocator: str, argv: list[str]) -> dict:
    """One child process's runs (``child``) with ``allocator``."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "tcmalloc":
        env["LD_PRELOAD"] = str(tcmalloc())
    done = subprocess.run([sys.executable, "-m", "bench.allocator", "--child", *argv], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.rsplit("RESULT ", 1)[1])


def markdown(report: dict) -> str:
    lines = ["| prompts × samples | run | allocator | processes | median tokens/s | page faults a run | "
             "kernel CPU s a run | TCMalloc ÷ glibc | ÷ vLLM native, same allocator |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for shape in report["processes"][0]["shapes"]:
        med = {(al, name): _median(report, al, shape, name) for al in ALLOCATORS for name in RUNS}
        for name in RUNS:
            for al in ALLOCATORS:
                ps = [p["shapes"][shape][name] for p in report["processes"] if p["allocator"] == al]
                gain = f"{med['tcmalloc', name] / med['glibc', name]:.3f}" if al == "tcmalloc" else ""
                native = f"{med[al, name] / med[al, 'vllm-native']:.3f}" if name != "vllm-native" else ""
                lines.append(f"| {shape} | {name} | {al} | {len(ps)} | {med[al, name]:.0f} | "
                             f"{statistics.median(p['page_faults'] for p in ps):,.0f} | "
                             f"{statistics.median(p['system_s'] for p in ps):.2f} | {gain} | {native} |")
    peaks = {al: [p["peak_rss_mb"] for p in report["processes"] if p["allocator"] == al and "peak_rss_mb" in p]
             for al in ALLOCATORS}
    if all(peaks.values()):
        lines += ["", "Peak memory of a process (MB, median): " + ", ".join(
            f"{al} {statistics.median(v):,.0f}" for al, v in peaks.items()) + "."]
    return "\n".join(lines) + "\n"


def _median(report: dict, allocator: str, shape: str, name: str) -> float:
    return statistics.median(x for p in report["processes"] if p["allocator"] == allocator
                             for x in p["shapes"][shape][name]["tokens_per_s"])


def main(argv=None, spawn=spawn) -> int:
    """``spawn``: how a child's runs are had (tests: in this process)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2, help="processes each way, alternating")
    ap.add_argument("--shapes", default="4x16,32x16", help="prompts x samples, comma-separated")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs of each after its warm-up")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a)))
        return 0
    if tcmalloc() is None:
        ap.error("no TCMalloc here to compare with (Debian: apt install libtcmalloc-minimal4)")
    args = ["--shapes", a.shapes, "--tokens", str(a.tokens), "--repeats", str(a.repeats)]
    report = alternate("bench.allocator", argv, a.pairs, ALLOCATORS, lambda allocator: spawn(allocator, args),
                       "allocator", lambda allocator, result: f"{allocator:8s}  " + "  ".join(
                           f"{shape} {k} {statistics.median(r[k]['tokens_per_s']):.0f}"
                           for shape, r in result["shapes"].items() for k in RUNS))
    write_report(a, report, measured_on(report) + markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
