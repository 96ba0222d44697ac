"""What the pages share: cached resources, the settings form, URL parameters, limits, and the
rendering of a finished comparison. Thin: the work happens in core/ and viz/."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import streamlit as st

from core import EsampConfig, RunConfig, RunTrace, SamplingConfig
from core.cli import command_for
from core import encode_prompts
from core.config import BACKENDS
from core import DEFAULT_MODEL, LanguageModel as LoadedModel, load_model
from viz import charts, heatmap, spread
from viz.summary import run_label, summarize_runs

from .history import History
from .jobs import Job

# Limits that keep the app responsive on a 2-core CPU; the CLI allows more.
MAX_N = 16
MAX_NEW_TOKENS = 256
MAX_PROMPT_CHARS = 4000


_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: str) -> str:
    """Text that may hold user or model input, escaped for Streamlit's markdown (st.error, st.subheader…):
    no link, image, HTML tag or formula can come out of it."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


@st.cache_resource(show_spinner="Loading the model (the first time converts the embedded GGUF, ~1 min)…")
def get_model(name: str, backend: str = "transformers") -> LoadedModel:
    """One copy per model name and backend for every session; never mutated (runs keep their own
    distillers)."""
    return load_model(name or None, backend=backend)


def backends() -> list[str]:
    """The backends this installation has: vLLM is optional."""
    return [b for b in BACKENDS if b != "vllm" or importlib.util.find_spec("vllm") is not None]


@st.cache_resource(show_spinner="Loading the sentence embedder…")
def get_embedder():
    return spread.load_embedder()


@st.cache_resource
def get_history() -> History:
    """The run history: ``streamlit run app/streamlit_app.py -- --history PATH``, else
    ``$ESAMP_HISTORY_DB``, else the user's data directory."""
    args = sys.argv[1:]
    path = args[args.index("--history") + 1] if "--history" in args[:-1] else None
    return History(path)


@st.cache_data(max_entries=64, show_spinner=False)
def embeddings(texts: tuple[str, ...]) -> np.ndarray:
    return spread.embed(list(texts), get_embedder())


@st.cache_data(max_entries=64, show_spinner=False)
def projection(texts: tuple[str, ...], seed: int) -> spread.Projection:
    return spread.project_2d(embeddings(texts), seed)


@dataclass
class Settings:
    prompt: str
    model: str  # "" = embedded default
    config: RunConfig  # the esamp config; other methods reuse its sampling settings
    backend: str = "transformers"

    def for_method(self, method: str) -> RunConfig:
        return dataclasses.replace(self.config, method=method)


_PARAMS = {  # URL key -> (type, default)
    "prompt": (str, "Describe a city in the year 3000."), "model": (str, ""), "n": (int, 4),
    "tokens": (int, 48), "T": (float, 1.0), "top_k": (int, 50), "top_p": (float, 1.0), "min_p": (float, 0.0),
    "seed": (int, 0), "beta": (float, 0.25), "raw": (int, 0), "backend": (str, "transformers"),
}


def url_defaults() -> dict:
    """Settings from the page URL (so a view can be shared); bad values fall back to defaults."""
    out = {}
    for key, (kind, default) in _PARAMS.items():
        raw = st.query_params.get(key)
        try:
            value = kind(raw) if raw is not None else default
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
        except ValueError:
            value = default
        out[key] = value
    return out


def set_url(settings: Settings) -> None:
    s, e = settings.config.sampling, settings.config.esamp
    st.query_params.from_dict({
        "prompt": settings.prompt, "model": settings.model, "n": s.n, "tokens": s.max_new_tokens,
        "T": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p, "seed": s.seed,
        "beta": e.beta, "raw": int(not settings.config.chat), "backend": settings.backend})


def _clamp(v, lo, hi):
    return min(max(v, lo), hi)


def settings_form(key: str) -> tuple[Settings, LoadedModel] | None:
    """The prompt and sampling settings in one form. On a valid submit: the settings and the loaded
    model; otherwise None, with the reason shown next to the widget it concerns."""
    d = url_defaults()
    with st.form(key):
        prompt = st.text_area("Prompt", d["prompt"], height=100, max_chars=MAX_PROMPT_CHARS,
                              help="Model output is shown as text, never as HTML.")
        prompt_error = st.empty()
        c1, c2, c3 = st.columns([2, 3, 2])
        mode = c1.radio("Mode", ["chat", "raw continuation"], index=int(bool(d["raw"])), horizontal=True,
                        help="chat wraps the prompt in the model's chat template")
        model = c2.text_input("Model", d["model"], placeholder=f"{DEFAULT_MODEL} (embedded)",
                              help="Empty: the embedded default. Or any transformers causal LM name or local path.")
        options = backends()
        backend = c3.selectbox("Backend", options, index=options.index(d["backend"]) if d["backend"] in options else 0,
                               help="vllm: the same ESamp inside vLLM (faster on many rows; starting it takes ~20 s)")
        model_error = st.empty()
        beta = st.slider("Exploration strength β", 0.0, 1.0, float(_clamp(d["beta"], 0.0, 1.0)), 0.05,
                         help="0 = plain sampling; the paper's default is 0.25")
        c1, c2, c3 = st.columns(3)
        n = c1.number_input("Samples per prompt (n)", 1, MAX_N, int(_clamp(d["n"], 1, MAX_N)))
        tokens = c2.number_input("Max new tokens", 1, MAX_NEW_TOKENS, int(_clamp(d["tokens"], 1, MAX_NEW_TOKENS)))
        seed = c3.number_input("Seed", 0, 2**31 - 1, int(_clamp(d["seed"], 0, 2**31 - 1)))
        c1, c2, c3, c4 = st.columns(4)
        temperature = c1.number_input("Temperature", 0.05, 5.0, float(_clamp(d["T"], 0.05, 5.0)), 0.05)
        top_k = c2.number_input("Top-k (0 = off)", 0, 1000, int(_clamp(d["top_k"], 0, 1000)))
        top_p = c3.number_input("Top-p (1 = off)", 0.01, 1.0, float(_clamp(d["top_p"], 0.01, 1.0)), 0.01)
        min_p = c4.number_input("Min-p (0 = off)", 0.0, 1.0, float(_clamp(d["min_p"], 0.0, 1.0)), 0.01)
        submitted = st.form_submit_button("Generate", type="primary")
    if not submitted:
        return None
    if not prompt.strip():
        prompt_error.error("Write a prompt first: it is empty.")
        return None
    try:
        config = RunConfig(method="esamp", chat=mode == "chat", esamp=EsampConfig(beta=float(beta)),
                           sampling=SamplingConfig(n=int(n), max_new_tokens=int(tokens), temperature=float(temperature),
                                                   top_k=int(top_k), top_p=float(top_p), min_p=float(min_p),
                                                   seed=int(seed)))
    except ValueError as exc:
        st.error(md(exc))
        return None
    settings = Settings(prompt, model.strip(), config, backend)
    try:
        lm = get_model(settings.model, settings.backend)
    except Exception as exc:  # ModelLoadError, and anything a third-party checkpoint throws
        model_error.error(md(exc))
        return None
    try:
        encode_prompts(lm, [prompt], config.chat, config.sampling.max_new_tokens)  # too long for the context?
    except ValueError as exc:
        prompt_error.error(md(exc))
        return None
    return settings, lm


def signal_picker(key: str) -> str:
    names = list(heatmap.SIGNALS)
    return st.selectbox("Colour tokens by", names, format_func=lambda s: heatmap.SIGNALS[s].label, key=key,
                        help="Changing this never regenerates.")


def metrics_rows(traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] | None) -> list[dict]:
    emb = embeddings(tuple(s.text for t in traces for s in t.samples))
    return [s.as_row() for s in summarize_runs(traces, emb, perplexities)]


def render_comparison(traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] | None, key: str,
                      model: str = "") -> None:
    """Answers side by side with heatmaps, the spread, metrics, charts and the CLI command."""
    labels = [run_label(t) for t in traces]
    signal = signal_picker(f"{key}_signal")
    value_range = heatmap.signal_range(traces, signal)
    prompts = traces[0].prompts
    prompt_index = 0
    if len(prompts) > 1:
        prompt_index = st.selectbox("Prompt", range(len(prompts)), format_func=lambda i: prompts[i].text[:80],
                                    key=f"{key}_prompt")
    cols = st.columns(len(traces))
    for col, t, label in zip(cols, traces, labels):
        with col:
            st.subheader(label)
            st.caption(f"{t.timings.tokens_per_s:.1f} tokens/s · {t.timings.new_tokens} tokens"
                       + (" · stopped early" if t.stopped else ""))
            idx = [i for i, s in enumerate(t.samples) if s.prompt_index == prompt_index]
            st.html(heatmap.heatmap_html(t, signal, samples=idx, value_range=value_range))
    texts = [s.text for t in traces for s in t.samples]
    groups = [label for t, label in zip(traces, labels) for _ in t.samples]
    st.subheader("Semantic spread")
    st.plotly_chart(spread.spread_figure(texts, groups, projection(tuple(texts), 0)), key=f"{key}_spread")
    st.subheader("Metrics")
    rows = metrics_rows(traces, perplexities)
    st.dataframe(rows, hide_index=True)
    by = {t.method: t for t in traces}
    if "esamp" in by and "plain" in by and by["plain"].timings.tokens_per_s > 0:
        ratio = by["esamp"].timings.tokens_per_s / by["plain"].timings.tokens_per_s
        st.caption(f"ESamp speed relative to plain sampling in this run: {ratio:.3f} "
                   "(plain ran its distiller in shadow to log novelty; see bench/ for the clean ratio)")
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.loss_figure(traces, labels), key=f"{key}_loss")
    c2.plotly_chart(charts.novelty_figure(traces, labels), key=f"{key}_novelty")
    st.caption("Reproduce from the command line:")
    for t in traces:
        st.code(command_for(t.config, t.prompts[0].text, model or None, t.backend), language="bash")


def job_status(job: Job) -> str:
    label = job.labels[job.current] if job.labels else ""
    if job.phase == "waiting":
        detail = "waiting for another generation on this model to finish…"
    elif job.phase == "scoring":
        detail = "scoring perplexity…"
    elif job.progress:
        p = job.progress
        detail = f"{p.tokens} of {p.max_tokens} tokens · {p.tokens_per_s:.1f} tokens/s"
    else:
        detail = "starting…"
    return f"Run {job.current + 1} of {len(job.labels)} · {label}: {detail}"


def follow(job: Job, key: str) -> bool:
    """Live progress of a job, with a Stop button that keeps what was generated.

    Returns whether the job has finished. The progress fragment reruns by itself; when the
    job finishes it reruns the whole page once, so the caller draws the results.
    """
    @st.fragment(run_every=0.5)
    def live():
        if job.finished:
            if st.session_state.get(f"{key}_shown") is not job:
                st.session_state[f"{key}_shown"] = job
                st.rerun()
            return
        st.progress(job.fraction(), text=job_status(job))
        if st.button("Stop", key=f"{key}_stop"):
            job.cancel.set()

    live()
    return job.finished
