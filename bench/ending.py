"""Does ESamp end answers sooner, and how much of its measured diversity is that?

    python -m bench.ending --json bench/results/ending-128.json --markdown bench/results/ending-128.md
    python -m bench.ending --quick --json /tmp/e.json     # 2 prompts x 4 samples x 8 tokens: the plumbing

The app's first Generate at a longer length (its sampling settings, its top rung of ESamp, 24 stored
prompts x 16 answers x 128 tokens by default) beside plain sampling at the same temperature, at a
higher one (whose answers are about as diverse), and ESamp's noise ablation (the same push with
Gaussian noise of the error's norm in place of the error: what any push of that size does). For each:
the share of answers the model ended (end-of-sequence before the limit), their mean length in tokens,
and diversity (the mean pairwise cosine distance of a prompt's answers, as everywhere here).

Shorter answers share less text, so ending sooner could by itself read as diversity. The control:
plain sampling's own answers **cut like ESamp's** (``cut_like``: within each prompt, each of plain's
answers is paired with one of ESamp's at random and cut to that answer's length where it is shorter),
so that plain's lengths follow ESamp's; the diversity of those cut answers, against plain's whole ones,
is what the lengths alone account for (a mean over ``DRAWS`` random pairings).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

from app.settings import DEFAULTS, settings_of
from core import RunConfig, generate_runs, load_model
from viz import metrics, spread

from . import read_prompts
from .quality import default_backend, machine, write_report

DRAWS = 5  # random pairings of plain's answers with ESamp's lengths
ESAMP, NOISE = "esamp (the app's top rung)", "esamp, noise in place of the error"


def runs(tokens: int, n: int, hotter: float) -> dict[str, RunConfig]:
    """The compared runs: the app's settings at ``tokens`` tokens and ``n`` answers."""
    configs = settings_of(dict(DEFAULTS, tokens=tokens, n=n)).configs()
    plain = next(c for c in configs if c.method == "plain")
    esamp = max((c for c in configs if c.method == "esamp"), key=lambda c: c.esamp.beta)
    return {"plain": plain,
            f"plain T={hotter:g}": replace(plain, sampling=replace(plain.sampling, temperature=hotter)),
            ESAMP: esamp, NOISE: replace(esamp, esamp=replace(esamp.esamp, noise=True))}


def cut_like(lengths: list[int], like: list[int], rng: random.Random) -> list[int]:
    """Each answer's length once cut like another run's: answer i keeps ``min(lengths[i], like[j])`` for
    a random pairing i -> j (a random permutation of ``like``, which needs as many answers)."""
    if len(lengths) != len(like):
        raise ValueError(f"cut_like pairs answers one to one: {len(lengths)} against {len(like)}")
    paired = rng.sample(like, len(like))
    return [min(a, b) for a, b in zip(lengths, paired)]


def pieces(trace, p: int) -> list[list[str]]:
    """The text pieces of prompt ``p``'s answers, token by token."""
    return [[t.text for t in s.tokens] for s in trace.samples_of(p)]


def diversity(texts_by_prompt: list[list[str]], embedder) -> list[float]:
    """Each prompt's mean pairwise cosine distance of its answers."""
    return [metrics.mean_pairwise_cosine_distance(spread.embed(texts, embedder)) for texts in texts_by_prompt]


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    """Mean and standard error over prompts of a - b, prompt by prompt."""
    mean, se = metrics.mean_and_stderr([x - y for x, y in zip(a, b)])
    return {"mean": mean, "se": se}


def measure(traces: dict, embedder, seed: int) -> dict:
    """Each run's ended share, mean length and diversity; plain's diversity when cut like each run."""
    plain = traces["plain"]
    prompts = len(plain.prompts)
    out = {}
    for name, trace in traces.items():
        lengths = [len(s.tokens) for s in trace.samples]
        per_prompt = diversity([[s.text for s in trace.samples_of(p)] for p in range(prompts)], embedder)
        row = {"ended": sum(s.finish_reason == "eos" for s in trace.samples) / len(trace.samples),
               "mean_length": statistics.fmean(lengths), "diversity": statistics.fmean(per_prompt),
               "per_prompt": per_prompt}
        if name != "plain":
            rng, draws = random.Random(seed), []
            for _ in range(DRAWS):
                texts = []
                for p in range(prompts):
                    kept = cut_like([len(x) for x in pieces(plain, p)], [len(s.tokens) for s in trace.samples_of(p)],
                                    rng)
                    texts.append(["".join(x[:k]) for x, k in zip(pieces(plain, p), kept)])
                draws.append(diversity(texts, embedder))
            cut = [statistics.fmean(d) for d in zip(*draws)]  # each prompt's mean over the draws
            row |= {"plain_cut_like_it": statistics.fmean(cut),
                    "gain": paired(per_prompt, out["plain"]["per_prompt"]),
                    "gain_from_lengths": paired(cut, out["plain"]["per_prompt"])}
        out[name] = row
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    rows = report["runs"]
    lines = [f"{report['prompts']} prompts x {report['n']} answers x {report['tokens']} tokens, seed {report['seed']}, "
             f"{report['backend']} in {m['dtype']} on {m['cpu']} ({m['cpus']} CPUs) (`python -m bench.ending`).", "",
             "| run | answers the model ended | mean length (tokens) | diversity | − plain's | plain's answers cut "
             "like this run's, − plain's |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        gain, cut = (f"{r[k]['mean']:+.3f} ± {r[k]['se']:.3f}" if k in r else "" for k in ("gain", "gain_from_lengths"))
        lines.append(f"| {name} | {r['ended']:.1%} | {r['mean_length']:.1f} | {r['diversity']:.3f} | {gain} | {cut} |")
    lines += ["", "± one standard error over prompts of the difference, prompt by prompt; the cut answers' a mean over "
              f"{DRAWS} random pairings."]
    esamp, noise = (rows.get(k) for k in (ESAMP, NOISE))
    if esamp and noise:
        d = paired(esamp["per_prompt"], noise["per_prompt"])
        lines += ["", f"ESamp's diversity − its noise ablation's: {d['mean']:+.3f} ± {d['se']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ending", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--backend", default=default_backend())
    ap.add_argument("--prompts", type=int, default=24, help="how many of the stored prompts")
    ap.add_argument("-n", type=int, default=16, help="answers per prompt")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--hotter", type=float, default=1.15, help="plain sampling's second temperature")
    ap.add_argument("--seed", type=int, default=0, help="of the pairings (the runs use the app's seed)")
    ap.add_argument("--quick", action="store_true", help="2 prompts x 4 answers x 8 tokens: checks the plumbing")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    a = ap.parse_args(argv)
    if a.quick:
        a.prompts, a.n, a.tokens = 2, 4, 8
    t0 = time.perf_counter()
    lm = load_model(a.model, backend=a.backend)
    configs = runs(a.tokens, a.n, a.hotter)
    traces = dict(zip(configs, generate_runs(lm, read_prompts()[:a.prompts], list(configs.values()))))
    report = {"prompts": a.prompts, "n": a.n, "tokens": a.tokens, "seed": a.seed, "backend": lm.backend,
              "machine": machine(lm), "configs": {k: c.to_dict() for k, c in configs.items()},
              "runs": measure(traces, spread.load_embedder(), a.seed)}
    report["seconds"] = time.perf_counter() - t0
    write_report(a, report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
