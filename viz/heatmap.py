"""Novelty heatmaps over generated text: an HTML string (for st.html and standalone files) and
a plotly figure (samples x positions).

Everything from the model or the user is HTML-escaped, attributes included. The HTML needs
no script: hovering a token shows its values through the ``title`` attribute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

from core.trace import RunTrace, Sample, Token

from .style import count


@dataclass(frozen=True)
class Signal:
    label: str
    value: Callable[[Token], float | None]
    diverging: bool  # signed: a diverging scale centred on 0
    help: str
    scale: tuple[float, float] | None = None  # a fixed colour range that means the same in every run
    note: str = ""  # how to read the scale, shown with the legend


SIGNALS: dict[str, Signal] = {
    "rel_novelty": Signal("relative novelty ‖e‖/‖h‖", lambda t: t.rel_novelty, False,
                          "how badly the distiller predicted this context: ||h - ĥ|| / ||h||", scale=(0.0, 1.5),
                          note="0 = predicted exactly · 1 = no better than predicting nothing · above 1 = worse"),
    "novelty": Signal("novelty ‖e‖", lambda t: t.novelty, False,
                      "distiller error ||h - ĥ||: high where the context is new to this prompt's samples"),
    "logp_gain": Signal("where ESamp changed the pick (log p new − ref)", lambda t: t.logp_new - t.logp_ref, True,
                        "how much ESamp raised (+) or lowered (−) the chosen token's log-probability",
                        note="white = unchanged (all of plain sampling) · purple = ESamp made this token more "
                             "likely · orange = less likely"),
    "kl": Signal("how far ESamp pushed (KL, nats)", lambda t: t.kl, False,
                 "KL(p after || p before) of this token's step: how far fusion moved the distribution it was "
                 "drawn from", scale=(0.0, 1.0),
                 note="palest = not moved (all of plain sampling) · darkest = moved a nat or more"),
    "entropy": Signal("entropy (nats)", lambda t: t.entropy_ref, False,
                      "uncertainty of the reference distribution the token came from"),
    "p_ref": Signal("p ref", lambda t: math.exp(t.logp_ref), False,
                    "probability of the chosen token before reweighting"),
}

# ColorBrewer schemes, safe for the common colour-vision deficiencies.
SEQUENTIAL, DIVERGING = "YlGnBu", "PuOr"


def signal_values(samples: Sequence[Sample], signal: str) -> list[float]:
    get = _signal(signal).value
    return [v for s in samples for t in s.tokens if (v := get(t)) is not None and math.isfinite(v)]


def signal_range(traces: Sequence[RunTrace], signal: str) -> tuple[float, float]:
    """One colour range for several runs, so side-by-side heatmaps compare: the signal's fixed
    scale, or the 2nd to 98th percentiles (so one outlier does not wash out the rest)."""
    if _signal(signal).scale:
        return _signal(signal).scale
    vals = sorted(v for tr in traces for v in signal_values(tr.samples, signal))
    if not vals:
        return (0.0, 1.0)
    lo, hi = vals[int(0.02 * (len(vals) - 1))], vals[int(0.98 * (len(vals) - 1))]
    if _signal(signal).diverging:
        m = max(abs(lo), abs(hi)) or 1.0
        return (-m, m)
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _signal(name: str) -> Signal:
    if name not in SIGNALS:
        raise ValueError(f"`signal` must be one of {list(SIGNALS)}, but is {name!r}.")
    return SIGNALS[name]


def colour(value: float | None, lo: float, hi: float, diverging: bool) -> tuple[str, str]:
    """(background, text colour) for a value; grey when there is no value."""
    from plotly.colors import sample_colorscale

    if value is None or not math.isfinite(value):
        return "#eeeeee", "#333333"
    x = min(max((value - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.5
    rgb = sample_colorscale(DIVERGING if diverging else SEQUENTIAL, [x])[0]  # "rgb(r, g, b)"
    r, g, b = (float(c) for c in rgb[rgb.index("(") + 1:-1].split(","))
    luminance = (0.299 * r + 0.587 * g + 0.114 * b) / 255
    return rgb, ("#111111" if luminance > 0.55 else "#ffffff")


def merged_tokens(sample: Sample, upto: int | None = None) -> list[tuple[str, Token, int]]:
    """(visible text, token whose values it shows, byte tokens merged) per displayed piece, for
    the first ``upto`` tokens (all by default).

    A token with an empty piece ends mid-character; it joins the token that completes it.
    """
    out: list[tuple[str, Token, int]] = []
    pending = 0
    for t in sample.tokens[:upto]:
        if t.text == "":
            pending += 1
            continue
        out.append((t.text, t, pending))
        pending = 0
    return out


def visible(text: str) -> str:
    """Escaped text with newlines and tabs shown as marks (and still breaking the line)."""
    return (escape(text).replace("\n", '<span class="esx-nl">↵</span>\n')
            .replace("\t", '<span class="esx-nl">⇥</span>\t'))


def tooltip(token: Token, signal: str, merged: int) -> str:
    lines = [f"{SIGNALS[signal].label}: {_fmt(SIGNALS[signal].value(token))}",
             f"token {token.id} {token.text!r}" + (f" (+{merged} byte tokens)" if merged else ""),
             f"novelty ‖e‖: {_fmt(token.novelty)}   relative: {_fmt(token.rel_novelty)}",
             f"log p: {token.logp_ref:.3f} → {token.logp_new:.3f}",
             f"entropy: {token.entropy_ref:.2f} → {token.entropy_new:.2f} nats",
             "top candidates  p ref → p new:"]
    lines += [f"  {c.text!r}  {c.p_ref:.3f} → {c.p_new:.3f}" for c in token.top]
    return escape("\n".join(lines), quote=True)


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


CSS = """
.esx-heatmap{font-family:ui-sans-serif,system-ui,sans-serif;font-size:14px;line-height:1.9}
.esx-sample{margin:0 0 .8em 0;padding:.4em .6em;border:1px solid #ddd;border-radius:6px;background:#fff}
.esx-head{font-size:12px;color:#555;margin-bottom:.2em}
.esx-text{white-space:pre-wrap;word-break:break-word;color:#111}
.esx-tok{border-radius:3px;padding:1px 0;cursor:help}
.esx-nl{opacity:.55;font-size:11px}
.esx-legend{display:flex;flex-wrap:wrap;align-items:center;gap:.2em .5em;font-size:12px;line-height:1.4;color:#444;
  margin:.3em 0 .6em 0}
.esx-legend>span{flex:0 0 auto;max-width:100%}
.esx-bar{height:12px;width:160px;border-radius:3px;border:1px solid #ccc}
.esx-note{color:#666}
"""


def legend_html(signal: str, lo: float, hi: float) -> str:
    sig = _signal(signal)
    stops = ",".join(colour(lo + (hi - lo) * i / 10, lo, hi, sig.diverging)[0] for i in range(11))
    note = f'<span class="esx-note">{escape(sig.note)}</span>' if sig.note else ""
    return (f'<div class="esx-legend" title="{escape(sig.help, quote=True)}">'
            f'<span style="font-weight:600">{escape(sig.label)}</span>'
            f'<span>{lo:.2f}</span><span class="esx-bar" style="background:linear-gradient(to right,{stops})">'
            f'</span><span>{hi:.2f}</span>{note}</div>')


def sample_html(sample: Sample, signal: str, lo: float, hi: float, header: str | None = None,
                upto: int | None = None) -> str:
    sig = _signal(signal)
    spans = []
    for text, token, merged in merged_tokens(sample, upto):
        bg, fg = colour(sig.value(token), lo, hi, sig.diverging)
        spans.append(f'<span class="esx-tok" style="background:{bg};color:{fg}" '
                     f'title="{tooltip(token, signal, merged)}">{visible(text)}</span>')
    if header is None:
        header = (f"prompt {sample.prompt_index + 1} · answer {sample.sample_index + 1} · {sample.finish_reason} · "
                  + count(len(sample.tokens), "token"))
    body = "".join(spans) or '<span class="esx-nl">(no tokens)</span>'
    return (f'<div class="esx-sample"><div class="esx-head">{escape(header)}</div>'
            f'<div class="esx-text">{body}</div></div>')


def heatmap_html(trace: RunTrace, signal: str = "rel_novelty", samples: Sequence[int] | None = None,
                 value_range: tuple[float, float] | None = None, legend: bool = True, upto: int | None = None) -> str:
    """HTML for the chosen samples (indices into ``trace.samples``; default all), coloured by signal.

    Pass ``value_range`` (e.g. from ``signal_range`` over several runs) to share a scale, and
    ``upto`` to show only each sample's first tokens (a generation building up).
    """
    chosen = [trace.samples[i] for i in samples] if samples is not None else trace.samples
    lo, hi = value_range or signal_range([trace], signal)
    parts = [f"<style>{CSS}</style>", '<div class="esx-heatmap">']
    if legend:
        parts.append(legend_html(signal, lo, hi))
    parts += [sample_html(s, signal, lo, hi, upto=upto) for s in chosen]
    parts.append("</div>")
    return "".join(parts)


LIVE_MARK = "#FBE3D6"  # a light wash of ESamp's vermillion: where an answer has left plain sampling's


def live_html(columns: Sequence[tuple[str, Sequence[Sequence[str]]]], per_prompt: int) -> str:
    """Answers growing while they are generated: one column per run (label, each row's token pieces so
    far; row = prompt * ``per_prompt`` + sample), side by side. The first column is the reference (plain
    sampling, same seed): in the others, each answer's tokens from where it left the reference answer of
    the same row on are washed in ESamp's colour. Model text is escaped."""
    reference = columns[0][1] if columns else ()
    cells = []
    for k, (label, answers) in enumerate(columns):
        rows = []
        for r, pieces in enumerate(answers):
            same = reference[r] if k and r < len(reference) else pieces
            fork = next((i for i, p in enumerate(pieces) if i >= len(same) or same[i] != p), len(pieces))
            kept, moved = visible("".join(pieces[:fork])), visible("".join(pieces[fork:]))
            mark = f'<span style="background:{LIVE_MARK}">{moved}</span>' if moved else ""
            rows.append(f'<div class="esx-sample"><div class="esx-head">answer {r % per_prompt + 1} · '
                        f'{count(len(pieces), "token")}</div><div class="esx-text">{kept}{mark}'
                        f'{"" if pieces else "…"}</div></div>')
        cells.append(f'<div><div style="font-weight:600;margin:.2em 0">{escape(label)}</div>{"".join(rows)}</div>')
    grid = f'<div style="display:grid;grid-template-columns:repeat({max(len(cells), 1)},1fr);gap:1em">'
    return f'<style>{CSS}</style><div class="esx-heatmap">{grid}{"".join(cells)}</div></div>'
