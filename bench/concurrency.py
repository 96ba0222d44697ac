"""K sessions pressing the default Generate at once on one vLLM engine: when each sees its first
token and its last, and the engine's throughput, against the same rows in one batch.

    python -m bench.concurrency                                   # K = 1, 2, 4, 8, 16; both placements
    python -m bench.concurrency --ks 1,2 --tokens 4 --placements inline --json out.json   # the plumbing
    python -m bench.concurrency --ks 8,16 --placements inline --rounds 3   # issue 37's bar, as medians
    python -m bench.concurrency --pool a.json b.json    # several draws' rounds pooled: medians and intervals

A session is what the app's Generate does: ``core.generate_runs`` of Explore's default β ladder
on its default prompt and sampling (n = 16, top-p 0.9), from its own thread, every session with
its own seed. EOS is ignored so that every K does the same work per session. At each K, in the
same engine and next to it in time:

- ``ESamp batched``: the same K x ladder runs in one call (what concurrency itself costs is the
  difference to the sessions);
- ``plain batched``: the same rows as plain sampling (no distiller) in one call: what bench.speed
  calls plain, at the same total rows (ESamp's own cost is the difference to ESamp batched);
- ``vllm native``: the same rows through vLLM's own sampler (no ESamp processor, no trace).

``placement``: the engine in this process ("inline") or in vLLM's own engine process ("process").
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from core import RunConfig, SamplingConfig, beta_ladder, encode_prompts, generate_runs, load_model
from core.esamp.clock import PARTS

from .quality import machine
from .speed import median_interval

PROMPT = "Invent a name for a new colour and describe it."  # Explore's default (app/settings.py FIELDS)
LADDER = (0.0, 0.25, 0.5, 1.0)
SAMPLING = SamplingConfig(n=16, max_new_tokens=32, top_k=0, top_p=0.9, ignore_eos=True)


def session_configs(tokens: int, seed: int, n: int = SAMPLING.n) -> list[RunConfig]:
    return beta_ladder(RunConfig(sampling=replace(SAMPLING, n=n, max_new_tokens=tokens, seed=seed)), LADDER)


def sessions(lm, k: int, tokens: int, n: int = SAMPLING.n) -> dict:
    """K default Generates started together; per session its first-token and finish times (s)."""
    start = threading.Barrier(k + 1)
    rows = [dict() for _ in range(k)]

    def one(i: int) -> None:
        configs = session_configs(tokens, i, n)
        start.wait()
        t0 = time.perf_counter()
        row = rows[i]

        def seen(p) -> None:
            if p.tokens > 0 and "first_token_s" not in row:
                row["first_token_s"] = time.perf_counter() - t0

        traces = generate_runs(lm, [PROMPT], configs, progress=seen)
        row["finish_s"] = time.perf_counter() - t0
        row["tokens"] = sum(t.timings.new_tokens for t in traces)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    steps = lm.engine.steps
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(r["tokens"] for r in rows)
    return {"sessions": rows, "wall_s": wall, "tokens": total, "tokens_per_s": total / wall,
            "steps": lm.engine.steps - steps}


def batched(lm, k: int, tokens: int, plain: bool, n: int = SAMPLING.n) -> tuple[float, dict]:
    """The K sessions' runs in one call (as plain sampling without a distiller: ``plain``): tokens/s, and
    the call's wall time with the seconds of each part of the step's work around the model (``PARTS``),
    summed over its runs (a shared bank's or fusion's time is shared among them by rows, so the sum is
    the engine's)."""
    configs = [replace(c, method="plain", esamp=replace(c.esamp, shadow=False)) if plain else c
               for i in range(k) for c in session_configs(tokens, i, n)]
    steps, t0 = lm.engine.steps, time.perf_counter()
    traces = generate_runs(lm, [PROMPT], configs)
    wall = time.perf_counter() - t0
    parts = {part: sum(t.timings.parts.get(part, 0.0) for t in traces) for part in PARTS}
    return sum(t.timings.new_tokens for t in traces) / wall, {"wall_s": wall, "steps": lm.engine.steps - steps,
                                                                **parts}


def vllm_native(lm, k: int, tokens: int, n: int = SAMPLING.n) -> float:
    """The same rows through vLLM's own sampler; tokens/s."""
    from vllm import SamplingParams

    from core.backends.vllm.loop import native

    ids = encode_prompts(lm, [PROMPT], True, tokens)[0]
    runs = k * len(LADDER)
    params = [SamplingParams(n=n, top_p=SAMPLING.top_p, max_tokens=tokens, ignore_eos=True, seed=i,
                             detokenize=False) for i in range(runs)]
    t0 = time.perf_counter()
    outs = native(lm, [ids] * runs, params)
    seconds = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outs for c in o.outputs) / seconds


def one_round(lm, k: int, tokens: int, n: int, reverse: bool) -> dict:
    """The K sessions and their three references once, in this order or (``reverse``) the reverse one,
    so that rounds in alternating order share a drift of the machine's speed between them."""
    steps = [("sessions", lambda: sessions(lm, k, tokens, n)),
             ("esamp_batched", lambda: batched(lm, k, tokens, False, n)),
             ("plain_batched", lambda: batched(lm, k, tokens, True, n)),
             ("vllm_native_tokens_per_s", lambda: vllm_native(lm, k, tokens, n))]
    got = {name: run() for name, run in (steps[::-1] if reverse else steps)}
    for name in ("esamp_batched", "plain_batched"):
        got[f"{name}_tokens_per_s"], got[f"{name}_parts"] = got.pop(name)
    return {**got.pop("sessions"), **got}


PARTS_OF = ("esamp_batched_parts", "plain_batched_parts")  # each batched call's wall time and its parts (s)
RATIOS = {"ratio_to_esamp_batched": "esamp_batched_tokens_per_s",  # each ratio's reference
          "ratio_to_plain_batched": "plain_batched_tokens_per_s", "ratio_to_vllm_native": "vllm_native_tokens_per_s"}


def measure(lm, ks: list[int], tokens: int, n: int = SAMPLING.n, rounds: int = 1) -> list[dict]:
    """Each K's sessions and references, ``rounds`` times in alternating order: each throughput the
    median of its rounds, each ratio the median of the rounds' own ratios (``rounds``: every round's)."""
    sessions(lm, 1, 4, n)  # warm-up: the first run of an engine pays for allocation
    rows = []
    for k in ks:
        got = [one_round(lm, k, tokens, n, reverse=r % 2 == 1) for r in range(rounds)]
        for g in got:
            g.update({ratio: g["tokens_per_s"] / g[ref] for ratio, ref in RATIOS.items()})
        firsts = [s["first_token_s"] for g in got for s in g["sessions"]]
        finishes = [s["finish_s"] for g in got for s in g["sessions"]]
        row = {"k": k, "rows": k * len(LADDER) * n, "sessions": got[-1]["sessions"], "tokens": got[-1]["tokens"],
               **{key: statistics.median(g[key] for g in got)
                  for key in ("wall_s", "tokens_per_s", "steps", *RATIOS, *RATIOS.values())},
               **{key: {part: statistics.median(g[key][part] for g in got) for part in got[0][key]}
                  for key in PARTS_OF},
               "first_token_s": {"median": statistics.median(firsts), "max": max(firsts)},
               "finish_s": {"median": statistics.median(finishes), "max": max(finishes)},
               "rounds": got}  # each round with its own sessions (``sessions``: the last round's)
        rows.append(row)
        by_round = ", ".join(f"{g['ratio_to_plain_batched']:.3f}" for g in got)
        print(f"K={k:2d} ({row['rows']:4d} rows, {rounds} round(s)): {row['tokens_per_s']:6.0f} tokens/s (ESamp "
              f"batched {row['esamp_batched_tokens_per_s']:.0f}, plain batched "
              f"{row['plain_batched_tokens_per_s']:.0f}, vLLM native {row['vllm_native_tokens_per_s']:.0f}); "
              f"÷ plain batched by round {by_round}; first token median "
              f"{row['first_token_s']['median']:.2f} s max {row['first_token_s']['max']:.2f} s; finished median "
              f"{row['finish_s']['median']:.1f} s max {row['finish_s']['max']:.1f} s", file=sys.stderr, flush=True)
    alone = rows[0]["first_token_s"]["median"] if rows and rows[0]["k"] == 1 else None
    for r in rows:
        r["first_token_vs_alone"] = r["first_token_s"]["max"] / alone if alone else None
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    n = report.get("n", SAMPLING.n)  # reports before --n: the default
    rounds = report.get("rounds", 1)  # reports before --rounds: one
    each = f"; each ratio the median of {rounds} rounds' own (their range in brackets)" if rounds > 1 else ""
    lines = [f"Default Generates at once ({len(LADDER)} runs × {n} samples × {report['tokens']} tokens each, "
             f"EOS ignored), vLLM in {m['dtype']} on {m['cpu']} ({m['cpus']} CPUs){each}; `{report['command']}`.", "",
             "| placement | K | rows | K sessions: tokens/s | ÷ ESamp batched | ÷ plain batched | ÷ vLLM native | "
             "first token: median / max (s) | max ÷ alone | finished: median / max (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for placement, rows in report["placements"].items():
        for r in rows:
            vs = "" if r["first_token_vs_alone"] is None else f"{r['first_token_vs_alone']:.2f}"
            lines.append(f"| {placement} | {r['k']} | {r['rows']} | {r['tokens_per_s']:.0f} | "
                         f"{_ratio(r, 'ratio_to_esamp_batched')} | {_ratio(r, 'ratio_to_plain_batched')} | "
                         f"{_ratio(r, 'ratio_to_vllm_native')} | "
                         f"{r['first_token_s']['median']:.2f} / {r['first_token_s']['max']:.2f} | {vs} | "
                         f"{r['finish_s']['median']:.1f} / {r['finish_s']['max']:.1f} |")
    if any(PARTS_OF[0] in r for rows in report["placements"].values() for r in rows):
        lines += ["", parts_markdown(report)]
    return "\n".join(lines) + "\n"


def parts_markdown(report: dict) -> str:
    """Where the batched calls' time goes (reports before the parts were kept have none): each part's
    seconds summed over the call's runs, the median of the rounds; ESamp's own work is the difference."""
    lines = ["Each batched call's wall time and its parts of the step's work around the model (seconds, "
             "summed over its runs; the median of the rounds):", "",
             "| placement | K | call | wall | " + " | ".join(PARTS) + " | the rest (model, sampling) |",
             "|---|---:|---|---:|" + "---:|" * (len(PARTS) + 1)]
    for placement, rows in report["placements"].items():
        for r in rows:
            if PARTS_OF[0] not in r:
                continue
            esamp, plain = (r[key] for key in PARTS_OF)
            extra = {key: esamp[key] - plain[key] for key in esamp}
            for name, p in (("ESamp batched", esamp), ("plain batched", plain), ("ESamp − plain", extra)):
                rest = p["wall_s"] - sum(p[part] for part in PARTS)
                wall = _s(p["wall_s"]) + (f" ({100 * p['wall_s'] / plain['wall_s']:+.1f} %)" if p is extra else "")
                lines.append(f"| {placement} | {r['k']} | {name} | {wall} | "
                             + " | ".join(_s(p[part]) for part in PARTS) + f" | {_s(rest)} |")
    steps = [f"{placement}, K = {r['k']}: sessions {r['steps']:g}, ESamp batched {r[PARTS_OF[0]]['steps']:g}, "
             f"plain batched {r[PARTS_OF[1]]['steps']:g}"
             for placement, rows in report["placements"].items() for r in rows if "steps" in r]
    if steps:  # (reports before they were counted have none)
        lines += ["", "Engine steps a call (every caller's steps while it ran; the median of the rounds): "
                  + "; ".join(steps) + "."]
    return "\n".join(lines)


def pooled(reports: list[dict], draws: int = 4000) -> list[dict]:
    """The rounds' own ratios of several reports (draws of the same command and code), pooled per (dtype,
    placement, K): each ratio's rounds, median, a 95% bootstrap interval of the median and range
    (``bench.speed.median_interval``). A draw of three rounds cannot tell 0.92 from 0.95 where its rounds
    range over ten points; pooled rounds say how sure a median is."""
    ratios: dict[tuple, list[float]] = {}
    for report in reports:
        for placement, rows in report["placements"].items():
            for r in rows:
                for name, key in (("÷ plain batched", "ratio_to_plain_batched"),
                                  ("÷ ESamp batched", "ratio_to_esamp_batched")):
                    ratios.setdefault((report["machine"]["dtype"], placement, r["k"], name), []).extend(
                        g[key] for g in r.get("rounds", [r]))
    rng = random.Random(0)
    return [{"dtype": d, "placement": p, "k": k, "ratio": name, **median_interval(xs, rng, draws)}
            for (d, p, k, name), xs in sorted(ratios.items(), key=lambda item: item[0][1:3])]


def pooled_markdown(rows: list[dict]) -> str:
    lines = ["| dtype | placement | K | K sessions | rounds | median | 95% interval of the median | range |",
             "|---|---|---:|---|---:|---:|---|---|"]
    lines += [f"| {r['dtype']} | {r['placement']} | {r['k']} | {r['ratio']} | {r['rounds']} | {r['median']:.3f} | "
              f"{r['low']:.3f} to {r['high']:.3f} | {r['min']:.3f} to {r['max']:.3f} |" for r in rows]
    return "\n".join(lines)


def _s(seconds: float) -> str:
    return f"{round(seconds, 2) + 0.0:.2f}"  # + 0.0: no "-0.00" for a difference that rounds to nothing


def _ratio(row: dict, key: str) -> str:
    """A row's ratio: its median, and with more than one round the rounds' range."""
    got = [g[key] for g in row.get("rounds", [])]
    spread = f" ({min(got):.2f}–{max(got):.2f})" if len(got) > 1 else ""
    return f"{row[key]:.2f}{spread}"


def figure(report: dict):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("throughput (tokens/s)", "the slowest session's wait (s)"))
    colour = {"K sessions": "#d62728", "ESamp batched": "#ff9896", "plain batched": "#7f7f7f",
              "vLLM native": "#1f77b4", "first token": "#2ca02c", "finished": "#9467bd"}
    for placement, rows in report["placements"].items():
        ks = [r["k"] for r in rows]
        dash = "solid" if placement == "inline" else "dot"
        for name, key in (("K sessions", "tokens_per_s"), ("ESamp batched", "esamp_batched_tokens_per_s"),
                          ("plain batched", "plain_batched_tokens_per_s"), ("vLLM native", "vllm_native_tokens_per_s")):
            fig.add_scatter(x=ks, y=[r[key] for r in rows], name=f"{name} ({placement})",
                            line={"dash": dash, "color": colour[name]}, row=1, col=1)
        for name, key in (("first token", "first_token_s"), ("finished", "finish_s")):
            fig.add_scatter(x=ks, y=[r[key]["max"] for r in rows], name=f"{name} ({placement})",
                            line={"dash": dash, "color": colour[name]}, row=1, col=2)
    fig.update_xaxes(type="log", title="sessions pressing Generate at once (K)", tickvals=[1, 2, 4, 8, 16])
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(height=440, template="plotly_white",
                      title=f"Default Generates at once on one vLLM engine ({report['machine']['cpus']} CPUs, "
                            f"{report['machine']['dtype']})<br><sup>solid: the engine in the app's process; "
                            "dotted: in vLLM's own engine process</sup>")
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__.split("\n")[0])
    ap.add_argument("--ks", default="1,2,4,8,16", help="numbers of sessions at once")
    ap.add_argument("--tokens", type=int, default=SAMPLING.max_new_tokens)
    ap.add_argument("--n", type=int, default=SAMPLING.n, help="answers a run (a session runs the 4-rung ladder)")
    ap.add_argument("--rounds", type=int, default=1, help="times each K's sessions and references are measured, "
                    "in alternating order (the report gives medians)")
    ap.add_argument("--placements", default="inline,process")
    ap.add_argument("--process-ks", default="1,4,8", help="the Ks for the engine in vLLM's own process")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--images", type=Path, help="a folder for the plot (PNG and SVG)")
    ap.add_argument("--replot", type=Path, help="draw the plot of an earlier --json report, measure nothing")
    ap.add_argument("--pool", type=Path, nargs="+", help="pool the rounds' ratios of these earlier --json reports "
                    "(write --markdown, or print) and exit")
    a = ap.parse_args(argv)
    if a.pool:
        text = pooled_markdown(pooled([json.loads(f.read_text()) for f in a.pool]))
        (a.markdown.write_text(text + "\n") if a.markdown else print(text))
        return 0
    if a.rounds < 1:
        ap.error(f"--rounds must be at least 1, not {a.rounds}")
    if a.replot:
        from viz.report import write_images

        write_images({"concurrency": figure(json.loads(a.replot.read_text()))}, a.images or a.replot.parent)
        return 0
    ks = [int(k) for k in a.ks.split(",")]
    report = {"command": "python -m bench.concurrency " + " ".join(argv if argv is not None else sys.argv[1:]),
              "tokens": a.tokens, "n": a.n, "rounds": a.rounds, "prompt": PROMPT, "ladder": LADDER, "placements": {}}
    for placement in a.placements.split(","):
        t0 = time.perf_counter()
        lm = load_model(backend="vllm", placement=placement)
        report.setdefault("load_s", {})[placement] = time.perf_counter() - t0
        report["machine"] = machine(lm)
        chosen = [int(k) for k in a.process_ks.split(",")] if placement == "process" else ks
        report["placements"][placement] = measure(lm, chosen, a.tokens, a.n, a.rounds)
        lm.close()
    text = markdown(report)
    print("\n" + text)
    if a.json:
        a.json.write_text(json.dumps(report, indent=2))
    if a.markdown:
        a.markdown.write_text(text)
    if a.images:
        from viz.report import write_images

        write_images({"concurrency": figure(report)}, a.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
