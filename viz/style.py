"""Colours shared by every figure: colour-blind-safe (Okabe-Ito for categories); and counted words."""

from html import escape
from typing import Sequence

# Okabe & Ito's palette, distinguishable with the common colour-vision deficiencies.
METHOD_COLOURS = {
    "esamp": "#D55E00",  # vermillion
    "plain": "#0072B2",  # blue
    "fire": "#009E73",  # bluish green
    "min-p": "#CC79A7",  # reddish purple
    "esamp-noise": "#E69F00",  # orange: the ablation, near ESamp's vermillion
}
EXTRA_COLOURS = ["#56B4E9", "#F0E442", "#000000", "#999999"]


def colour_for(label: str, index: int = 0) -> str:
    """A run label's colour: its method's ("esamp β=0.25" is esamp's), else a spare one by index."""
    method = label.split(" ")[0]
    return METHOD_COLOURS.get(method) or EXTRA_COLOURS[index % len(EXTRA_COLOURS)]


def plotly_text(text: object) -> str:
    """Text for a plotly label, title or hover: plotly renders a few HTML tags (<b>, <a href>, <br>),
    so <, > and & are escaped; quotes are not, since plotly would show their entities as written."""
    return escape(str(text), quote=False)


def count(n: int, noun: str) -> str:
    """"1 token", "2 tokens", "0 tokens": a count and its noun (a regular plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per run label: each method keeps its own hue, and the runs of one method (a β or a
    temperature ladder, given in order) get shades of it from light to dark."""
    by_method: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        by_method.setdefault(label.split(" ")[0], []).append(label)
    out = {}
    for k, (method, runs) in enumerate(by_method.items()):
        base = colour_for(method, k)
        for i, label in enumerate(runs):
            out[label] = base if len(runs) == 1 else _shade(base, i / (len(runs) - 1))
    return out


def _shade(hex_colour: str, t: float) -> str:
    """``hex_colour`` mixed with white (t = 0: 45% white) through itself to black (t = 1: 40% black)."""
    rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    mix = 0.45 * (1 - 2 * t) if t < 0.5 else -0.4 * (2 * t - 1)
    to = 255 if mix > 0 else 0
    return "#" + "".join(f"{round(c + (to - c) * abs(mix)):02X}" for c in rgb)
