"""What the pages load: models and the embedder (one copy per process, shared by every
session, never mutated: runs keep their own distillers), the run history, and cached
embeddings and projections of answers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import streamlit as st

from core import LanguageModel, load_model
from core.config import BACKENDS
from viz import spread

from . import serving
from .history import History, HistoryError, default_path


@st.cache_resource(show_spinner="Loading the model (the first time converts the embedded GGUF, ~1 min)…")
def get_model(name: str, backend: str = "transformers", safetensors_only: bool = False) -> LanguageModel:
    """One copy per model name and backend; ``""`` is the embedded default. Remote code never runs."""
    return load_model(name or None, backend=backend, safetensors_only=safetensors_only)


def backends() -> list[str]:
    """The backends this installation has: vLLM is optional."""
    return [b for b in BACKENDS if b != "vllm" or importlib.util.find_spec("vllm") is not None]


@st.cache_resource(show_spinner="Loading the sentence embedder…")
def get_embedder():
    return spread.load_embedder()


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
