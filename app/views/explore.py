"""Explore: a β ladder on one prompt (plain sampling at β = 0, ESamp above it, same seed and
settings), generated once; the β slider then moves between the runs without generating again."""

import streamlit as st

from app import jobs, render, settings
from app.jobs import start_job
from app.resources import open_history, warm_up
from core import DEFAULT_MODEL
from core.scoring import trace_perplexities
from viz.summary import config_label


def job_key(chosen: settings.Settings) -> tuple:
    """What a Generate's job is found by after a reload: its prompt, model and runs."""
    model = settings.chosen_model()
    return chosen.prompt, model.name or DEFAULT_MODEL, model.backend, tuple(chosen.configs())


def follow_slider(beta: float) -> None:
    st.query_params["beta"] = f"{beta:g}"  # the shared link opens at this β


def branches_of(parent: str) -> list:
    """The branches by hand of the run shown (``parent``: its key), a finished pending one added."""
    branches = st.session_state.setdefault("explore_branches", {}).setdefault(parent, [])
    pending = st.session_state.get("explore_branch")
    if pending is not None and pending[0] == parent and pending[1].finished:
        del st.session_state["explore_branch"]
        if pending[1].error:
            st.error(f"The branch failed: {render.md(pending[1].error)}")
        branches.extend(pending[1].traces)
        if pending[1].traces:
            settings.set_branch_url(pending[1].traces[0].config)
    return branches


def branch_from(parent: str, prompt: str):
    """What a "continue from here" starts: the continuation as a job, saved in History like every run."""
    def start(config) -> None:
        lm = settings.load_chosen_model()
        if lm is not None:
            st.session_state.explore_branch = (parent, start_job(
                lm, [prompt], [config], [f"branch, {config_label(config)}"], score=trace_perplexities,
                finish=history and (lambda job: history.save(job.traces, job.perplexities))))
    return start


def show(traces, perplexities, parent: str, beta) -> None:
    """The run (its comparison, its branches) and a branch in flight, below its tree."""
    render.comparison(traces, perplexities or None, "explore", beta=beta, on_beta=follow_slider, run_key=parent,
                      branches=branches_of(parent), on_branch=branch_from(parent, traces[0].prompts[0].text))
    pending = st.session_state.get("explore_branch")
    if pending is not None and pending[0] == parent:
        render.follow(pending[1], "explore_branch")


st.title("Explore")
st.markdown("**ESamp** (exploratory sampling) nudges each next word toward what a small network, learning while the "
            "model writes, failed to predict, so that the answers go where the earlier ones have not. One Generate "
            "writes the same prompt's answers with plain sampling (β = 0) and with ESamp at each β of the ladder, "
            "from the same random seed; the β slider then moves between them.")
st.page_link("views/learn.py", label="How it works, step by step: Learn", icon=":material/school:")
warm_up()  # the sentence embedder and UMAP's compilation, in the background while the prompt is typed

history, history_error = open_history()
if history is None:
    st.warning(f"Runs are not saved: {render.md(history_error)} See the History page.")
linked = settings.url_settings() if "explore_job" not in st.session_state and history is not None else None
model = settings.chosen_model()
found = linked and history.find(linked.prompt, model.name or DEFAULT_MODEL, model.backend, linked.configs())
if linked and not found and jobs.running(job_key(linked)):  # reloaded during its Generate: follow it here
    st.session_state.explore_job = jobs.running(job_key(linked))
    st.info("This link's Generate is still running (the page was reloaded): its progress continues below, and "
            "the run is saved in History when it finishes.")
# Once a run is on the page the form folds away, so what just finished is what a projector shows first.
ran = "explore_job" in st.session_state or bool(found)
with st.expander("Prompt and settings: change them and Generate again" if ran else "Prompt and settings",
                 expanded=not ran):
    form = settings.settings_form("explore")
if form is not None:
    chosen, lm = form
    settings.set_url(settings.chosen_model(), chosen)
    configs = chosen.configs()
    st.session_state.explore_job = start_job(
        lm, [chosen.prompt], configs, [config_label(c) for c in configs], score=trace_perplexities,
        finish=history and (lambda job: history.save(job.traces, job.perplexities)),
        key=job_key(chosen))
    st.rerun()  # drawn again with the form folded: the answers appear at the top as they are written



if found and "explore_job" not in st.session_state:  # a reloaded or shared link whose run is in History
    traces, perplexities = history.load(found)
    st.info(f"This link's run, reopened from History (run #{found}): the same prompt, model and settings. "
            "Generate runs it again.")
    branch = settings.url_branch([t.config for t in traces], render.primes(traces[0].backend))
    kept = branch and history.find(linked.prompt, model.name or DEFAULT_MODEL, model.backend, [branch])
    if kept and not branches_of(f"history{found}"):
        branches_of(f"history{found}").extend(history.load(kept)[0])  # the link's branch, from History
    show(traces, perplexities, f"history{found}", linked.beta)
    st.stop()

job = render.finished_job(st.session_state.get("explore_job"), "explore",
                          "Set a prompt and a β ladder, then Generate. Hover a token in the answers for its numbers.")
if job is None:
    st.stop()
if job.phase == "stopped":
    st.warning("Stopped: showing the runs generated so far (saved in History).")
st.success(f"Saved as run #{job.result} in History." if job.result else "Done.")
show(job.traces, job.perplexities, str(id(job)), settings.url_values()["beta"])
