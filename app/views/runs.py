"""History: every finished run, kept in SQLite. Filter, reopen with all pictures, export, delete."""

import datetime as dt

import streamlit as st

from app import render, serving
from app.history import HistoryError, move_aside
from app.resources import get_embedder, history_path, open_history
from viz.report import build_report
from viz.summary import file_label, run_label


st.title("History")
history, error = open_history()
if history is None:
    st.error(render.md(error))
    path = history_path()
    if path.is_file() and st.button("Move the damaged file aside and start a fresh history", type="primary"):
        st.success(f"Moved to `{move_aside(path)}` (kept, not deleted). A fresh history starts now.")
        st.button("Continue")
    st.stop()
st.caption(f"Runs are stored in `{history.path}` (set ESAMP_HISTORY_DB to move it).")

c1, c2, c3, c4 = st.columns([3, 2, 1, 2])
text = c1.text_input("Prompt contains")
model = c2.text_input("Model contains")
method = c3.selectbox("Method", ["", "esamp", "plain", "fire"], format_func=lambda m: m or "any")
dates = c4.date_input("Date range", value=(), help="leave empty for all dates")
since = until = ""
if len(dates) == 2:
    since, until = dates[0].isoformat(), (dates[1] + dt.timedelta(days=1)).isoformat()
try:
    records = history.list(text=text, model=model, method=method, since=since, until=until)
except HistoryError as exc:  # damaged since it was opened
    st.error(render.md(exc))
    st.stop()
if not records:
    st.info("No runs yet (or none match). Generate one on the Explore page.")
    st.stop()

st.dataframe([{"id": r.id, "created": r.created, "prompt": r.prompt[:100], "model": r.model,
               "methods": ", ".join(r.methods)} for r in records], hide_index=True)
chosen = st.selectbox("Open run", [r.id for r in records],
                      format_func=lambda i: next(f"#{r.id} · {r.created} · {r.prompt[:60]}"
                                                 for r in records if r.id == i))
try:
    traces, perplexities = history.load(chosen)
except HistoryError as exc:
    st.error(render.md(exc))
    st.stop()

c1, c2, c3 = st.columns(3)
reports = st.session_state.setdefault("history_reports", {})  # run id -> report HTML
if c1.button("Build HTML report"):
    with st.spinner("Embedding answers and drawing…"):
        reports[chosen] = build_report(traces, perplexities, embedder=get_embedder(),
                                       max_n=serving.policy().limits.max_n)
if chosen in reports:
    c1.download_button("Download report.html", reports[chosen], file_name=f"esamp-run-{chosen}.html", mime="text/html")
with c2.popover(f"Traces (JSON, {len(traces)})"):  # folded: a ladder's buttons would push the run down a projector
    for i, t in enumerate(traces):  # one button per run, named by its setting (a ladder has several ESamp runs)
        label = run_label(t)
        st.download_button(f"{label} · JSON", t.to_json(), key=f"json_{chosen}_{i}", help=f"Download the {label} trace",
                           file_name=f"esamp-run-{chosen}-{i}-{file_label(label)}.json",
                           mime="application/json")
with c3.popover("Delete run"):
    st.write(f"Delete run #{chosen} for good?")
    if st.button("Yes, delete", type="primary"):
        history.delete(chosen)
        st.rerun()

render.comparison(traces, perplexities if any(perplexities) else None, f"history_{chosen}")
