"""Colours shared by every figure: colour-blind-safe (Okabe-Ito for categories)."""

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
