"""ESamp's diversity-coherence frontier over the candidate set: for each filter, ESamp at each β
against plain sampling's temperature curve under the same filter.

    python -m bench.frontier --json bench/results/frontier-32.json --markdown bench/results/frontier-32.md \\
        --images bench/results                              # 24 prompts x 16 samples x 32 tokens
    python -m bench.frontier --tokens 128 ...               # the same at 128 tokens
    python -m bench.frontier --add-to bench/results/frontier-32.json ...   # only the runs that JSON lacks
    python -m bench.frontier --quick --json /tmp/f.json     # 2 prompts x 3 samples x 6 tokens, two filters

Under the warm-up filters (the two where ESamp beat temperature at 32 tokens) ESamp also runs with a
warm-up of its guidance: unguided until the prompt's distiller has taken 8 more steps, or until its
running relative novelty is below 1 (it predicts better than nothing), at each of VARIANT_BETAS; the
other VARIANTS (a bounded push per token, and with the warm-up) when named with --variants.

Three axes, each a mean over prompts with its standard error: semantic diversity of a prompt's n
answers (mean pairwise cosine distance of their embeddings, and the Vendi score), coherence (the
answers' mean perplexity under the base model at T = 1, recorded while generating), and broken
text, on tokens (viz.metrics): each answer's seq-rep-4 (the share of its token 4-grams that
repeat an earlier one of its own), the share of answers that loop (seq-rep-4 over
``DEGENERATE_SEQ_REP_4``), that glue a non-word (``GLUED_TOKENS`` tokens or more joined with no space,
digit or punctuation), that do either ("broken"), and the copy rate (seq-rep-2: tokens whose bigram
already occurred in the answer); beside them the mean KL each guided token's fusion moved its
distribution by, and each answer's own word distinct-2 (the older measure, blind to a loop glued
into one non-word).
A filter's candidates are what ESamp may reorder: top-k 50 lets it lift
any of 50 tokens, min-p only tokens the model finds plausible. Plain sampling at β = 0 and at other
temperatures, under the same filter, is the line to beat: at the same diversity, is ESamp's
perplexity lower?
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from core import RunConfig, SamplingConfig, generate, load_model, methods
from core.methods import FILTERS
from core.scoring import trace_perplexities
from viz import charts, metrics, spread
from viz.report import write_images
from viz.summary import prompt_scores

from . import read_prompts
from .quality import default_backend, machine, write_report

BETAS = (0.25, 0.5, 1.0, 1.5)  # and β = 0: plain sampling at T = 1
TEMPERATURES = (0.7, 1.3, 1.6)  # plain sampling's curve besides T = 1
# Named ESamp variants (each a series of its own), run at each of --variant-betas under --variant-filters.
# The paper's push (keep_entropy=False) in the variants measured before the leveled one was the default.
PAPER = dict(keep_entropy=False)
VARIANTS = {"esamp, warm-up 8 steps": dict(warmup_steps=8, max_kl=None, **PAPER),
            "esamp, warm-up to novelty 1": dict(warmup_novelty=1.0, max_kl=None, **PAPER),
            "esamp, unbounded (the paper)": dict(max_kl=None, **PAPER),
            "esamp, pretrained start": dict(start="pretrained", max_kl=None, **PAPER),
            **{f"esamp, ≤ {e:g} nats a token": dict(max_kl=e, **PAPER) for e in (0.1, 0.2, 0.3, 0.5)},
            "esamp, ≤ 0.3 nats, warm-up 8": dict(max_kl=0.3, warmup_steps=8, **PAPER),
            "esamp noise, ≤ 0.3 nats a token": dict(max_kl=0.3, noise=True, **PAPER),
            **{f"esamp, pretrained, ≤ {e:g} nats": dict(start="pretrained", max_kl=e, **PAPER)
               for e in (0.05, 0.1, 0.2)},
            "esamp noise, pretrained, ≤ 0.1 nats": dict(start="pretrained", max_kl=0.1, noise=True, **PAPER),
            **{f"esamp, leveled, ≤ {e:g} nats": dict(max_kl=e, keep_entropy=True) for e in (0.2, 0.3, 0.5, 1, 2)},
            "esamp, leveled, unbounded": dict(max_kl=None, keep_entropy=True),
            **{f"esamp noise, leveled, ≤ {e:g} nats": dict(max_kl=e, keep_entropy=True, noise=True)
               for e in (0.2, 0.3, 0.5)},
            # the distiller trained at the public reference's lr (bench.distiller --starts: it learns faster)
            **{f"esamp, leveled, ≤ {e:g} nats, lr 1e-3": dict(max_kl=e, keep_entropy=True, lr=1e-3)
               for e in (0.3, 0.5)},
            "esamp noise, leveled, ≤ 0.3 nats, lr 1e-3": dict(max_kl=0.3, keep_entropy=True, noise=True, lr=1e-3),
            # the push on word starts only (EsampConfig.between_words)
            **{f"esamp, leveled, ≤ {e:g} nats, lr 1e-3, between words": dict(
                max_kl=e, keep_entropy=True, lr=1e-3, between_words=True) for e in (0.5, 0.75, 1, 1.5)},
            **{f"esamp noise, leveled, ≤ {e:g} nats, lr 1e-3, between words": dict(
                max_kl=e, keep_entropy=True, noise=True, lr=1e-3, between_words=True) for e in (0.5, 1)}}
# Every variant was measured at the paper's lr 4e-4 unless its name says otherwise (the default became 1e-3 on
# 2026-12-05): a name keeps meaning what its rows in bench/results measured.
VARIANTS = {name: {"lr": 4e-4, **settings} for name, settings in VARIANTS.items()}
WARMUPS = ("esamp, warm-up 8 steps", "esamp, warm-up to novelty 1")  # the variants run unless others are named
# Apart from plain sampling's blue and ESamp's vermillion (viz.style): Okabe-Ito's others, then greys and browns.
VARIANT_COLOURS = {"esamp, warm-up 8 steps": "#009E73", "esamp, warm-up to novelty 1": "#CC79A7",
                   "esamp, unbounded (the paper)": "#8C564B", "esamp, pretrained start": "#F0E442",
                   "esamp, ≤ 0.1 nats a token": "#B2DF8A", "esamp, ≤ 0.2 nats a token": "#56B4E9",
                   "esamp, ≤ 0.3 nats a token": "#6A3D9A", "esamp, ≤ 0.5 nats a token": "#999999",
                   "esamp, ≤ 0.3 nats, warm-up 8": "#FB9A99", "esamp noise, ≤ 0.3 nats a token": "#E69F00",
                   "esamp, leveled, ≤ 0.2 nats": "#332288", "esamp, leveled, unbounded": "#117733",
                   "esamp noise, leveled, ≤ 0.2 nats": "#88CCEE", "esamp, leveled, ≤ 0.5 nats": "#AA4499",
                   "esamp noise, leveled, ≤ 0.5 nats": "#DDCC77", "esamp, leveled, ≤ 1 nats": "#CC6677",
                   "esamp, leveled, ≤ 2 nats": "#44AA99", "esamp, leveled, ≤ 0.3 nats": "#882255",
                   "esamp noise, leveled, ≤ 0.3 nats": "#661100", "esamp, leveled, ≤ 0.3 nats, lr 1e-3": "#6699CC",
                   "esamp, leveled, ≤ 0.5 nats, lr 1e-3": "#997700",
                   "esamp noise, leveled, ≤ 0.3 nats, lr 1e-3": "#BBBBBB",
                   "esamp, leveled, ≤ 0.5 nats, lr 1e-3, between words": "#225555",
                   "esamp, leveled, ≤ 0.75 nats, lr 1e-3, between words": "#4477AA",
                   "esamp, leveled, ≤ 1 nats, lr 1e-3, between words": "#EE7733",
                   "esamp, leveled, ≤ 1.5 nats, lr 1e-3, between words": "#CC3311",
                   "esamp noise, leveled, ≤ 1 nats, lr 1e-3, between words": "#EEEEEE",
                   "esamp noise, leveled, ≤ 0.5 nats, lr 1e-3, between words": "#DDDDDD"}
VARIANT_FILTERS = ("top-p 0.9", "top-p 0.95")
VARIANT_BETAS = (0.5, 1.0, 1.5)
METRICS = ("cosine_distance", "vendi", "perplexity", "seq_rep_4", "degenerate", "glued", "broken", "copy_rate", "kl",
           "within_distinct_2")


def runs(sampling: SamplingConfig, betas=BETAS, temperatures=TEMPERATURES, variants=(),
         variant_betas=VARIANT_BETAS) -> list[tuple[str, RunConfig]]:
    """(series, config) of one filter: plain at T = 1 (β = 0), ESamp at each β, plain at each
    temperature, and ESamp with each of ``variants`` (names in VARIANTS) at each of ``variant_betas``."""
    out = [("plain", methods.plain(sampling, shadow=False))]
    out += [("esamp", methods.esamp(sampling, b)) for b in betas]
    out += [("plain", methods.plain(sampling, t, shadow=False)) for t in temperatures]
    out += [(v, methods.esamp(sampling, b, **VARIANTS[v])) for v in variants for b in variant_betas]
    return out


def named_run(sampling: SamplingConfig, name: str) -> tuple[str, RunConfig]:
    """(series, config) of a run by name: "plain 1.3" (plain sampling at T = 1.3), "1.5" (ESamp at β = 1.5),
    "1.5 esamp, ≤ 0.3 nats a token" (ESamp at β = 1.5 as one of VARIANTS)."""
    first, _, rest = name.strip().partition(" ")
    try:
        if first == "plain":
            return "plain", methods.plain(sampling, float(rest), shadow=False)
        if rest and rest not in VARIANTS:
            raise KeyError(rest)
        return rest or "esamp", methods.esamp(sampling, float(first), **VARIANTS.get(rest, {}))
    except (ValueError, KeyError):
        raise ValueError(f"{name!r} is no run: 'plain T', 'β' or 'β VARIANT' (VARIANT one of {list(VARIANTS)})") \
            from None


def within_answer_distinct_2(trace) -> list[float]:
    """Per prompt: the mean over its answers of each answer's own distinct-2 (answers of fewer
    than two words left out)."""
    out = []
    for p in range(len(trace.prompts)):
        values = [metrics.distinct_n([s.text], 2) for s in trace.samples_of(p) if len(s.text.split()) >= 2]
        out.append(statistics.fmean(values) if values else float("nan"))
    return out


def broken_text(trace) -> dict[str, list[float]]:
    """Per prompt, on token ids: the copy rate (mean seq-rep-2 of its answers) and the mean KL of its
    guided tokens' steps (0 for a run that guides none); with every answer's seq-rep-4, in order."""
    copy, kl = [], []
    for p in range(len(trace.prompts)):
        answers = [[t.id for t in s.tokens] for s in trace.samples_of(p)]
        copy.append(statistics.fmean(metrics.seq_rep(a, 2) for a in answers) if answers else float("nan"))
        moved = [t.kl for s in trace.samples_of(p) for t in s.tokens if t.kl]
        kl.append(statistics.fmean(moved) if moved else 0.0)
    return {"copy_rate": copy, "kl": kl,
            "answers_seq_rep_4": [metrics.seq_rep([t.id for t in s.tokens], 4) for s in trace.samples]}


def measure(lm, embedder, prompts: list[str], cfg: RunConfig) -> dict:
    trace = generate(lm, prompts, cfg)
    scores = prompt_scores(trace, spread.embed(trace.texts(), embedder), trace_perplexities(lm, trace))
    per_prompt = {k: getattr(scores, k) for k in ("cosine_distance", "vendi", "perplexity", "seq_rep_4", "degenerate",
                                                  "glued", "broken")}
    extra = broken_text(trace)
    per_prompt |= {"copy_rate": extra["copy_rate"], "kl": extra["kl"],
                   "within_distinct_2": within_answer_distinct_2(trace)}
    summary = {k: dict(zip(("mean", "se"), metrics.mean_and_stderr(v))) for k, v in per_prompt.items()}
    return {"config": cfg.to_dict(), "summary": summary, "per_prompt": per_prompt,
            "answers_seq_rep_4": extra["answers_seq_rep_4"], "tokens_per_s": trace.timings.tokens_per_s,
            "eos_share": sum(s.finish_reason == "eos" for s in trace.samples) / len(trace.samples)}


def point(r: dict) -> dict:
    cfg, s = RunConfig.from_dict(r["config"]), r["summary"]
    setting = f"β={cfg.esamp.beta:g}" if cfg.method == "esamp" else f"T={cfg.sampling.temperature:g}"
    return {"series": r["series"], "setting": setting, "diversity": s["cosine_distance"]["mean"],
            "diversity_se": s["cosine_distance"]["se"], "perplexity": s["perplexity"]["mean"],
            "perplexity_se": s["perplexity"]["se"]}


def figure(label: str, rows: list[dict]):
    """Diversity against perplexity under one filter: ESamp's line from plain (β = 0) up, plain's by
    temperature; a point with more broken answers than plain sampling's is crossed out."""
    plain = sorted((point(r) for r in rows if r["series"] == "plain"), key=lambda p: float(p["setting"][2:]))
    start = next(p for p in plain if p["setting"] == "T=1")
    plain_row = _plain(rows)

    def marked(r: dict) -> dict:  # crossed out: more broken answers than plain's at T = 1, beyond the noise
        return {**point(r), "broken": breaks_more(r, plain_row)}

    esamp = []
    for series in dict.fromkeys(r["series"] for r in rows if r["series"] != "plain"):  # ESamp, then its variants
        esamp += [{**start, "series": series, "setting": "β=0"}] + [marked(r) for r in rows if r["series"] == series]
    fig = charts.sweep_figure(esamp + plain, colours=VARIANT_COLOURS)
    fig.update_layout(title=f"{label}: ESamp's β against plain sampling's temperature")
    fig.update_xaxes(type="log", title="perplexity (log scale; lower = more fluent)")  # hot plain runs reach 1000s
    return fig


def temperature_perplexity(rows: list[dict], diversity: float) -> float:
    """Plain sampling's perplexity at ``diversity`` on its temperature curve (linear in log perplexity
    between its points; past its last point, that point's: the curve is not extrapolated)."""
    curve = sorted((r["summary"]["cosine_distance"]["mean"], r["summary"]["perplexity"]["mean"])
                   for r in rows if r["series"] == "plain")
    for (d0, p0), (d1, p1) in zip(curve, curve[1:]):
        if d0 <= diversity <= d1 and d1 > d0:
            return math.exp(math.log(p0) + (diversity - d0) / (d1 - d0) * (math.log(p1) - math.log(p0)))
    return curve[-1][1] if diversity > curve[-1][0] else curve[0][1]


def choose(rows: list[dict]) -> dict | None:
    """The rule the app's defaults follow, under one filter: of the ESamp runs more diverse than plain
    sampling at T = 1, those whose share of broken answers is no worse than plain's (the paired
    difference over prompts within two standard errors of 0, or below it) and whose perplexity is no
    worse than temperature's at the same diversity; the one with the largest diversity gain. None: none holds.
    The noise ablation (noise in place of the error) is a control, never a choice."""
    plain = _plain(rows)
    best, gain = None, 0.0
    for r in rows:
        if r["series"] == "plain" or "degenerate" not in r.get("per_prompt", {}) or r["config"]["esamp"].get("noise"):
            continue
        div = r["summary"]["cosine_distance"]["mean"]
        holds = not breaks_more(r, plain) and r["summary"]["perplexity"]["mean"] <= temperature_perplexity(rows, div)
        if holds and div - plain["summary"]["cosine_distance"]["mean"] > gain:
            best, gain = r, div - plain["summary"]["cosine_distance"]["mean"]
    return best


def breaks_more(r: dict, plain: dict) -> bool:
    """Whether more of a run's answers are broken than plain sampling's beyond the noise: the mean over
    prompts of the difference in their share is more than two standard errors above 0. Where either row
    was measured before glued non-words were (2026-12-05), the share of answers that loop; False where
    neither was measured."""
    key = next((k for k in ("broken", "degenerate") if k in r.get("per_prompt", {}) and
                k in plain.get("per_prompt", {})), None)
    if key is None:
        return False
    mean, se = metrics.mean_and_stderr([a - b for a, b in zip(r["per_prompt"][key], plain["per_prompt"][key])])
    return mean > 2 * se


def _plain(rows: list[dict]) -> dict:
    """Plain sampling at T = 1 among one filter's rows."""
    return next(r for r in rows
                if r["series"] == "plain" and RunConfig.from_dict(r["config"]).sampling.temperature == 1)


COLUMNS = {"cosine_distance": ("cosine distance ↑", 3), "vendi": ("Vendi ↑", 3), "perplexity": ("perplexity ↓", 2),
           "seq_rep_4": ("seq-rep-4 ↓", 3), "degenerate": ("answers that loop ↓", 3),
           "glued": ("answers that glue a non-word ↓", 3), "broken": ("broken answers ↓", 3),
           "copy_rate": ("copy rate ↓", 3),
           "kl": ("KL a guided token", 3), "within_distinct_2": ("within-answer distinct-2 ↑", 3)}


def markdown(report: dict) -> str:
    m = report["machine"]
    shown = [k for k in COLUMNS if any(k in r["summary"] for rows in report["filters"].values() for r in rows)]
    lines = [f"{len(report['prompts'])} prompts x {report['n']} samples x {report['tokens']} tokens, seed "
             f"{report['seed']}, {report['backend']} in {m['dtype']} on {m['cpu']} ({m['cpus']} CPUs); mean ± s.e. "
             "over prompts (`python -m bench.frontier`).", "",
             "| filter | run | " + " | ".join(COLUMNS[k][0] for k in shown) + " |",
             "|---|---|" + "---:|" * len(shown)]
    for label, rows in report["filters"].items():
        for r in rows:
            s = r["summary"]
            cells = [f"{s[k]['mean']:.{COLUMNS[k][1]}f} ± {s[k]['se']:.{COLUMNS[k][1]}f}" if k in s else "–"
                     for k in shown]
            lines.append(f"| {label} | {r['series']} {point(r)['setting']} | " + " | ".join(cells) + " |")
    chosen = [(label, choose(rows)) for label, rows in report["filters"].items()]
    lines += ["", "The rule's choice under each filter (`bench.frontier.choose`): " + "; ".join(
        f"{label}: " + (f"{r['series']} {point(r)['setting']}" if r else "none holds") for label, r in chosen) + "."]
    for added in report.get("added", []):
        m = added["machine"]
        lines += ["", f"Rows added by `{added['command']}` ({m['dtype']} on {m['cpu']}, {m['cpus']} CPUs)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.frontier", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--backend", default=default_backend())
    ap.add_argument("--prompts", type=int, default=24, help="how many of the stored prompts")
    ap.add_argument("-n", type=int, default=16, help="samples per prompt")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--filters", nargs="+", default=list(FILTERS), choices=list(FILTERS))
    ap.add_argument("--warmup-filters", "--variant-filters", dest="variant_filters", nargs="*",
                    default=list(VARIANT_FILTERS), choices=list(FILTERS),
                    help="the filters whose ESamp also runs as each variant (none: no variant runs)")
    ap.add_argument("--variants", nargs="*", default=list(WARMUPS), choices=list(VARIANTS), help="ESamp's variants")
    ap.add_argument("--betas", type=float, nargs="*", default=list(BETAS), help="ESamp's βs without a variant")
    ap.add_argument("--variant-betas", type=float, nargs="+", default=list(VARIANT_BETAS))
    ap.add_argument("--temperatures", type=float, nargs="*", default=list(TEMPERATURES),
                    help="plain sampling's besides T = 1")
    ap.add_argument("--runs", help="instead of the grid: these runs, ';'-separated names ('plain 1.3', '1.5', "
                    "'1.5 esamp, ≤ 0.3 nats a token'); plain sampling at T = 1 always comes first")
    ap.add_argument("--quick", action="store_true", help="2 prompts x 3 samples x 6 tokens, two filters")
    ap.add_argument("--add-to", type=Path, metavar="JSON",
                    help="keep this run's results and measure only the runs it lacks (same prompts, n, tokens, seed)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--images", type=Path, help="folder for one diversity-vs-perplexity plot per filter")
    ap.add_argument("--replot", type=Path, metavar="JSON", help="only draw the plots of a run's JSON into --images")
    a = ap.parse_args(argv)
    if a.replot:
        report = json.loads(a.replot.read_text())
        write_images(figures(report), a.images or a.replot.parent)
        return 0
    if a.quick:
        a.prompts, a.n, a.tokens, a.filters = 2, 3, 6, ["top-k 50", "min-p 0.1"]
        a.betas, a.temperatures, a.variant_betas = (0.5,), (1.3,), (0.5,)
        a.variant_filters = [f for f in a.variant_filters if f in a.filters] or ["min-p 0.1"]
    prompts = read_prompts()[:a.prompts]
    earlier = json.loads(a.add_to.read_text()) if a.add_to else None
    if earlier and (earlier["prompts"], earlier["n"], earlier["tokens"], earlier["seed"]) != (
            prompts, a.n, a.tokens, a.seed):
        raise SystemExit(f"{a.add_to} was run with other prompts, n, tokens or seed: nothing to add to.")
    lm = load_model(a.model, backend=a.backend)
    embedder = spread.load_embedder()
    t_start = time.perf_counter()
    results: dict[str, list[dict]] = dict(earlier["filters"]) if earlier else {}  # filters not run stay
    for label in a.filters:
        sampling = SamplingConfig(n=a.n, max_new_tokens=a.tokens, seed=a.seed, **FILTERS[label])
        kept = (earlier or {}).get("filters", {}).get(label, [])
        results[label] = []
        grid = runs(sampling, a.betas, a.temperatures, a.variants if label in a.variant_filters else (),
                    a.variant_betas)
        if a.runs:
            grid = [grid[0]] + [named_run(sampling, name) for name in a.runs.split(";") if name.strip()]
        for series, cfg in grid:
            done = [r for r in kept if r["series"] == series and same_run(measured_config(r["config"]), cfg)]
            results[label].append(done[0] if done else {"series": series, **measure(lm, embedder, prompts, cfg)})
            if a.json and not done:  # what is measured is kept if the run is stopped: --add-to goes on from it
                so_far = {**results, label: results[label] + [r for r in kept if r not in results[label]]}
                a.json.write_text(json.dumps(report_of(a, argv, lm, prompts, t_start, so_far, earlier,
                                                       unfinished=True), indent=1) + "\n")
            s, setting = results[label][-1]["summary"], point(results[label][-1])["setting"]
            print(f"{label:11s} {series} {setting:7s} cos {s['cosine_distance']['mean']:.3f}"
                  f" ppl {s['perplexity']['mean']:.2f} seq-rep-4 {s.get('seq_rep_4', {}).get('mean', math.nan):.3f}"
                  f" loops {s.get('degenerate', {}).get('mean', math.nan):.3f}"
                  f" broken {s.get('broken', {}).get('mean', math.nan):.3f} "
                  f"({'kept' if done else f'{time.perf_counter() - t_start:.0f} s so far'})", file=sys.stderr,
                  flush=True)
        results[label] += [r for r in kept if r not in results[label]]  # what this run does not repeat stays
    report = report_of(a, argv, lm, prompts, t_start, results, earlier)
    write_report(a, report, markdown(report))
    if a.images:
        write_images(figures(report), a.images)
    return 0


def measured_config(d: dict) -> RunConfig:
    """The config a JSON's run was measured with: one written before the leveled push existed pushed
    as the paper does, and one written before the push between words pushed every candidate (as
    core.trace reads version 6 and 7 traces)."""
    return RunConfig.from_dict({**d, "esamp": {"keep_entropy": False, "between_words": False, **d["esamp"]}})


def same_run(a: RunConfig, b: RunConfig) -> bool:
    """Whether two configs make the same run: equal, or both plain sampling without a distiller, whose
    fusion settings (defaults that changed since an earlier JSON was written) steer nothing."""
    if a.method == b.method == "plain" and not a.esamp.shadow and not b.esamp.shadow:
        return replace(a, esamp=b.esamp) == b
    return a == b


def report_of(a, argv, lm, prompts, t_start: float, results: dict, earlier: dict | None, unfinished=False) -> dict:
    """The run's JSON; ``unfinished``: written after each measured run, until the whole is done."""
    command = "python -m bench.frontier " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command, "backend": a.backend, "model": lm.name, "prompts": prompts, "n": a.n,
              "tokens": a.tokens, "seed": a.seed, "machine": machine(lm), "seconds": time.perf_counter() - t_start,
              "filters": results}
    if earlier:  # the first run's command and machine stay; this one is recorded as an addition
        report = {**earlier, "filters": results, "added": earlier.get("added", []) + [
            {"command": command, "machine": machine(lm), "seconds": report["seconds"]}]}
    return {**report, "unfinished": True} if unfinished else report


def figures(report: dict) -> dict:
    return {f"frontier-{report['tokens']}-{label.replace(' ', '')}": figure(label, rows)
            for label, rows in report["filters"].items()}


if __name__ == "__main__":
    raise SystemExit(main())
