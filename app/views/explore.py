"""Explore: ESamp and plain sampling side by side on one prompt, same seed and settings."""

import streamlit as st

from app import render, settings
from app.jobs import start_job
from app.resources import open_history
from core.scoring import trace_perplexities
from viz.summary import config_label

st.title("Explore")
st.caption("ESamp and plain sampling, same seed and settings, side by side. "
           "Plain sampling runs the distiller in shadow (β = 0) so its novelty is logged too.")

history, history_error = open_history()
if history is None:
    st.warning(f"Runs are not saved: {render.md(history_error)} See the History page.")
form = settings.settings_form("explore")
if form is not None:
    chosen, lm = form
    settings.set_url(settings.chosen_model(), chosen)
    configs = [chosen.for_method("esamp"), chosen.for_method("plain")]
    st.session_state.explore_job = start_job(
        lm, [chosen.prompt], configs, [config_label(c) for c in configs], score=trace_perplexities,
        finish=history and (lambda job: history.save(job.traces, job.perplexities)))

job = render.finished_job(st.session_state.get("explore_job"), "explore",
                          "Set a prompt and β, then Generate. Hover a token in the answers for its numbers.")
if job is None:
    st.stop()
if job.phase == "stopped":
    st.warning("Stopped: showing what was generated so far (saved in History).")
st.success(f"Saved as run #{job.result} in History." if job.result else "Done.")
render.comparison(job.traces, job.perplexities or None, "explore")
