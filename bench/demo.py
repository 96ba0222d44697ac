"""The default demo: how long Explore's first Generate takes, and on how many seeds it shows
ESamp's effect beyond the noise of its n answers. Picks the app's defaults by measurement.

    python -m bench.demo                                   # the app's defaults, 10 seeds, every backend
    python -m bench.demo --n 4 8 --tokens 32 48 --ladders 0,0.25,0.5,1 0,0.1,0.25,0.5,1
    python -m bench.demo --json bench/results/demo.json --markdown bench/results/demo.md

One Generate is what Explore runs: the β ladder (plain at β = 0, then ESamp at each β, with the
same seed; ``core.generate_runs``: together on vLLM, one after the other on transformers), the
perplexities, the answers' embeddings, the shared map and the bootstrap intervals. It is timed
warm (the model and embedder loaded, UMAP compiled, one tiny run before); the start-ups (the
backend's load plus a tiny run; the embedder and UMAP) are timed on their own. A seed "shows the
effect" at a β when ESamp's answers there are more diverse than plain sampling's beyond the noise:
the bootstrap interval of the difference in mean pairwise cosine distance lies above 0 (the test
behind the page's sentence).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

from bench import publish
from app.settings import DEFAULTS, esamp_of, parse_ladder
from core import RunConfig, SamplingConfig, beta_ladder, generate, generate_runs, load_model
from core.backends import installed_backends
from core.backends.hardware import describe
from core.methods import FILTERS
from core.scoring import trace_perplexities
from viz import metrics, spread
from viz.summary import diversity, ladder, split_by_run


def one_generate(lm, embedder, prompt: str, configs: list[RunConfig]) -> tuple[float, dict[str, list[float]]]:
    """Seconds for what Explore's Generate does, and for each β > 0 the bootstrap interval of its
    answers' diversity (mean pairwise cosine distance) over plain sampling's and how many more of its
    answers are broken than plain's (viz.metrics.is_degenerate): [value, low, high, more broken answers]."""
    start = time.perf_counter()
    traces = generate_runs(lm, [prompt], configs)
    perplexities = [trace_perplexities(lm, t) for t in traces]
    texts = [s.text for t in traces for s in t.samples]
    emb = spread.embed(texts, embedder)
    spread.project_2d(emb, 0)
    per_run = split_by_run(traces, emb)
    stats = [diversity(t, e, p) for t, e, p in zip(traces, per_run, perplexities)]
    seconds = time.perf_counter() - start
    rungs = ladder(traces)
    base = rungs[0.0]
    return seconds, {f"{b:g}": [*(lambda d: (d.value, d.low, d.high))(metrics.bootstrap_difference(
        per_run[base], per_run[i], "cosine_distance")), stats[i].broken - stats[base].broken]
        for b, i in rungs.items() if b > 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=None, help="default: every installed backend")
    p.add_argument("--prompts", nargs="+", default=[DEFAULTS["prompt"]])
    p.add_argument("--n", nargs="+", type=int, default=[DEFAULTS["n"]])
    p.add_argument("--tokens", nargs="+", type=int, default=[DEFAULTS["tokens"]])
    p.add_argument("--ladders", nargs="+", default=[DEFAULTS["ladder"]], help="comma-separated β values")
    p.add_argument("--warmup", type=int, default=DEFAULTS["warmup"], help="ESamp's warm-up steps (the app's default)")
    p.add_argument("--max-kl", type=float, default=DEFAULTS["max_kl"],
                   help="ESamp's bound on each token's push, nats; 0: none (the app's default)")
    p.add_argument("--words", type=int, choices=(0, 1), default=int(DEFAULTS["words"]),
                   help="1: ESamp pushes between words only (the app's default: %(default)s)")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds first-seed, first-seed + 1, ...: another draw than a benchmark's seed 0")
    p.add_argument("--filter", choices=list(FILTERS), default=None,
                   help="the candidate set (bench.frontier's names); default: the app's")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    backends = args.backends or installed_backends()
    candidates = FILTERS[args.filter] if args.filter else {k: DEFAULTS[k] for k in ("top_k", "top_p", "min_p")}
    start = time.perf_counter()
    embedder = spread.load_embedder()
    spread.project_2d(spread.embed([f"warm-up {i}" for i in range(spread.MIN_UMAP_POINTS)], embedder))
    viz_startup = time.perf_counter() - start  # the embedder's load and UMAP's compilation (numba), once a process
    print(f"embedder and UMAP: start-up {viz_startup:.1f} s", flush=True)
    rows = []
    for backend in backends:
        start = time.perf_counter()
        lm = load_model(None, backend=backend)
        generate(lm, ["Hello"], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=4)))
        startup = time.perf_counter() - start
        print(f"{backend}: start-up {startup:.1f} s", flush=True)
        for prompt, n, tokens, ladder_text in itertools.product(args.prompts, args.n, args.tokens, args.ladders):
            betas = parse_ladder(ladder_text)
            times, diffs = [], {}
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                sampling = SamplingConfig(n=n, max_new_tokens=tokens, seed=seed, **candidates)
                esamp = esamp_of(args.warmup, args.max_kl, DEFAULTS["level"], args.words)  # as the form makes it
                configs = beta_ladder(RunConfig(sampling=sampling, esamp=esamp), betas, scale_bound=True)
                seconds, by_beta = one_generate(lm, embedder, prompt, configs)
                times.append(seconds)
                for b, d in by_beta.items():
                    diffs.setdefault(b, []).append(d)
                print(f"  {backend} n={n} tokens={tokens} ladder={ladder_text} seed={seed}: {seconds:.1f} s, "
                      "β - plain: "
                      + ", ".join(f"{b}: {d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" for b, d in by_beta.items()),
                      flush=True)
            rows.append({"backend": backend, "startup_s": round(startup, 1), "prompt": prompt, "n": n,
                         "filter": filter_label(candidates), "dtype": str(lm.dtype).removeprefix("torch."),
                         "tokens": tokens, "ladder": ladder_text, "warmup": args.warmup, "max_kl": args.max_kl,
                         "between_words": bool(args.words),
                         "seeds": args.seeds, "first_seed": args.first_seed,
                         "median_s": round(statistics.median(times), 1), "max_s": round(max(times), 1),
                         "seeds_showing_effect": {b: sum(d[1] > 0 for d in ds) for b, ds in diffs.items()},
                         # and of those, the seeds where no more of ESamp's answers are broken than plain's
                         "seeds_showing_effect_unbroken": {b: sum(d[1] > 0 and d[3] <= 0 for d in ds)
                                                           for b, ds in diffs.items()},
                         "mean_difference": {b: round(statistics.mean(d[0] for d in ds), 3) for b, ds in diffs.items()},
                         "differences": diffs, "times_s": [round(t, 2) for t in times]})
            print(f"{backend} n={n} tokens={tokens} ladder={ladder_text}: median {rows[-1]['median_s']} s, "
                  "effect beyond "
                  f"noise (seeds of {args.seeds}, by β): {rows[-1]['seeds_showing_effect']}", flush=True)
        del lm
    report = {"cpu": describe(), "date": time.strftime("%Y-%m-%d"), "viz_startup_s": round(viz_startup, 1),
              "rows": rows}
    return publish(report, args.json, args.markdown, markdown)


def filter_label(candidates: dict) -> str:
    """'top-k 50', 'top-p 0.9', 'min-p 0.1' (top-k off unless named), 'none'."""
    parts = [f"top-k {candidates['top_k']}" if candidates.get("top_k") else "",
             f"top-p {candidates['top_p']:g}" if candidates.get("top_p", 1.0) < 1 else "",
             f"min-p {candidates['min_p']:g}" if candidates.get("min_p", 0.0) > 0 else ""]
    return " + ".join(p for p in parts if p) or "none"


def markdown(report: dict) -> str:
    cpu, first = report["cpu"], report["rows"][0] if report["rows"] else {"seeds": 0}
    seeds = f"{first['seeds']} seeds" + (f" ({first['first_seed']} to {first['first_seed'] + first['seeds'] - 1})"
                                         if first.get("first_seed") else "")
    lines = [f"Measured {report['date']} on {cpu['cpu']} ({cpu['cpus']} cores, {cpu['torch_cpu_capability']}): one "
             f"Explore Generate, warm, over {seeds}. Start-up "
             f"once a process: the embedder and UMAP's compilation {report['viz_startup_s']} s (the app does it in "
             "the background when it opens), the model as in the table.", "",
             "| backend | dtype | start-up s | prompt | n | tokens | candidates | ladder | warm-up | bound (nats) | "
             "push | median s | max s | seeds with ESamp more diverse than plain beyond noise (and with no more broken "
             "answers), by β | mean Δ cosine distance (β − plain) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        unbroken = r.get("seeds_showing_effect_unbroken", {})
        shown = ", ".join(f"β={b}: {k} of {r['seeds']}" + (f" ({unbroken[b]})" if b in unbroken else "")
                          for b, k in r["seeds_showing_effect"].items())
        mean = ", ".join(f"β={b}: {d:+.3f}" for b, d in r["mean_difference"].items())
        lines.append(f"| {r['backend']} | {r.get('dtype', 'float32')} | {r['startup_s']} | {r['prompt']} | "
                     f"{r['n']} | {r['tokens']} | {r.get('filter', 'top-k 50')} | {r['ladder']} | "
                     f"{r.get('warmup', 0)} | {r.get('max_kl') or 'none'} | "
                     f"{'between words' if r.get('between_words') else 'every token'} | {r['median_s']} | "
                     f"{r['max_s']} | {shown} | "
                     f"{mean} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
