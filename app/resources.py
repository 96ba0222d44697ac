"""What the pages load: models and the embedder (one copy per process, shared by every
session, never mutated: runs keep their own distillers), the run history, and cached
embeddings and projections of answers."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import streamlit as st

from core import LanguageModel, load_model
from viz import spread

from . import serving
from .history import History, HistoryError, default_path


log = logging.getLogger(__name__)

# Loading a model and loading the embedder both import from transformers, whose lazy module is not
# safe to import from two threads at once ("cannot import name 'AutoConfig'"): one load at a time.
_loading = threading.Lock()


@st.cache_resource(show_spinner="Loading the model (the first time converts the embedded GGUF, ~1 min)…")
def get_model(name: str, backend: str = "transformers", safetensors_only: bool = False) -> LanguageModel:
    """One copy per model name and backend; ``""`` is the embedded default (on a server: whichever it
    serves). Remote code never runs."""
    policy = serving.policy()
    where = {"url": policy.server, "api_key": policy.server_key} if backend == serving.SERVER else {}
    with _loading:
        return load_model(name or None, backend=backend, safetensors_only=safetensors_only, **where)


@st.cache_resource(show_spinner="Loading the sentence embedder…")
def get_embedder():
    with _loading:
        return spread.load_embedder()


@st.cache_resource(show_spinner=False)
def warm_up() -> threading.Thread:
    """Once per process, in the background, so that the first Generate does not wait for them: load
    the default model (unless ``ESAMP_PRELOAD=0``), the embedder, and compile UMAP (numba: ~18 s
    on 2 cores)."""
    policy = serving.policy()

    def work():
        if policy.preload:
            try:
                get_model("", policy.backend, safetensors_only=policy.served)
            except Exception:  # noqa: BLE001 - the Generate that needs it shows the error
                log.exception("preloading the default model failed")
        with _loading:
            embedder = spread.load_embedder()
        spread.project_2d(spread.embed([f"warm-up {i}" for i in range(spread.MIN_UMAP_POINTS)], embedder))

    thread = threading.Thread(target=work, name="esamp-warm-up", daemon=True)
    thread.start()
    return thread


def history_path() -> Path:
    """``streamlit run app/streamlit_app.py -- --history PATH``, else ``$ESAMP_HISTORY_DB``, else
    the user's data directory."""
    args = sys.argv[1:]
    return Path(args[args.index("--history") + 1]) if "--history" in args[:-1] else default_path()


@st.cache_resource
def get_history(path: Path, keep: int | None) -> History:
    return History(path, keep=keep)


def open_history() -> tuple[History | None, str]:
    """The run history, or None and what is wrong with it (a damaged file must not stop the app)."""
    try:
        return get_history(history_path(), serving.policy().limits.max_runs), ""
    except (HistoryError, ValueError) as exc:
        return None, str(exc)


@st.cache_data(max_entries=64, show_spinner=False)
def embeddings(texts: tuple[str, ...]) -> np.ndarray:
    return spread.embed(list(texts), get_embedder())


@st.cache_data(max_entries=64, show_spinner=False)
def projection(texts: tuple[str, ...], seed: int) -> spread.Projection:
    return spread.project_2d(embeddings(texts), seed)
