"""Sweep: β for ESamp and temperature for plain sampling, as diversity against perplexity;
or a task with checkable answers, as pass@k curves for ESamp, plain, min-p and FIRE."""

import numpy as np
import streamlit as st

from app import common
from app.jobs import start_job
from core import EsampConfig, RunConfig, SamplingConfig
from core.scoring import trace_perplexities
from core.tasks import arithmetic_tasks, is_correct, tasks_from_jsonl
from viz import charts, metrics
from viz.summary import config_label, run_label

MAX_PROMPTS, MAX_TASKS = 4, 20

st.title("Sweep")
mode = st.radio("What to sweep", ["Diversity vs perplexity", "Task: pass@k"], horizontal=True)

with st.form("sweep"):
    if mode == "Diversity vs perplexity":
        prompts_text = st.text_area("Prompts (one a line, up to 4)", "Describe a city in the year 3000.")
        betas = st.multiselect("ESamp β values", [0.0, 0.1, 0.25, 0.4, 0.5, 0.75, 1.0], [0.1, 0.25, 0.5, 1.0])
        temps = st.multiselect("Plain temperatures", [0.5, 0.7, 1.0, 1.3, 1.6], [0.7, 1.0, 1.3])
        source, upload, count = None, None, 0
    else:
        source = st.radio("Tasks", ["built-in arithmetic", "upload JSONL (question, answer)"], horizontal=True)
        count = st.slider("Number of arithmetic problems", 2, MAX_TASKS, 6)
        upload = st.file_uploader("JSONL with one {\"question\": …, \"answer\": …} a line", type=["jsonl", "json"])
        betas, temps, prompts_text = [], [], ""
    c1, c2, c3 = st.columns(3)
    n = c1.number_input("Samples per prompt (n)", 2, common.MAX_N, 4)
    tokens = c2.number_input("Max new tokens", 4, common.MAX_NEW_TOKENS, 48)
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0)
    go = st.form_submit_button("Run sweep", type="primary")

if go:
    sampling = dict(n=int(n), max_new_tokens=int(tokens), seed=int(seed))
    try:
        if mode == "Diversity vs perplexity":
            prompts = [p for p in prompts_text.splitlines() if p.strip()][:MAX_PROMPTS]
            answers = None
            configs = [RunConfig(method="esamp", sampling=SamplingConfig(**sampling),
                                 esamp=EsampConfig(beta=b)) for b in sorted(betas)]
            configs += [RunConfig(method="plain", sampling=SamplingConfig(temperature=t, **sampling))
                        for t in sorted(temps)]
        else:
            tasks = (arithmetic_tasks(count, int(seed)) if source == "built-in arithmetic" or upload is None
                     else tasks_from_jsonl(upload.getvalue().decode("utf-8"))[:MAX_TASKS])
            prompts = [t.prompt for t in tasks]
            answers = [t.answer for t in tasks]
            configs = [RunConfig(method="esamp", sampling=SamplingConfig(**sampling)),
                       RunConfig(method="plain", sampling=SamplingConfig(**sampling)),
                       RunConfig(method="plain", sampling=SamplingConfig(min_p=0.1, **sampling)),
                       RunConfig(method="fire", sampling=SamplingConfig(**sampling))]
        if not prompts or not configs:
            raise ValueError("Give at least one prompt and one setting to sweep.")
    except (ValueError, UnicodeDecodeError) as exc:
        st.error(common.md(exc))
        st.stop()
    lm = common.get_model("")
    history = common.get_history()
    st.session_state.sweep_job = (answers, start_job(
        lm, prompts, configs, [config_label(c) for c in configs],
        score=trace_perplexities if answers is None else None,
        finish=lambda job: history.save(job.traces, job.perplexities)))

state = st.session_state.get("sweep_job")
if state is None:
    st.info("Choose what to sweep and run it. Each setting generates n samples for every prompt.")
    st.stop()
answers, job = state

if not common.follow(job, "sweep"):
    st.stop()
if job.error:
    st.error(f"The sweep failed: {common.md(job.error)}")
if not job.traces:
    st.stop()

labels = [run_label(t) for t in job.traces]
if answers is None:
    points = []
    for t, ppl in zip(job.traces, job.perplexities):
        emb = common.embeddings(tuple(s.text for s in t.samples))
        by_prompt = [metrics.mean_pairwise_cosine_distance(emb[[i for i, s in enumerate(t.samples)
                                                                if s.prompt_index == p]])
                     for p in range(len(t.prompts))]
        setting = f"β={t.config.esamp.beta:g}" if t.method == "esamp" else f"T={t.config.sampling.temperature:g}"
        points.append({"series": "esamp" if t.method == "esamp" else "plain", "setting": setting,
                       "diversity": float(np.mean(by_prompt)), "perplexity": float(np.nanmean(ppl))})
    st.plotly_chart(charts.sweep_figure(points))
    st.dataframe(points, hide_index=True)
else:
    curves, rows = {}, []
    for t, label in zip(job.traces, labels):
        n = t.config.sampling.n
        correct = [sum(is_correct(s.text, answers[p]) for s in t.samples_of(p)) for p in range(len(t.prompts))]
        curves[label] = metrics.pass_at_k_curve(correct, n)
        rows.append({"method": label, "pass@1": curves[label][0], f"pass@{n}": curves[label][-1],
                     "tasks solved at least once": sum(c > 0 for c in correct)})
    st.plotly_chart(charts.pass_at_k_figure(curves))
    st.dataframe(rows, hide_index=True)
    with st.expander("Answers"):
        for t, label in zip(job.traces, labels):
            st.markdown(f"**{common.md(label)}**")
            st.dataframe([{"task": s.prompt_index, "expected": answers[s.prompt_index], "answer": s.text,
                           "correct": is_correct(s.text, answers[s.prompt_index])} for s in t.samples],
                         hide_index=True)
