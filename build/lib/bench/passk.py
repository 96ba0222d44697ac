"""pass@k for k = 1..16 on generated arithmetic word problems, for the methods of bench.quality.

    python -m bench.passk                                # 60 problems x 16 samples, up to 48 tokens
    python -m bench.passk --quick --json /tmp/p.json     # 3 problems x 4 samples x 8 tokens

Problems come from core.tasks.arithmetic_tasks (fixed seed, integer answers); an answer is
correct when its last number equals the problem's. pass@k is the unbiased estimator
1 - C(n-c, k) / C(n, k), averaged over problems. Samples end at EOS or after --tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from core import SamplingConfig, generate, load_model
from core.tasks import arithmetic_tasks, is_correct
from viz import charts, metrics
from viz.report import write_images

from .quality import machine, methods, parse_common


def markdown(curves: dict[str, list[float]], ks=(1, 2, 4, 8, 16)) -> str:
    ks = [k for k in ks if k <= len(next(iter(curves.values())))]
    lines = ["| method | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for label, ys in curves.items():
        lines.append(f"| {label} | " + " | ".join(f"{ys[k - 1]:.3f}" for k in ks) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.passk", description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=60)
    a = parse_common(ap, argv, tokens=48, quick="3 problems x 4 samples x 8 tokens", plot="pass@k")
    if a.quick:
        a.problems, a.n, a.tokens = 3, 4, 8
    tasks = arithmetic_tasks(a.problems, seed=a.seed)
    lm = load_model(a.model, backend=a.backend)
    sampling = SamplingConfig(n=a.n, max_new_tokens=a.tokens, seed=a.seed)
    curves: dict[str, list[float]] = {}
    correct_counts: dict[str, list[int]] = {}
    t_start = time.perf_counter()
    for label, cfg in methods(sampling).items():
        trace = generate(lm, [t.prompt for t in tasks], cfg)
        correct = [sum(is_correct(s.text, task.answer) for s in trace.samples_of(p)) for p, task in enumerate(tasks)]
        correct_counts[label] = correct
        curves[label] = metrics.pass_at_k_curve(correct, a.n)
        print(f"{label:14s} pass@1 {curves[label][0]:.3f}  pass@{a.n} {curves[label][-1]:.3f}  "
              f"({trace.timings.tokens_per_s:.0f} tokens/s, {time.perf_counter() - t_start:.0f} s so far)",
              file=sys.stderr, flush=True)
    table = markdown(curves)
    print("\n" + table)
    out = {"command": "python -m bench.passk " + " ".join(argv if argv is not None else sys.argv[1:]),
           "backend": a.backend, "model": lm.name, "problems": [vars(t) for t in tasks], "n": a.n,
           "tokens": a.tokens, "seed": a.seed, "machine": machine(lm), "seconds": time.perf_counter() - t_start,
           "pass_at_k": curves, "correct_counts": correct_counts}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        a.markdown.write_text(table + "\n")
    if a.images:
        write_images({"passk": charts.pass_at_k_figure(curves)}, a.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
