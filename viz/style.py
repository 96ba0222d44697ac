"""Colours shared by every figure: colour-blind-safe (Okabe-Ito for categories)."""

from html import escape

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
