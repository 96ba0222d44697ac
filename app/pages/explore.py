"""Explore: ESamp and plain sampling side by side on one prompt, same seed and settings."""

import streamlit as st

from app import common
from app.jobs import start_job
from core.scoring import trace_perplexities
from viz.summary import config_label

st.title("Explore")
st.caption("ESamp and plain sampling, same seed and settings, side by side. "
           "Plain sampling runs the distiller in shadow (β = 0) so its novelty is logged too.")

form = common.settings_form("explore")
if form is not None:
    settings, lm = form
    common.set_url(settings)
    configs = [settings.for_method("esamp"), settings.for_method("plain")]
    history = common.get_history()
    st.session_state.explore_job = start_job(
        lm, [settings.prompt], configs, [config_label(c) for c in configs],
        score=trace_perplexities,
        finish=lambda job: history.save(job.traces, job.perplexities))
    st.session_state.explore_model = settings.model

job = st.session_state.get("explore_job")
if job is None:
    st.info("Set a prompt and β, then Generate. Hover a token in the answers for its numbers.")
    st.stop()

if not common.follow(job, "explore"):
    st.stop()
if job.error:
    st.error(f"The run failed: {common.md(job.error)}. Finished parts were kept in History.")
if not job.traces:
    st.stop()
if job.phase == "stopped":
    st.warning("Stopped: showing what was generated so far (saved in History).")
st.success(f"Saved as run #{job.result} in History." if job.result else "Done.")
common.render_comparison(job.traces, job.perplexities or None, "explore",
                         model=st.session_state.get("explore_model", ""))
