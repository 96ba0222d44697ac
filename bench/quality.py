"""Diversity and fluency of ESamp against plain sampling, min-p and FIRE on open-ended prompts.

    python -m bench.quality                                 # 24 prompts x 16 samples x 128 tokens
    python -m bench.quality --quick --json /tmp/q.json      # 2 prompts x 3 samples x 8 tokens
    python -m bench.quality --server http://gpu-box:8000    # generated there (python -m core serve), scored here

For each method, the n answers to each prompt are embedded (all-MiniLM-L6-v2) and scored:
mean pairwise cosine distance and Vendi score (semantic diversity), distinct-2 and self-BLEU
(lexical), and
the mean perplexity of the answers under the base model at T=1 (fluency). Each metric is a
mean over prompts with its standard error. The prompts are in bench/prompts/open_ended.txt.
Runs on vLLM when it is installed (several times faster here), else on transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from core import RunConfig, SamplingConfig, generate, load_model
from core.methods import compared
from core.backends import installed_backends
from core.backends.hardware import describe
from core.scoring import trace_perplexities
from viz import charts, spread
from viz.report import write_images
from viz.summary import PromptScores, cross_out_broken, prompt_scores, sweep_point

from . import measured_on, read_prompts


def methods(sampling: SamplingConfig) -> dict[str, RunConfig]:
    """The compared methods (core.methods), all from the same sampling settings (T=1, top-k 50 unless
    named); the baselines without a distiller: nothing here reads their novelty."""
    return compared(sampling, betas=(0.1, 0.25, 0.5, 1.0), temperatures=(0.7, 1.0, 1.3), noise_betas=(0.25, 0.5),
                    shadow=False)


def default_backend() -> str:
    return installed_backends()[-1]  # vLLM when installed


def score(trace, perplexities: list[float], embedder) -> dict:
    """Per-prompt metrics of one run, and their mean and standard error over prompts."""
    scores = prompt_scores(trace, spread.embed(trace.texts(), embedder), perplexities)
    return {"summary": scores.summary(), "per_prompt": asdict(scores)}


def markdown(results: dict[str, dict]) -> str:
    lines = ["| method | cosine distance ↑ | Vendi ↑ | distinct-2 ↑ | perplexity ↓ | tokens/s |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        s = r["summary"]
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['se']:.3f}" for k in ("cosine_distance", "vendi", "distinct_2")]
        cells.append(f"{s['perplexity']['mean']:.2f} ± {s['perplexity']['se']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def tradeoff_figure(results: dict[str, dict]):
    """Diversity against perplexity, one line per method family, from the results (or their JSON)."""
    points = [sweep_point(RunConfig.from_dict(r["config"]), PromptScores(**r["per_prompt"])) for r in results.values()]
    return charts.sweep_figure(cross_out_broken(points))  # runs that break more than plain's, crossed out


def machine(lm) -> dict:
    """Where a figure was measured: the CPU (and GPU), and the model's device and dtype; for a model on
    a server (backend "server"), the server and its device and dtype (its CPU is not known here)."""
    where = {"server": lm.url} if lm.backend == "server" else describe()
    return {**where, "device": str(lm.device), "dtype": str(lm.dtype).removeprefix("torch.")}


def write_report(a: argparse.Namespace, report: dict, table: str) -> None:
    """Print a benchmark's table; write its JSON to ``a.json`` and the table to ``a.markdown`` if given."""
    print(table)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    if a.markdown:
        a.markdown.write_text(table)


def parse_common(ap: argparse.ArgumentParser, argv, tokens: int, quick: str, plot: str) -> argparse.Namespace:
    """The options bench.quality and bench.passk share, then parse."""
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--backend", default=default_backend())
    ap.add_argument("-n", type=int, default=16, help="samples per prompt")
    ap.add_argument("--tokens", type=int, default=tokens, help="most new tokens per sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help=f"{quick}: checks the plumbing")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--images", type=Path, help=f"folder for the {plot} plot (PNG, SVG)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=24, help="how many of the stored prompts")
    ap.add_argument("--server", help="a running ESamp server's URL (python -m core serve): generate there, with "
                                     "every method and every token's signals (ESamp's routes), score here")
    a = parse_common(ap, argv, tokens=128, quick="2 prompts x 3 samples x 8 tokens", plot="diversity-vs-perplexity")
    if a.quick:
        a.prompts, a.n, a.tokens = 2, 3, 8
    prompts = read_prompts()[:a.prompts]
    lm = load_model(a.model, backend="server", url=a.server) if a.server else load_model(a.model, backend=a.backend)
    embedder = spread.load_embedder()
    sampling = SamplingConfig(n=a.n, max_new_tokens=a.tokens, seed=a.seed)
    results: dict[str, dict] = {}
    t_start = time.perf_counter()
    for label, cfg in methods(sampling).items():
        trace = generate(lm, prompts, cfg)
        ppl = trace_perplexities(lm, trace)
        results[label] = {"config": cfg.to_dict(), "tokens_per_s": trace.timings.tokens_per_s,
                          "eos_share": sum(s.finish_reason == "eos" for s in trace.samples) / len(trace.samples),
                          **score(trace, ppl, embedder)}
        s = results[label]["summary"]
        print(f"{label:14s} cos-dist {s['cosine_distance']['mean']:.3f}  vendi {s['vendi']['mean']:.2f}  "
              f"distinct-2 {s['distinct_2']['mean']:.3f}  ppl {s['perplexity']['mean']:.2f}  "
              f"({trace.timings.tokens_per_s:.0f} tokens/s, {time.perf_counter() - t_start:.0f} s so far)",
              file=sys.stderr, flush=True)
    table = markdown(results)
    print("\n" + table)
    out = {"command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
           "backend": lm.backend, "model": lm.name, "prompts": prompts, "n": a.n, "tokens": a.tokens,
           "seed": a.seed, "machine": machine(lm), "seconds": time.perf_counter() - t_start, "methods": results}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    if a.markdown:
        a.markdown.write_text(measured_on(out) + table + "\n")
    if a.images:
        write_images({"quality-diversity-vs-perplexity": tradeoff_figure(results)}, a.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
