"""The answers Explore's default Generate gives, to read: every run of the app's first Generate (its
β ladder, `app.settings.DEFAULTS`) on a few prompts and lengths, each answer with its seq-rep-4, a
mark where it loops and one where it glues a non-word (`viz.metrics`), and under a broken answer its
draws, each token's probability before the fusion and after (did the push make it?). What a person
reads on the page, as a report (the answers HTML-escaped: model output is untrusted text).

    python -m bench.answers                              # the default prompt and two more, 32 and 128 tokens
    python -m bench.answers --backend vllm --tokens 256 --markdown /tmp/answers.md

The model and backend are the app's (the embedded model on `DEFAULTS["backend"]`) unless named.
"""

from __future__ import annotations

import argparse
import html
import itertools
import math
import statistics
from pathlib import Path

from bench import publish
from app.settings import DEFAULTS, settings_of
from core import generate_runs, load_model
from core.backends.hardware import describe
from viz import metrics
from viz.summary import config_label

DRAWS_SHOWN = 40  # a broken answer's first draws listed under it

PROMPTS = [DEFAULTS["prompt"], "Write a short story about a lighthouse keeper.",
           "Give me three ideas for a science fair project."]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", nargs="+", default=PROMPTS)
    p.add_argument("--tokens", nargs="+", type=int, default=[DEFAULTS["tokens"], 128])
    p.add_argument("--n", type=int, default=DEFAULTS["n"])
    p.add_argument("--seeds", type=int, default=1, help="seeds from the app's (its answers are listed; the "
                   "others are counted: one seed's looping answer may be chance, plain sampling's too)")
    p.add_argument("--backend", default=None, help="default: the app's")
    p.add_argument("--model", default=None, help="default: the embedded model")
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", type=Path)
    args = p.parse_args(argv)
    lm = load_model(args.model, backend=args.backend or DEFAULTS["backend"])
    runs = []
    for tokens, prompt, seed in itertools.product(args.tokens, args.prompts, range(args.seeds)):
        values = {**DEFAULTS, "prompt": prompt, "tokens": tokens, "n": args.n, "seed": DEFAULTS["seed"] + seed}
        configs = settings_of(values).configs()
        for config, trace in zip(configs, generate_runs(lm, [prompt], configs)):
            ids = [[t.id for t in s.tokens] for s in trace.samples]
            glued = [metrics.glued_run([t.text for t in s.tokens]) for s in trace.samples]
            guided = [t for s in trace.samples for t in s.tokens if t.kl]  # the tokens the fusion moved
            runs.append({"tokens": tokens, "prompt": prompt, "seed": config.sampling.seed, "method": config.method,
                         "run": config_label(config), "beta": config.esamp.beta, "max_kl": config.esamp.max_kl,
                         "answers": [s.text for s in trace.samples],
                         "seq_rep_4": [round(metrics.seq_rep(i), 3) for i in ids],
                         "loops": [metrics.is_degenerate(i) for i in ids], "glued_run": glued,
                         "glued": [g >= metrics.GLUED_TOKENS for g in glued], "guided": len(guided),
                         # how the fusion moved them: sharper (lower entropy) or flatter. (Not the chosen
                         # token's log p change: drawn from p_new, its mean is the KL the bound sets.)
                         "sharper": sum(t.entropy_new < t.entropy_ref for t in guided),
                         "entropy_change": sum(t.entropy_new - t.entropy_ref for t in guided),
                         # the draws follow the distribution recorded: the mean log p of the drawn tokens is
                         # about minus the mean entropy (a check of the sampler, not of ESamp)
                         "logp_drawn": statistics.fmean(t.logp_new for s in trace.samples for t in s.tokens),
                         "entropy": statistics.fmean(t.entropy_new for s in trace.samples for t in s.tokens),
                         # a broken answer's draws: how likely each was before the fusion and after
                         "draws": [[(t.text, round(math.exp(t.logp_ref), 4), round(math.exp(t.logp_new), 4))
                                    for t in s.tokens] if metrics.is_degenerate(i) or g >= metrics.GLUED_TOKENS
                                   else None for s, i, g in zip(trace.samples, ids, glued)]})
    own = ("model", "backend", "prompt", "tokens", "n", "beta", "seed")  # said apart, or not a run's setting
    shared = {k: v for k, v in DEFAULTS.items() if k not in own}
    report = {"cpu": describe(), "model": lm.name, "backend": lm.backend, "dtype": str(lm.dtype).removeprefix("torch."),
              "settings": shared, "n": args.n, "seeds": list(range(DEFAULTS["seed"], DEFAULTS["seed"] + args.seeds)),
              "runs": runs}
    return publish(report, args.json, args.markdown, markdown)


def markdown(report: dict) -> str:
    cpu, seeds = report["cpu"], report["seeds"]
    settings = ", ".join(f"{k} {v}" for k, v in report["settings"].items() if v not in ("", None))
    lines = [f"{report['model']} on {report['backend']} in {report['dtype']}, {cpu['cpu']} ({cpu['cpus']} cores, "
             f"{cpu['torch_cpu_capability']}); the app's defaults ({settings}), {report['n']} answers a run, seed "
             f"{seeds[0]}" + (f" to {seeds[-1]} (the answers listed are seed {seeds[0]}'s)" if len(seeds) > 1 else "")
             + f". [x.xx] is an answer's seq-rep-4; * marks one that loops (above {metrics.DEGENERATE_SEQ_REP_4}), "
             f"† one that glues a non-word ({metrics.GLUED_TOKENS} tokens or more; not counted before 2026-12-05: –).",
             "", "| tokens | prompt | run | answers that loop | answers that glue a non-word | seeds with one that "
             "loops | guided tokens made sharper | entropy change a guided token (nats) |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    table: dict[tuple, list[dict]] = {}
    for r in report["runs"]:
        table.setdefault((r["tokens"], r["prompt"], label(r)), []).append(r)
    for (tokens, prompt, run), rs in table.items():
        loops = sum(sum(r["loops"]) for r in rs)
        guided = sum(r["guided"] for r in rs)
        moved = " | ".join(f"{sum(r[k] for r in rs) / guided:{f}}" for k, f in
                           (("sharper", ".0%"), ("entropy_change", "+.3f"))) if guided else " |"
        glued = f"{sum(sum(r['glued']) for r in rs)}" if all("glued" in r for r in rs) else "–"
        lines.append(f"| {tokens} | {text(prompt)} | {run} | {loops} of {sum(len(r['loops']) for r in rs)} | {glued} | "
                     f"{sum(any(r['loops']) for r in rs)} of {len(rs)} | {moved} |")
    for r in report["runs"]:
        if r["seed"] != seeds[0]:
            continue
        lines += ["", f"#### {r['tokens']} tokens, {label(r)}: {text(r['prompt'])}", ""]
        for i, (a, s, loop, glued) in enumerate(zip(r["answers"], r["seq_rep_4"], r["loops"],
                                                    r.get("glued", [False] * len(r["answers"])))):
            lines.append(f"- [{s:.2f}]{'*' if loop else ''}{'†' if glued else ''} {text(a)}")
            draws = r["draws"][i] if "draws" in r else None  # a report written before 2026-12-05 has none
            if draws:
                lines.append("  - its draws, p before the fusion → after: " + ", ".join(
                    f"{html.escape(repr(piece), quote=False)} {ref:.3f}→{new:.3f}"  # text, as the answers
                    for piece, ref, new in draws[:DRAWS_SHOWN]))
    return "\n".join(lines) + "\n"


def text(untrusted: str) -> str:
    """A prompt or an answer on one line of markdown, as text: its lines joined by " / ", HTML escaped,
    and a table's bars too."""
    return html.escape(" / ".join(untrusted.split("\n")).strip()).replace("|", "\\|")


def label(run: dict) -> str:
    """The run's name on the page (``viz.summary.config_label``), with its bound."""
    bound = run["method"] == "esamp" and run["max_kl"] is not None
    return run["run"] + (f", ≤ {run['max_kl']:g} nats" if bound else "")


if __name__ == "__main__":
    raise SystemExit(main())
