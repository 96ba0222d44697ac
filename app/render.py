"""Drawing what the pages show: escaped text, a finished comparison of runs (heatmaps, spread,
metrics, charts, the command line that reproduces it) and a running job's live progress.
Every number comes from core/ or viz/; nothing is computed here."""

from __future__ import annotations

import re
from typing import Sequence

import streamlit as st

from core import DEFAULT_MODEL, RunTrace
from core.cli import command_for
from viz import charts, heatmap, spread
from viz.summary import run_label, speed_ratio, summarize_runs

from .jobs import Job
from .resources import embeddings, projection

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: object) -> str:
    """Text that may hold user or model input, escaped for Streamlit's markdown (st.error, st.subheader…):
    no link, image, HTML tag or formula can come out of it."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


def signal_picker(key: str) -> str:
    names = list(heatmap.SIGNALS)
    return st.selectbox("Colour tokens by", names, format_func=lambda s: heatmap.SIGNALS[s].label, key=key,
                        help="Changing this never regenerates.")


def reproduce_command(trace: RunTrace) -> str:
    """The ``python -m core generate`` line for a run, with the model and backend it ran on."""
    model = None if trace.model == DEFAULT_MODEL else trace.model
    return command_for(trace.config, trace.prompts[0].text, model, trace.backend)


def comparison(traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] | None, key: str) -> None:
    """Answers side by side with heatmaps, the spread, metrics, charts and the CLI command."""
    labels = [run_label(t) for t in traces]
    signal = signal_picker(f"{key}_signal")
    value_range = heatmap.signal_range(traces, signal)
    prompts = traces[0].prompts
    prompt_index = 0
    if len(prompts) > 1:
        prompt_index = st.selectbox("Prompt", range(len(prompts)), format_func=lambda i: prompts[i].text[:80],
                                    key=f"{key}_prompt")
    for col, t, label in zip(st.columns(len(traces)), traces, labels):
        with col:
            st.subheader(label)
            st.caption(f"{t.timings.tokens_per_s:.1f} tokens/s · {t.timings.new_tokens} tokens · {t.backend} · "
                       f"{t.device} · {t.dtype}" + (" · stopped early" if t.stopped else ""))
            idx = [i for i, s in enumerate(t.samples) if s.prompt_index == prompt_index]
            st.html(heatmap.heatmap_html(t, signal, samples=idx, value_range=value_range))
    texts = tuple(s.text for t in traces for s in t.samples)
    groups = [label for t, label in zip(traces, labels) for _ in t.samples]
    st.subheader("Semantic spread")
    st.plotly_chart(spread.spread_figure(texts, groups, projection(texts, 0)), key=f"{key}_spread")
    st.subheader("Metrics")
    st.dataframe([s.as_row() for s in summarize_runs(traces, embeddings(texts), perplexities)], hide_index=True)
    ratio = speed_ratio(traces)
    if ratio is not None:
        st.caption(f"ESamp speed relative to plain sampling in this run: {ratio:.3f} "
                   "(plain ran its distiller in shadow to log novelty; see bench/ for the clean ratio)")
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.loss_figure(traces, labels), key=f"{key}_loss")
    c2.plotly_chart(charts.novelty_figure(traces, labels, relative=True), key=f"{key}_novelty")
    st.caption("Reproduce from the command line:")
    for t in traces:
        st.code(reproduce_command(t), language="bash")


def job_status(job: Job) -> str:
    label = job.labels[job.current] if job.labels else ""
    if job.phase == "waiting":
        detail = f"waiting for {job.waiting_for()} to finish: one generation at a time per model…"
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
        job.watch()
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


def finished_job(job: Job | None, key: str, idle: str) -> Job | None:
    """The common top of a page that runs jobs: a hint before the first run, live progress while
    it runs, the error if it failed. Returns the job once it has traces to show, else None."""
    if job is None:
        st.info(idle)
        return None
    if not follow(job, key):
        return None
    if job.error:
        saved = f" What finished is saved as run #{job.result} in History." if job.result else ""
        st.error(f"The run failed: {md(job.error)}.{saved}")
    elif job.abandoned:
        st.warning("This run stopped early because its page stopped following it; what it made is kept.")
    return job if job.traces else None
