"""Explore: a β ladder on one prompt (plain sampling at β = 0, ESamp above it, same seed and
settings), generated once; the β slider then moves between the runs without generating again."""

import streamlit as st

from app import render, settings
from app.jobs import start_job
from app.resources import open_history, warm_up
from core import DEFAULT_MODEL
from core.scoring import trace_perplexities
from viz.summary import config_label

st.title("Explore")
st.caption("One Generate runs every β of the ladder with the same seed and settings (β = 0 is plain sampling, "
           "its distiller in shadow so its novelty is logged too); then the β slider moves between them at once.")
warm_up()  # the sentence embedder and UMAP's compilation, in the background while the prompt is typed

history, history_error = open_history()
if history is None:
    st.warning(f"Runs are not saved: {render.md(history_error)} See the History page.")
form = settings.settings_form("explore")
if form is not None:
    chosen, lm = form
    settings.set_url(settings.chosen_model(), chosen)
    configs = chosen.configs()
    st.session_state.explore_job = start_job(
        lm, [chosen.prompt], configs, [config_label(c) for c in configs], score=trace_perplexities,
        finish=history and (lambda job: history.save(job.traces, job.perplexities)))


def follow_slider(beta: float) -> None:
    st.query_params["beta"] = f"{beta:g}"  # the shared link opens at this β


linked = settings.url_settings() if "explore_job" not in st.session_state and history is not None else None
if linked is not None:  # a reloaded or shared link: the same prompt, model and settings may be in History
    model = settings.chosen_model()
    found = history.find(linked.prompt, model.name or DEFAULT_MODEL, model.backend, linked.configs())
    if found is not None:
        traces, perplexities = history.load(found)
        st.info(f"This link's run, reopened from History (run #{found}): the same prompt, model and settings. "
                "Generate runs it again.")
        render.comparison(traces, perplexities or None, "explore", beta=linked.beta, on_beta=follow_slider,
                          run_key=f"history{found}")
        st.stop()

job = render.finished_job(st.session_state.get("explore_job"), "explore",
                          "Set a prompt and a β ladder, then Generate. Hover a token in the answers for its numbers.")
if job is None:
    st.stop()
if job.phase == "stopped":
    st.warning("Stopped: showing the runs generated so far (saved in History).")
st.success(f"Saved as run #{job.result} in History." if job.result else "Done.")
render.comparison(job.traces, job.perplexities or None, "explore", beta=settings.url_values()["beta"],
                  on_beta=follow_slider, run_key=str(id(job)))
