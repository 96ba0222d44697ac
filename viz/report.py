"""One self-contained HTML report per run or comparison: prompt, settings, metrics, spread,
charts and heatmaps. plotly.js is embedded, so the file opens offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Sequence

import plotly.io as pio

from core.trace import RunTrace

from . import charts, heatmap, spread
from .style import run_colours
from .summary import (RunSummary, colour_order, diversity, ladder, noise_sentence, run_label, split_by_run,
                      summarize_runs, tradeoff_points)

# Several prompts: means over them. One prompt (the app's case) shows what the app shows instead.
_COLUMNS = [("label", "run"), ("samples", "samples"), ("tokens_per_s", "tokens/s"),
            ("mean_novelty", "mean novelty ‖e‖"), ("cosine_distance", "cosine distance ↑"), ("vendi", "Vendi ↑"),
            ("distinct_2", "distinct-2 ↑"), ("self_bleu", "self-BLEU ↓"), ("perplexity", "perplexity ↓")]


def _cell(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else escape(str(v))


def rows_table_html(rows: Sequence[dict]) -> str:
    """A table of dicts (one row each, the same keys; numbers rounded as they should show), escaped."""
    if not rows:
        return ""
    head = "".join(f"<th>{escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{'–' if v is None else escape(str(v))}</td>" for v in r.values())
                   + "</tr>" for r in rows)
    return f'<table class="esx-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def metrics_table_html(summaries: Sequence[RunSummary]) -> str:
    head = "".join(f"<th>{escape(t)}</th>" for _, t in _COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{_cell(getattr(s, k))}</td>" for k, _ in _COLUMNS) + "</tr>"
                   for s in summaries)
    return f'<table class="esx-table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def settings_html(trace: RunTrace) -> str:
    s, e = trace.config.sampling, trace.config.esamp
    items = [("model", trace.model), ("backend", f"{trace.backend} · {trace.device} · {trace.dtype}"),
             ("samples per prompt", s.n), ("max new tokens", s.max_new_tokens), ("temperature", s.temperature),
             ("top-k", s.top_k), ("top-p", s.top_p), ("min-p", s.min_p), ("seed", s.seed),
             ("distiller", f"{e.scope} scope, lr {e.lr:g}, {e.blocks} blocks × {e.intermediate}"),
             ("chat template", trace.config.chat), ("created", trace.created)]
    return "<dl class='esx-dl'>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in items) + "</dl>"


CSS = """
body{font-family:ui-sans-serif,system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#111}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
.esx-prompt{white-space:pre-wrap;background:#f6f6f6;padding:.6em;border-radius:6px}
.esx-table{border-collapse:collapse;font-size:13px}
.esx-table td,.esx-table th{border:1px solid #ddd;padding:4px 8px;text-align:right}
.esx-table td:first-child,.esx-table th:first-child{text-align:left}
.esx-dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px} .esx-dl dt{color:#555}
.esx-cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1em}
"""


@dataclass
class Report:
    """What a report shows, computed once (the embedding is the slow part)."""

    traces: Sequence[RunTrace]
    labels: list[str]
    summaries: list[RunSummary]
    figures: dict  # plotly figures by name: spread, (one prompt) where each β sits, novelty, loss
    rows: list[dict] = field(default_factory=list)  # one prompt: the app's metrics table, with 95% intervals
    sentences: list[str] = field(default_factory=list)  # one prompt: each β against plain, beyond noise or not


def prepare(traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] | None = None,
            embedder=None, seed: int = 0, max_n: int | None = None) -> Report:
    """Embed the answers once, then summarise the runs and draw the figures.
    perplexities[i] are run i's per-sample perplexities, if known; ``max_n``: the most answers a
    user could have asked for (no advice to ask for more past it)."""
    if not traces:
        raise ValueError("a report needs at least one run trace.")
    labels = [run_label(t) for t in traces]
    texts = [s.text for t in traces for s in t.samples]
    groups = [label for t, label in zip(traces, labels) for _ in t.samples]
    emb = spread.embed(texts, embedder)
    figures = {"spread": spread.spread_figure(texts, groups, spread.project_2d(emb, seed),
                                              "Semantic spread of the answers",
                                              colours=run_colours(colour_order(traces)))}
    rows, sentences = [], []
    if len(traces[0].prompts) == 1:  # what the app shows for one prompt: the same summary
        per_run = split_by_run(traces, emb)
        stats = [diversity(t, e, perplexities[i] if perplexities else None) for i, (t, e) in
                 enumerate(zip(traces, per_run))]
        rows = [{k: v for k, v in d.as_row().items() if k} for d in stats]
        rungs = ladder(traces)
        if 0.0 in rungs:
            base = rungs[0.0]
            sentences = [noise_sentence(labels[base], per_run[base], labels[i], per_run[i], max_n=max_n,
                                        broken=(stats[base].broken, stats[i].broken),
                                        lengths=(stats[base].mean_tokens, stats[i].mean_tokens))
                         for b, i in rungs.items() if b > 0]
        figures["tradeoff"] = charts.sweep_figure(tradeoff_points(traces, stats))
    figures["novelty"] = charts.novelty_figure(traces, labels, relative=True)
    figures["loss"] = charts.loss_figure(traces, labels)
    return Report(traces, labels, summarize_runs(traces, emb, perplexities), figures, rows, sentences)


def metrics_html(report: Report) -> str:
    """One prompt: the app's table (95% bootstrap intervals over the answers, relative novelty) and
    a sentence per β on noise; several prompts: means over them."""
    if not report.rows:
        return metrics_table_html(report.summaries)
    said = "".join(f"<p>{escape(s)}</p>" for s in report.sentences)
    return (rows_table_html(report.rows) + "<p>95% intervals by bootstrap over the answers.</p>" + said)


def render_html(report: Report, signal: str = "rel_novelty") -> str:
    """The report as one self-contained HTML string (plotly.js inline)."""
    import plotly.offline

    traces, labels = report.traces, report.labels
    fig_html = "".join(f.to_html(full_html=False, include_plotlyjs=False) for f in report.figures.values())
    value_range = heatmap.signal_range(traces, signal)
    columns = "".join(f"<div><h3>{escape(label)}</h3>{heatmap.heatmap_html(t, signal, value_range=value_range)}</div>"
                      for t, label in zip(traces, labels))
    prompts = "".join(f"<div class='esx-prompt'>{escape(p.text)}</div>" for p in traces[0].prompts)
    title = "ESamp Explorer report: " + ", ".join(labels)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{CSS}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>"
            f"<h1>{escape(title)}</h1><h2>Prompt</h2>{prompts}<h2>Settings</h2>{settings_html(traces[0])}"
            f"<h2>Metrics</h2>{metrics_html(report)}<h2>Pictures</h2>{fig_html}"
            f"<h2>Answers, coloured by {escape(heatmap.SIGNALS[signal].label)}</h2>"
            f"<p>Hover a token for its values and its top candidates before and after reweighting.</p>"
            f"<div class='esx-cols'>{columns}</div></body></html>")


def build_report(traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] | None = None,
                 signal: str = "rel_novelty", embedder=None, seed: int = 0, max_n: int | None = None) -> str:
    """The report of one run or a comparison, as one HTML string (``max_n``: see ``prepare``)."""
    return render_html(prepare(traces, perplexities, embedder, seed, max_n), signal)


def write_images(figures: dict, folder: str | Path) -> list[Path]:
    """Each figure as PNG and SVG (kaleido, which drives the machine's Chrome or Chromium: one browser
    for all of them, ``plotly.io.write_images``, instead of one a file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(fig, folder / f"{name}.{ext}") for name, fig in figures.items() for ext in ("png", "svg")]
    if jobs:
        pio.write_images([f for f, _ in jobs], [p for _, p in jobs], width=900,
                         height=[f.layout.height or 420 for f, _ in jobs])
    return [p for _, p in jobs]


def write_report(traces: Sequence[RunTrace], path: str | Path, images: str | Path | None = None,
                 signal: str = "rel_novelty", perplexities: Sequence[Sequence[float]] | None = None,
                 embedder=None, seed: int = 0) -> list[Path]:
    """Write the report and each run's trace JSON beside it (and, given a folder, each figure as
    PNG and SVG); returns the paths written."""
    path = Path(path)
    report = prepare(traces, perplexities, embedder, seed)
    path.write_text(render_html(report, signal), encoding="utf-8")
    written = [path]
    if images is not None:
        written += write_images(report.figures, images)
    for i, t in enumerate(traces):
        side = path.with_name(f"{path.stem}.run{i}-{t.method}.json")
        t.save(side)
        written.append(side)
    return written
