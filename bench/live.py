"""What the live view costs a run: Explore's default Generate (its ladder at its defaults) with a
progress callback that takes the answers so far at every step, as the app's live view does, beside the
same Generate with none (no answers are decoded then), alternating, on each installed backend.

    python -m bench.live                                   # every installed backend, 5 pairs each
    python -m bench.live --json bench/results/live.json --markdown bench/results/live.md

The two of a pair run the same seed, so the same tokens; the ratio is live over without, per pair, and
its median is reported (a ratio per pair: the machine's drift moves both alike).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench import publish
from app.settings import DEFAULTS, parse_ladder
from core import EsampConfig, RunConfig, SamplingConfig, beta_ladder, generate, generate_runs, load_model
from core.backends import installed_backends
from core.backends.hardware import describe


def default_runs(n: int, tokens: int, seed: int) -> list[RunConfig]:
    """Explore's default Generate: its ladder with its candidates, warm-up and bound."""
    sampling = SamplingConfig(n=n, max_new_tokens=tokens, seed=seed,
                              **{k: DEFAULTS[k] for k in ("top_k", "top_p", "min_p")})
    esamp = EsampConfig(warmup_steps=DEFAULTS["warmup"], max_kl=DEFAULTS["max_kl"] or None)
    return beta_ladder(RunConfig(sampling=sampling, esamp=esamp), parse_ladder(DEFAULTS["ladder"]), scale_bound=True)


def timed(lm, configs: list[RunConfig], live: bool) -> tuple[float, int]:
    """Seconds for the Generate, and how many progress reports carried answers (0 without the live view)."""
    seen = []

    def progress(p) -> None:
        if p.answers:
            seen.append(sum(len(a) for a in p.answers))  # what the page reads: every row's pieces so far

    start = time.perf_counter()
    generate_runs(lm, [DEFAULTS["prompt"]], configs, progress=progress if live else None)
    return time.perf_counter() - start, len(seen)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=None, help="default: every installed backend")
    p.add_argument("--n", type=int, default=DEFAULTS["n"])
    p.add_argument("--tokens", type=int, default=DEFAULTS["tokens"])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    rows = []
    for backend in args.backends or installed_backends():
        lm = load_model(None, backend=backend)
        generate(lm, ["Hello"], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=4)))  # warm
        pairs = []
        for seed in range(args.pairs):
            configs = default_runs(args.n, args.tokens, seed)
            order = (False, True) if seed % 2 else (True, False)  # which goes first alternates too
            got = {live: timed(lm, configs, live) for live in order}
            if not got[True][1]:
                raise RuntimeError(f"{backend}: no progress report carried answers")
            pairs.append((got[False][0], got[True][0]))
            print(f"{backend} seed {seed}: without {got[False][0]:.2f} s, live {got[True][0]:.2f} s "
                  f"({got[True][1]} reports with answers)", flush=True)
        rows.append({"backend": backend, "dtype": str(lm.dtype).removeprefix("torch."), "n": args.n,
                     "tokens": args.tokens, "runs": len(configs), "pairs": len(pairs),
                     "without_s": round(statistics.median(a for a, _ in pairs), 2),
                     "live_s": round(statistics.median(b for _, b in pairs), 2),
                     "ratio": round(statistics.median(b / a for a, b in pairs), 3),
                     "ratios": [round(b / a, 3) for a, b in pairs]})
        del lm
    report = {"cpu": describe(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    return publish(report, args.json, args.markdown, markdown)


def markdown(report: dict) -> str:
    cpu = report["cpu"]
    lines = [f"Measured {report['date']} on {cpu['cpu']} ({cpu['cpus']} cores, {cpu['torch_cpu_capability']}): "
             "Explore's default Generate with the live view's progress reports and without, in pairs.", "",
             "| backend | dtype | runs × n × tokens | pairs | without s (median) | live s (median) | "
             "live ÷ without (median of pairs) | each pair |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['backend']} | {r['dtype']} | {r['runs']} × {r['n']} × {r['tokens']} | {r['pairs']} | "
                     f"{r['without_s']} | {r['live_s']} | {r['ratio']} | {', '.join(map(str, r['ratios']))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
