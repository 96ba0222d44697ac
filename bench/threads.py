"""What the number of OpenMP threads per process does when torch processes share the cores: P processes
at once, each with T threads (``OMP_NUM_THREADS``), each loading the embedded model and timing the same
plain ``generate`` (the decode loop every backend test, app and benchmark of the suite runs).

    python -m bench.threads                                   # P in 1 2, T in 1 and the machine's cores
    python -m bench.threads --json bench/results/threads.json --markdown bench/results/threads.md

Why it is here: the test suite runs several such processes at once (the test process, the apps and
servers it starts ahead) on two cores, and OpenMP's idle threads spin while they wait for each other, so
a process whose threads outnumber the cores it gets waits on threads that are not running.
tests/conftest.py sets one thread a process from what this measures.
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

import torch

from bench import publish
from core import RunConfig, SamplingConfig, generate, load_model
from core.backends.hardware import describe

PROMPT = "Describe a city in the year 3000."


def worker(n: int, tokens: int, rounds: int) -> dict:
    """In a process of its own: load, warm, then time `rounds` generates; seconds each."""
    lm = load_model()
    config = RunConfig(method="plain", sampling=SamplingConfig(n=n, max_new_tokens=tokens, seed=0))
    generate(lm, [PROMPT], replace(config, sampling=replace(config.sampling, max_new_tokens=2)))
    seconds, made = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        trace = generate(lm, [PROMPT], config)
        seconds.append(time.perf_counter() - start)
        made = sum(len(s.tokens) for s in trace.samples)
    return {"seconds": seconds, "tokens": made, "threads": torch.get_num_threads(),
            "dtype": str(lm.dtype).removeprefix("torch.")}


def at_once(processes: int, threads: int, n: int, tokens: int, rounds: int) -> list[dict]:
    """`processes` workers started together with `threads` threads each; their reports."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    argv = [sys.executable, "-m", "bench.threads", "--worker", "--n", str(n), "--tokens", str(tokens),
            "--rounds", str(rounds)]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(processes)]
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a worker exited with {proc.returncode}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--n", type=int, default=4, help="answers a generate (rows of the batch)")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timed generates in each process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.n, args.tokens, args.rounds)))
        return 0
    rows = []
    for processes in args.processes:
        for threads in args.threads:
            reports = at_once(processes, threads, args.n, args.tokens, args.rounds)
            seconds = [s for r in reports for s in r["seconds"]]
            rate = statistics.median(r["tokens"] / s for r in reports for s in r["seconds"])
            rows.append({"processes": processes, "threads": threads, "median_s": round(statistics.median(seconds), 3),
                         "tokens_per_s": round(rate, 1),
                         "torch_threads": sorted({r["threads"] for r in reports}), "dtype": reports[0]["dtype"]})
            print(rows[-1], flush=True)
    alone = min((r["median_s"] for r in rows if r["processes"] == 1), default=None)
    for row in rows:
        row["vs_best_alone"] = round(row["median_s"] / alone, 2) if alone else None
    report = {"cpu": describe(), "date": time.strftime("%Y-%m-%d"), "n": args.n, "tokens": args.tokens,
              "rounds": args.rounds, "rows": rows}
    return publish(report, args.json, args.markdown, markdown)


def markdown(r: dict) -> str:
    cpu = r["cpu"]
    lines = [f"Measured {r['date']} on {cpu['cpu']} ({cpu['cpus']} cores, {cpu['torch_cpu_capability']}), "
             f"{r['rows'][0]['dtype']}: the embedded model's plain generate ({r['n']} answers x {r['tokens']} tokens), "
             f"{r['rounds']} timed in each process, processes started together.", "",
             "| processes at once | threads each | generate s (median) | tokens/s a process | x the best alone |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {x['processes']} | {x['threads']} | {x['median_s']} | {x['tokens_per_s']} | "
              f"{x['vs_best_alone'] or '-'} |" for x in r["rows"]]
    return "\n".join(lines + [""])


if __name__ == "__main__":
    raise SystemExit(main())
