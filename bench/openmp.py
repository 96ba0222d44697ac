"""What kept OpenMP teams cost the in-process vLLM engine, whose driver thread computes every step
while the caller waits: the same runs (vLLM's own sampling, ESamp, and ESamp with its update in a
worker thread, ``overlap``; all top-k 50, EOS ignored, the light trace) in fresh processes that
alternate ``ESAMP_RELEASE_OMP=1`` (the default: the caller lets its team go before it hands work over,
and the update's worker thread after each update; ``core.openmp``) and ``ESAMP_RELEASE_OMP=0``; each
process loads the model (its loading thread's team is one kept), warms up (the overlap run's worker
then holds the other), then times each run ``--repeats`` times.

    python -m bench.openmp                                    # 4 prompts x 16 samples x 32 tokens, 2 pairs
    python -m bench.openmp --pairs 1 --prompts 1 --samples 2 --tokens 2 --repeats 1   # the plumbing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from core import EsampConfig, RunConfig, SamplingConfig, encode_prompts, generate, load_model
from core import openmp as runtime

from . import alternate, measured_on, read_prompts
from .quality import machine, write_report

RUNS = ("vllm-native", "esamp", "esamp-overlap")


def child(a: argparse.Namespace) -> dict:
    """This process's runs: tokens/s of each, in the order run; vLLM's own sampling and ESamp first
    (``before``) while no thread but the caller's has computed, then all three (``after``) once the
    overlap run's worker thread has run its updates."""
    from vllm import SamplingParams

    from core.backends.vllm.loop import native

    lm = load_model(backend="vllm")
    prompts = read_prompts()[:a.prompts]
    ids = encode_prompts(lm, prompts, True, a.tokens)
    params = [SamplingParams(n=a.samples, top_k=50, max_tokens=a.tokens, ignore_eos=True, seed=i, detokenize=False)
              for i in range(len(prompts))]
    config = RunConfig(trace="light", esamp=EsampConfig(beta=1.0),
                       sampling=SamplingConfig(n=a.samples, max_new_tokens=a.tokens, top_k=50, top_p=1.0,
                                               ignore_eos=True, seed=0))
    overlap = replace(config, esamp=replace(config.esamp, overlap=True))
    runs = {"vllm-native": lambda: native(lm, ids, params), "esamp": lambda: generate(lm, prompts, config),
            "esamp-overlap": lambda: generate(lm, prompts, overlap)}
    tokens = len(prompts) * a.samples * a.tokens

    def timed(names: tuple[str, ...]) -> dict[str, list[float]]:
        for name in names:
            runs[name]()  # warm-up
        out: dict = {name: [] for name in names}
        for _ in range(a.repeats):
            for name in names:
                t0 = time.perf_counter()
                runs[name]()
                out[name].append(tokens / (time.perf_counter() - t0))
        return out

    return {"machine": machine(lm), "before": timed(RUNS[:2]), "after": timed(RUNS)}


def markdown(report: dict) -> str:
    lines = ["| run | OpenMP teams of idle threads | processes | median tokens/s | released ÷ kept |",
             "|---|---|---:|---:|---:|"]
    count = sum(p["release"] for p in report["processes"])
    for name in RUNS:
        med = {s: _median(report, s, "after", name) for s in (True, False)}
        for s in (False, True):
            ratio = f"{med[True] / med[False]:.2f}" if s else ""
            lines.append(f"| {name} | {'let go' if s else 'kept'} | {count} | {med[s]:.0f} | {ratio} |")
    lines += ["", "| run | OpenMP teams of idle threads | before the first update in a worker thread (tokens/s) "
              "| after | after ÷ before |", "|---|---|---:|---:|---:|"]
    for name in RUNS[:2]:
        for s in (False, True):
            before, after = (_median(report, s, when, name) for when in ("before", "after"))
            teams = "let go" if s else "kept"
            lines.append(f"| {name} | {teams} | {before:.0f} | {after:.0f} | {after / before:.2f} |")
    return "\n".join(lines) + "\n"


def _median(report: dict, release: bool, when: str, name: str) -> float:
    return statistics.median(x for p in report["processes"] if p["release"] == release for x in p[when][name])


def spawn(release: bool, shape: list[str]) -> dict:
    """One child process's runs (``child``), its OpenMP team let go or kept."""
    env = {**os.environ, runtime.ENV: "1" if release else "0"}
    done = subprocess.run([sys.executable, "-m", "bench.openmp", "--child", *shape], env=env,
                          capture_output=True, text=True, check=True)
    return result_of(done.stdout)


def result_of(output: str) -> dict:
    """A child's runs, from what it printed (``--child``)."""
    return json.loads(output.rsplit("RESULT ", 1)[1])


def main(argv=None, spawn=spawn) -> int:
    """``spawn``: how a child's runs are had (tests: in this process, on its shared engine)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2, help="processes each way, alternating")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a)))
        return 0
    shape = ["--prompts", str(a.prompts), "--samples", str(a.samples), "--tokens", str(a.tokens),
             "--repeats", str(a.repeats)]
    report = alternate("bench.openmp", argv, a.pairs, (False, True), lambda release: spawn(release, shape), "release",
                       lambda release, result: f"{'let go' if release else 'kept  '}  " + "  ".join(
                           f"{k} {statistics.median(result['after'][k]):.0f} tokens/s" for k in RUNS))
    write_report(a, report, measured_on(report) + markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
