"""pass@k for k = 1..16 on math word problems, for the methods of bench.quality or the frontier's.

    python -m bench.passk                                # 60 problems x 16 samples, up to 48 tokens
    python -m bench.passk --tasks svamp --methods frontier --model qwen2.5-coder-0.5b-instruct ...
    python -m bench.passk --quick --json /tmp/p.json     # 3 problems x 4 samples x 8 tokens
    python -m bench.passk --server http://gpu-box:8000 -n 64 --tasks svamp --methods frontier

Problems: ``arithmetic`` from core.tasks.arithmetic_tasks (fixed seed, integer answers), or
``svamp``, a fixed random choice (by --seed) of SVAMP's 1,000 grade-school problems (vendored in
bench/data/svamp with its MIT license). An answer is correct when its last number equals the
problem's. pass@k is the unbiased estimator 1 - C(n-c, k) / C(n, k), averaged over problems.
Samples end at EOS or after --tokens. ``--server URL`` generates through a running ESamp server
(``python -m core serve``; the backend "server", as bench.quality's ``--server``: the same runs as in
process, made there), for paper-scale models on a GPU machine.

``--methods frontier``: the app's defaults against plain sampling's temperatures and min-p: plain
at T = 0.5, 0.7 and 1 under top-p 0.9 with top-k off, min-p 0.1 at T = 1, and ESamp as the app runs
it (top-p 0.9, no warm-up, the slider's β = 1.5 with its bound and leveled push, and the ladder's
β = 1 rung with its scaled bound). A second table pairs the methods per problem: the app's default
minus each other method, pass@1 and pass@n, with a 95 % interval over problems.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import random
from dataclasses import replace
from pathlib import Path

from core import EsampConfig, RunConfig, SamplingConfig, beta_ladder, generate_runs, load_model
from core import methods as core_methods
from core.tasks import Task, arithmetic_tasks, is_correct
from viz import charts, metrics
from viz.report import write_images

from . import measured_on
from .quality import machine, methods, parse_common


SVAMP = Path(__file__).parent / "data" / "svamp" / "SVAMP.json"


def svamp_tasks(count: int, seed: int = 0) -> list[Task]:
    """``count`` of SVAMP's problems, chosen at random by ``seed`` (the same for the same seed)."""
    rows = json.loads(SVAMP.read_text(encoding="utf-8"))
    chosen = random.Random(seed).sample(rows, min(count, len(rows)))
    return [Task(f"{r['Body'].strip()} {r['Question'].strip()}", f"{float(r['Answer']):g}") for r in chosen]


TASKS = {"arithmetic": arithmetic_tasks, "svamp": svamp_tasks}


def _esamp_label(beta: float, esamp: EsampConfig) -> str:
    return (f"esamp β={beta:g}, {'leveled, ' if esamp.keep_entropy else ''}"
            f"{'between words, ' if esamp.between_words else ''}≤ {esamp.max_kl:.3g} nats")


APP_DEFAULT = _esamp_label(1.5, EsampConfig()) + " (the app's default)"
# What reports made under earlier defaults called the app's default: ``--add-to`` reads them so.
RENAMED = {"esamp β=1.5, ≤ 0.2 nats (the app's default)": "esamp β=1.5, ≤ 0.2 nats (the default until 2026-12-04)",
           "esamp β=1.5, leveled, ≤ 0.5 nats (the app's default)":
               "esamp β=1.5, leveled, ≤ 0.5 nats (the default until 2026-12-05)",
           "esamp β=1.5, leveled, ≤ 0.3 nats (the app's default)":
               "esamp β=1.5, leveled, ≤ 0.3 nats (a default of 2026-12-05, lr 4e-4)"}


def frontier_methods(sampling: SamplingConfig) -> dict[str, RunConfig]:
    """The app's candidate set (top-p 0.9, top-k off) for plain and ESamp, and min-p 0.1 (core.methods).
    ESamp's bound is EsampConfig's default (the app's): the β = 1 rung's is scaled as the app's ladder's."""
    top_p = replace(sampling, top_k=0, top_p=0.9)
    out = {f"plain T={t:g}": core_methods.plain(top_p, t, shadow=False) for t in (0.5, 0.7, 1.0)}
    out[f"min-p {core_methods.MIN_P:g}"] = core_methods.min_p(sampling, shadow=False)
    top, rung = beta_ladder(core_methods.esamp(top_p, 1.5), [1.5, 1.0], scale_bound=True)
    out[_esamp_label(1, rung.esamp)] = rung
    out[APP_DEFAULT] = top
    return out


def paired(correct_counts: dict[str, list[int]], n: int, reference: str) -> list[dict]:
    """``reference`` minus each other method, paired per problem: the mean difference of pass@1 and
    pass@n with a 95 % interval (1.96 standard errors over problems), and on how many problems
    ``reference`` solved more (pass@n: some sample right where the other had none) or fewer."""
    ref = correct_counts[reference]
    rows = []
    for label, counts in correct_counts.items():
        if label == reference:
            continue
        row = {"method": label}
        for k in (1, n):
            mean, err = metrics.mean_and_stderr([metrics.pass_at_k(n, a, k) - metrics.pass_at_k(n, b, k)
                                                 for a, b in zip(ref, counts)])
            row[f"pass@{k}"] = {"mean": mean, "low": mean - 1.96 * err, "high": mean + 1.96 * err}
        row["solved_more"] = sum(a > 0 and b == 0 for a, b in zip(ref, counts))
        row["solved_fewer"] = sum(b > 0 and a == 0 for a, b in zip(ref, counts))
        rows.append(row)
    return rows


def paired_markdown(rows: list[dict], n: int, reference: str) -> str:
    lines = [f"| {reference} minus | pass@1 (95 %) | pass@{n} (95 %) | problems solved only by it / by the other |",
             "|---|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[f'pass@{k}']['mean']:+.3f} ({r[f'pass@{k}']['low']:+.3f} to {r[f'pass@{k}']['high']:+.3f})"
                 for k in (1, n)]
        lines.append(f"| {r['method']} | {cells[0]} | {cells[1]} | {r['solved_more']} / {r['solved_fewer']} |")
    return "\n".join(lines)


METHODS = {"quality": methods, "frontier": frontier_methods}


def markdown(curves: dict[str, list[float]], ks=(1, 2, 4, 8, 16)) -> str:
    ks = [k for k in ks if k <= len(next(iter(curves.values())))]
    lines = ["| method | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for label, ys in curves.items():
        lines.append(f"| {label} | " + " | ".join(f"{ys[k - 1]:.3f}" for k in ks) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.passk", description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--tasks", choices=list(TASKS), default="arithmetic")
    ap.add_argument("--methods", choices=list(METHODS), default="quality",
                    help="quality: bench.quality's methods; frontier: the app's defaults against plain and min-p")
    ap.add_argument("--server", help="a running ESamp server's URL (python -m core serve): generate there "
                    "instead of loading --model here (the backend \"server\")")
    ap.add_argument("--add-to", type=Path, help="an earlier report (--json) of the same problems, samples, tokens "
                    "and model: run only the methods it lacks and report them beside its own (its methods' names "
                    "as RENAMED says; plain sampling's draws do not depend on what else shares the batch)")
    a = parse_common(ap, argv, tokens=48, quick="3 problems x 4 samples x 8 tokens", plot="pass@k")
    if a.quick:
        a.problems, a.n, a.tokens = 3, 4, 8
    tasks = TASKS[a.tasks](a.problems, seed=a.seed)
    earlier = json.loads(a.add_to.read_text()) if a.add_to else None
    prompts = [t.prompt for t in tasks]
    lm = load_model(a.model, backend="server", url=a.server) if a.server else load_model(a.model, backend=a.backend)
    where = machine(lm)
    sampling = SamplingConfig(n=a.n, max_new_tokens=a.tokens, seed=a.seed)
    curves: dict[str, list[float]] = {}
    correct_counts: dict[str, list[int]] = {}
    t_start = time.perf_counter()
    configs = METHODS[a.methods](sampling)
    if earlier is not None:
        check_same(earlier, a, tasks, lm.name)
        for label, counts in earlier["correct_counts"].items():
            configs.pop(RENAMED.get(label, label), None)
    # together: on transformers the methods of one shape decode in one batch (bench.ladder)
    traces = generate_runs(lm, prompts, list(configs.values())) if configs else []
    answers = {label: [[s.text for s in trace.samples_of(p)] for p in range(len(tasks))]
               for label, trace in zip(configs, traces)}
    if earlier is not None:
        correct_counts.update({RENAMED.get(k, k): v for k, v in earlier["correct_counts"].items()})
    for label, texts in answers.items():
        correct_counts[label] = [sum(is_correct(t, task.answer) for t in ts) for ts, task in zip(texts, tasks)]
    for label, correct in correct_counts.items():
        curves[label] = metrics.pass_at_k_curve(correct, a.n)
        print(f"{label:22s} pass@1 {curves[label][0]:.3f}  pass@{a.n} {curves[label][-1]:.3f}  "
              f"({time.perf_counter() - t_start:.0f} s so far)", file=sys.stderr, flush=True)
    table = markdown(curves)
    pairs = paired(correct_counts, a.n, APP_DEFAULT) if APP_DEFAULT in correct_counts else []
    if pairs:
        table += "\n\n" + paired_markdown(pairs, a.n, APP_DEFAULT)
    print("\n" + table)
    out = {"command": "python -m bench.passk " + " ".join(argv if argv is not None else sys.argv[1:]),
           "backend": lm.backend, "model": lm.name,
           "tasks": a.tasks, "problems": [vars(t) for t in tasks], "n": a.n,
           "tokens": a.tokens, "seed": a.seed, "machine": where, "seconds": time.perf_counter() - t_start,
           "pass_at_k": curves, "correct_counts": correct_counts, "paired": pairs}
    if earlier is not None:  # where each method's numbers were made
        out["added"] = [*earlier.get("added", []), {"methods": list(answers), "command": out["command"],
                                                    "machine": where, "seconds": out["seconds"]}]
        out.update({k: earlier[k] for k in ("command", "machine", "seconds")})
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        added = "".join(f"{', '.join(x['methods'])}: " + measured_on(x) for x in out.get("added", []))
        a.markdown.write_text(measured_on(out) + added + table + "\n")
    if a.images:
        name = a.json.stem if a.json else "passk"  # beside its JSON: one run's plot never overwrites another's
        write_images({name: charts.pass_at_k_figure(curves)}, a.images)
    return 0


def check_same(earlier: dict, a: argparse.Namespace, tasks: list[Task], model: str | None) -> None:
    """An earlier report ``--add-to`` extends must be of the same problems, samples, tokens, seed and model."""
    now = {"tasks": a.tasks, "problems": [vars(t) for t in tasks], "n": a.n, "tokens": a.tokens, "seed": a.seed}
    differ = [k for k, v in now.items() if earlier.get(k) != v]
    if model and model not in earlier.get("model", ""):
        differ.append("model")
    if differ:
        raise SystemExit(f"--add-to {a.add_to}: its {', '.join(differ)} differ from this run's.")


if __name__ == "__main__":
    sys.exit(main())
