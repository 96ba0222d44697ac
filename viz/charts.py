"""Charts: distiller loss per step, novelty along the position, diversity vs perplexity, pass@k."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from core.trace import RunTrace

from .style import EXTRA_COLOURS, METHOD_COLOURS, colour_for, count, plotly_text
from .summary import novelty_columns, token_label


def _layout(fig, title: str, x: str, y: str, height: int = 360):
    fig.update_layout(title=plotly_text(title), xaxis_title=x, yaxis_title=y, template="plotly_white", height=height,
                      margin=dict(l=10, r=10, t=50, b=10), legend_title_text="")
    return fig


def loss_figure(traces: Sequence[RunTrace], labels: Sequence[str]):
    """Distiller loss per decode step, mean over prompts, one line per run with a distiller."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, (tr, label) in enumerate(zip(traces, labels)):
        curves = [p.loss for p in tr.prompts if p.loss]
        if not curves:
            continue
        width = max(len(c) for c in curves)
        mean = [float(np.mean([c[i] for c in curves if i < len(c)])) for i in range(width)]
        fig.add_trace(go.Scatter(y=mean, mode="lines", name=plotly_text(label), line=dict(color=colour_for(label, k))))
    return _layout(fig, "Distiller loss per step (mean over prompts)", "decode step", "loss ‖h − f(s)‖²")


def novelty_by_position(trace: RunTrace, relative: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, 25th, 75th percentile) of novelty at each position, over the run's samples."""
    cols = novelty_columns(trace, relative)
    if not cols:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return (np.array([np.mean(c) for c in cols]), np.array([np.percentile(c, 25) for c in cols]),
            np.array([np.percentile(c, 75) for c in cols]))


def novelty_figure(traces: Sequence[RunTrace], labels: Sequence[str], relative: bool = False):
    """Novelty along the position: mean line and interquartile band per run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for k, (tr, label) in enumerate(zip(traces, labels)):
        mean, q25, q75 = novelty_by_position(tr, relative)
        if not len(mean):
            continue
        c = colour_for(label, k)
        x = list(range(len(mean)))
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(q75) + list(q25[::-1]), mode="lines", fill="toself",
                                 fillcolor=c, opacity=0.18, line=dict(width=0), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", name=plotly_text(label), line=dict(color=c)))
    if relative:
        _line_at_one(fig, "no better than predicting nothing")
    return _layout(fig, "Novelty along the answer (mean, interquartile band)", "token position",
                   "relative novelty ‖e‖/‖h‖" if relative else "novelty ‖e‖")


def _line_at_one(fig, meaning: str) -> None:
    """The dotted line at relative novelty 1, said in the plot's top right corner: a label on the line itself
    lay across the curve wherever it was put (a fresh distiller's curve starts above 1 and ends below it)."""
    fig.add_hline(y=1.0, line=dict(color="#888", dash="dot"))
    fig.add_annotation(text=f"dotted line: {meaning}", xref="paper", yref="paper", x=1, y=1, xanchor="right",
                       yanchor="top", showarrow=False, font=dict(color="#666"))


def learning_curves_figure(curves: dict[str, Sequence[float]]):
    """Relative novelty along the answer, one line per distiller ("design, width w"): a colour per
    design, a dash per width; with the line at 1 that means "no better than predicting zero"."""
    import plotly.graph_objects as go

    fig = go.Figure()
    designs = list(dict.fromkeys(label.split(",")[0] for label in curves))
    dashes: dict[str, int] = {}
    for label, ys in curves.items():
        design = label.split(",")[0]
        colour = (METHOD_COLOURS["esamp"] if design == designs[0]
                  else EXTRA_COLOURS[(designs.index(design) - 1) % len(EXTRA_COLOURS)])
        dash = _DASHES[dashes.get(design, 0) % len(_DASHES)]
        dashes[design] = dashes.get(design, 0) + 1
        fig.add_trace(go.Scatter(y=list(ys), mode="lines", name=plotly_text(label), line=dict(color=colour, dash=dash)))
    _line_at_one(fig, "no better than predicting zero")
    return _layout(fig, "Does the distiller learn within one generation?", "decode step",
                   "relative novelty ‖h − ĥ‖ / ‖h‖")


BROKEN_COLOUR = "#000000"  # a black cross over the point: told apart by its shape from every method's colour


def sweep_figure(points: Sequence[dict], highlight: tuple[str, str] | None = None, height: int = 360,
                 colours: dict[str, str] | None = None):
    """Diversity against perplexity across a sweep. points: dicts with 'series' (e.g. 'esamp'),
    'setting' (e.g. 'β=0.25'), 'diversity', 'perplexity', and optionally their standard errors
    'diversity_se', 'perplexity_se', or an interval 'diversity_low', 'diversity_high' (drawn as
    error bars), and 'broken' (True: more of its answers are broken than plain sampling's, crossed
    out); one line per series, in order. ``highlight``: the (series, setting) point ringed;
    ``colours``: a series' colour where its method's would not tell it apart."""
    import plotly.graph_objects as go

    fig = go.Figure()
    mark = [p for p in points if highlight and (p["series"], p["setting"]) == tuple(highlight)]
    if mark:  # first, so that the labels are drawn over the ring, not under it
        fig.add_trace(go.Scatter(x=[mark[0]["perplexity"]], y=[mark[0]["diversity"]], mode="markers",
                                 name=plotly_text(f"now: {mark[0]['setting']}"), hoverinfo="skip",
                                 marker=dict(size=24, symbol="circle-open", line=dict(width=3, color="#000000"))))
    for k, series in enumerate(dict.fromkeys(p["series"] for p in points)):
        pts = [p for p in points if p["series"] == series]
        colour = (colours or {}).get(series) or colour_for(series, k)
        bars = {}
        if all("diversity_se" in p and "perplexity_se" in p for p in pts):
            bars = dict(error_x=dict(type="data", array=[p["perplexity_se"] for p in pts], thickness=1),
                        error_y=dict(type="data", array=[p["diversity_se"] for p in pts], thickness=1))
        elif all("diversity_low" in p for p in pts):
            bars = dict(error_y=dict(type="data", symmetric=False, thickness=1,
                                     array=[_gap(p["diversity_high"], p["diversity"]) for p in pts],
                                     arrayminus=[_gap(p["diversity"], p["diversity_low"]) for p in pts]))
        fig.add_trace(go.Scatter(
            x=[p["perplexity"] for p in pts], y=[p["diversity"] for p in pts], mode="lines+markers+text",
            # labels above the first line's points and below the next one's: where two lines share a point
            # (plain sampling is β = 0 and T = 1 at once) both stay readable
            text=[plotly_text(str(p["setting"])) for p in pts], textposition="top center" if k % 2 == 0 else
            "bottom center", name=plotly_text(series),
            marker=dict(size=10, color=colour), line=dict(color=colour), **bars))
    broken = [p for p in points if p.get("broken")]
    if broken:  # over the lines: a crossed point is not a better trade-off, whatever its place
        fig.add_trace(go.Scatter(x=[p["perplexity"] for p in broken], y=[p["diversity"] for p in broken],
                                 mode="markers", name="more broken answers than plain's", hoverinfo="skip",
                                 marker=dict(size=18, symbol="x-thin-open", color=BROKEN_COLOUR,
                                             line=dict(width=3, color=BROKEN_COLOUR))))
    shown = [x for p in points if (x := p.get("perplexity")) is not None and np.isfinite(x) and x > 0]
    wide = bool(shown) and max(shown) > LOG_PERPLEXITY * min(shown)
    if wide:  # one hot temperature at 280 squeezed every other point into the left tenth of the chart
        # ticks at 1, 2, 5 times a power of ten, written whole (plotly's own write 20 as "2")
        ticks = [m * 10 ** e for e in range(int(np.floor(np.log10(min(shown)))), int(np.ceil(np.log10(max(shown)))) + 1)
                 for m in (1, 2, 5) if min(shown) / 1.5 <= m * 10 ** e <= max(shown) * 1.5]
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    return _layout(fig, "Diversity vs perplexity (up and left is better)",
                   "perplexity (log scale; lower = more fluent)" if wide else "perplexity (lower = more fluent)",
                   "semantic diversity (mean cosine distance)", height)


LOG_PERPLEXITY = 5  # perplexities further apart than this factor go on a log axis


def _gap(a: float, b: float) -> float:
    """A non-negative error-bar length (0 where an end is unknown)."""
    return max(a - b, 0.0) if np.isfinite(a) and np.isfinite(b) else 0.0


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def pass_at_k_figure(curves: dict[str, Sequence[float]]):
    """pass@k for k = 1..len(curve), one line per method."""
    import plotly.graph_objects as go

    fig = go.Figure()
    seen: dict[str, int] = {}  # lines so far per colour: settings of one method share it and differ in dash
    for k, (label, ys) in enumerate(curves.items()):
        colour = colour_for(label, k)
        dash = _DASHES[seen.get(colour, 0) % len(_DASHES)]
        seen[colour] = seen.get(colour, 0) + 1
        fig.add_trace(go.Scatter(x=list(range(1, len(ys) + 1)), y=list(ys), mode="lines+markers",
                                 name=plotly_text(label), line=dict(color=colour, dash=dash)))
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(tickmode="linear", tick0=1, dtick=1)  # k is a whole number of samples
    fig = _layout(fig, "pass@k (unbiased estimator)", "k", "pass@k")
    by_curve: dict[tuple, list[str]] = {}
    for label, ys in curves.items():
        by_curve.setdefault(tuple(ys), []).append(label)
    hidden = [labels for labels in by_curve.values() if len(labels) > 1]  # drawn on top of each other
    for k, labels in enumerate(hidden):
        fig.add_annotation(text=plotly_text(", ".join(labels) + ": the same curve, drawn on top of each other"),
                           showarrow=False, xref="paper", yref="paper", x=0.02, xanchor="left", y=0.97 - 0.07 * k)
    return fig


def candidates_figure(token, beta: float):
    """One fusion step: the top candidates' probabilities before and after ESamp's reweighting."""
    import plotly.graph_objects as go

    names = [plotly_text(token_label(c.text, c.id)) for c in token.top]
    fig = go.Figure([
        go.Bar(name="before (p ref)", x=names, y=[c.p_ref for c in token.top], marker_color="#0072B2"),
        go.Bar(name=f"after (β={beta:g})", x=names, y=[c.p_new for c in token.top], marker_color="#D55E00"),
    ])
    fig.update_layout(barmode="group")
    return _layout(fig, "Top candidates before and after fusion", "candidate token", "probability", height=320)


def fork_figure(found: dict[str, Sequence], warmup: int = 0):
    """Where each β's answers part from plain sampling's: one row of points per β (``found``: label ->
    viz.fork.Fork list), at the 1-based token of the fork; answers that never part are left out (the
    sentence beside it counts them). ``warmup``: ESamp's warm-up steps; its first warmup + 1 tokens are
    unguided, shaded (no fork falls there)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colour = colour_for("esamp")
    for label, forks in found.items():
        xs = [f.position + 1 for f in forks if f.position is not None]
        fig.add_trace(go.Box(x=xs, name=plotly_text(label), boxpoints="all", jitter=0.4, pointpos=0,
                             orientation="h", marker=dict(color=colour, size=8), line=dict(color=colour),
                             fillcolor="rgba(0,0,0,0)",
                             hovertext=[plotly_text(f"answer #{f.sample_index + 1}: token {f.position + 1}")
                                        for f in forks if f.position is not None], hoverinfo="text"))
    if warmup:
        fig.add_vrect(x0=0.5, x1=warmup + 1.5, fillcolor="#999999", opacity=0.15, line_width=0,
                      annotation_text="unguided: first token and warm-up", annotation_position="top left")
    fig.update_layout(showlegend=False)
    positions = [f.position for forks in found.values() for f in forks if f.position is not None]
    if positions and max(positions) - min(positions) < 10:
        fig.update_xaxes(dtick=1)  # a fork is at a whole token: over a few tokens plotly would tick 2.5
    return _layout(fig, "Where each answer parts from plain sampling's (same seed)", "token of the fork",
                   "", height=140 + 50 * len(found))


def tree_figure(root, signal: str = "rel_novelty", label_chars: int = 18):
    """A prompt's answers as a tree (viz.tree): x is the token position, one row per branch's end;
    each node is a segment as thick as the answers through it, coloured by its tokens' mean
    ``signal`` ("rel_novelty", or "logp_gain": how much fusion raised the chosen tokens' log p), with
    its text (cut to ``label_chars``); a point at each node's start carries its index for a click."""
    import plotly.graph_objects as go

    from .tree import layout

    placed = layout(root)
    most = max((len(n.samples) for n, _, _ in placed), default=1)
    values = [_node_value(n, signal) for n, _, _ in placed]
    fig = go.Figure()
    rows = {id(n): r for n, r, _ in placed}
    for node, row, parent in placed:  # an elbow from the parent's end down to the row, then the node's tokens
        up = row if parent is None else rows[id(parent)]
        fig.add_trace(go.Scatter(x=[node.start, node.start, node.start + len(node.tokens)], y=[up, row, row],
                                 mode="lines", hoverinfo="skip",
                                 line=dict(width=1 + 7 * len(node.samples) / most, color="#888888"),
                                 showlegend=False))
    fig.add_trace(go.Scatter(
        x=[n.start + len(n.tokens) / 2 for n, _, _ in placed], y=[r for _, r, _ in placed], mode="markers+text",
        text=[plotly_text(_cut(n.text, label_chars)) for n, _, _ in placed], textposition="top center",
        textfont=dict(size=14, color="#111111"),  # readable on a projector: dark, not plotly's faint default
        customdata=list(range(len(placed))), showlegend=False,
        hovertext=[plotly_text(f"{count(len(n.samples), 'answer')} · tokens {n.start + 1}-{n.start + len(n.tokens)}: "
                               f"{_cut(n.text, 80)}") for n, _, _ in placed], hoverinfo="text",
        marker=dict(size=[8 + 10 * len(n.samples) / most for n, _, _ in placed], color=values,
                    colorscale="YlGnBu", showscale=True, colorbar=dict(title=signal.replace("_", " ")))))
    fig.update_yaxes(visible=False)
    return _layout(fig, "The answers as a tree: shared beginnings are shared branches", "token position", "",
                   height=160 + 40 * max(1, len([n for n, _, _ in placed if not n.children])))  # room for a label


def _node_value(node, signal: str) -> float:
    if signal == "logp_gain":
        vals = [t.logp_new - t.logp_ref for t in node.tokens]
    else:
        vals = [getattr(t, signal) for t in node.tokens if getattr(t, signal) is not None]
    return float(np.mean(vals)) if vals else 0.0


def _cut(text: str, chars: int) -> str:
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= chars else text[:chars - 1] + "…"


def distance_strip_figure(runs: dict[str, np.ndarray], colours: dict[str, str] | None = None, height: int = 260):
    """How far apart each run's answers are: every pairwise cosine distance between a run's answers
    (one row of points per run, ``runs``: label -> (n, D) embeddings) with their mean, the diversity
    metric, as a dashed line. What a 2-D map of neighbourhoods (UMAP) cannot show: the spread itself."""
    import plotly.graph_objects as go

    from .metrics import pairwise_cosine_distances

    fig = go.Figure()
    for k, (label, emb) in enumerate(runs.items()):
        colour = (colours or {}).get(label) or colour_for(label, k)
        fig.add_trace(go.Box(x=pairwise_cosine_distances(emb), name=plotly_text(label), orientation="h",
                             boxpoints="all", jitter=0.6, pointpos=0, boxmean=True, marker=dict(color=colour, size=4),
                             line=dict(color=colour), fillcolor="rgba(0,0,0,0)", hoverinfo="x"))
    fig.update_xaxes(range=[0, max(1.0, *(float(pairwise_cosine_distances(e).max(initial=0)) for e in runs.values()))])
    fig.update_layout(showlegend=False)
    return _layout(fig, "How far apart a run's answers are (dashed: their mean)",
                   "cosine distance between two answers", "", height)
