"""Sweep: β for ESamp and temperature for plain sampling, as diversity against perplexity;
or a task with checkable answers, as pass@k curves for ESamp, plain, min-p and FIRE."""

from dataclasses import dataclass

import streamlit as st

from app import render, serving, settings
from app.jobs import Job, start_job
from app.resources import embeddings, open_history
from core import RunConfig, SamplingConfig, beta_ladder, methods
from core.scoring import trace_perplexities
from core.tasks import arithmetic_tasks
from viz import charts
from viz.summary import (answer_rows, config_label, pass_at_k_table, passk_noise, sweep_points, sweep_rows,
                         with_esamp_start)

MAX_PROMPTS, MAX_TASKS = 4, 20
TRADEOFF, TASK = "Diversity vs perplexity", "Task: pass@k"


@dataclass
class Sweep:
    job: Job
    answers: list[str] | None  # a task's answers per prompt; None for the diversity sweep


st.title("Sweep")
settings.model_caption()
limits = serving.policy().limits
history, history_error = open_history()
if history is None:
    st.warning(f"Sweeps are not saved: {render.md(history_error)} See the History page.")
mode = st.radio("What to sweep", [TRADEOFF, TASK], horizontal=True)
if mode == TASK:  # outside the form, so that the uploader shows only when it is the choice
    builtin = st.radio("Tasks", ["built-in arithmetic", "upload JSONL (question, answer)"], horizontal=True)
d = settings.DEFAULTS  # Explore's candidate set and warm-up: a sweep compares the method Explore shows
warm = f"its warm-up of {d['warmup']} tokens" if d["warmup"] else "no warm-up"
st.caption(f"ESamp and plain sampling here draw from Explore's candidates (top-k {d['top_k'] or 'off'}, top-p "
           f"{d['top_p']:g}, min-p {d['min_p'] or 'off'}), with {warm}, its {'leveled ' if d['level'] else ''}push"
           f"{' between words' if d['words'] else ''} and its bound on each token's push ({settings.nats(d['max_kl'])} "
           "at the highest β, scaled down with β as on Explore's ladder); change them below.")
with st.form("sweep"):
    if mode == TRADEOFF:
        prompts_text = st.text_area("Prompts (one a line, up to 4)", "Describe a city in the year 3000.")
        ladder = list(settings.parse_ladder(d["ladder"]))
        betas = st.multiselect("ESamp β values", sorted({0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, *ladder}),
                               [b for b in ladder if b > 0])
        temps = st.multiselect("Plain temperatures", [0.5, 0.7, 1.0, 1.15, 1.3, 1.6], [0.7, 1.0, 1.3])
    else:
        count, upload = 6, None
        if builtin == "built-in arithmetic":
            count = st.slider("Number of arithmetic problems", 2, MAX_TASKS, 6)
        else:
            upload = st.file_uploader(f"JSONL with one {{\"question\": …, \"answer\": …}} a line "
                                      f"(at most {limits.max_upload_mb:g} MB)", type=["jsonl", "json"])
    c1, c2, c3 = st.columns(3)
    n = c1.number_input("Samples per prompt (n)", 2, max(limits.max_n, 2), min(4, max(limits.max_n, 2)))
    tokens = c2.number_input("Max new tokens", 4, max(limits.max_new_tokens, 4), min(48, max(limits.max_new_tokens, 4)))
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0)
    c1, c2, c3, c4, c5 = st.columns(5)
    top_k = c1.number_input("Top-k (0 = off)", 0, 1000, d["top_k"])
    top_p = c2.number_input("Top-p (1 = off)", 0.01, 1.0, d["top_p"], 0.01)
    min_p = c3.number_input("Min-p (0 = off)", 0.0, 1.0, d["min_p"], 0.01)
    warmup = c4.number_input("Warm-up (tokens)", 0, max(limits.max_new_tokens, 4), d["warmup"],
                             help=settings.WARMUP_HELP)
    max_kl = c5.number_input("Push per token at most (nats, top β)", 0.0, 5.0, d["max_kl"], 0.05,
                             help=settings.MAX_KL_HELP)
    c1, c2 = st.columns(2)
    level = c1.checkbox("Leveled push: without the part of ESamp's push that acts as a lower temperature",
                        bool(d["level"]), help=settings.LEVEL_HELP)
    words = c2.checkbox("Push between words only (never inside a word)", bool(d["words"]), help=settings.WORDS_HELP)
    go = st.form_submit_button("Run sweep", type="primary")

running = st.session_state.get("sweep_run")
if go and running is not None and not running.job.finished:
    st.warning("A sweep is still running on this page: it goes on below. Stop it first to start another.")
    go = False
if go:
    sampling = dict(n=int(n), max_new_tokens=int(tokens), seed=int(seed), top_k=int(top_k), top_p=float(top_p),
                    min_p=float(min_p))
    try:
        if mode == TRADEOFF:
            prompts, answers = [p for p in prompts_text.splitlines() if p.strip()][:MAX_PROMPTS], None
            esamp = settings.esamp_of(int(warmup), float(max_kl), level, words)
            base = RunConfig(sampling=SamplingConfig(**sampling), esamp=esamp)
            configs = beta_ladder(base, sorted(betas), scale_bound=True) if betas else []  # Explore's ESamp
            configs += [methods.plain(SamplingConfig(**sampling), t) for t in sorted(temps)]
        else:
            tasks = (arithmetic_tasks(count, int(seed)) if builtin == "built-in arithmetic" or upload is None
                     else settings.read_task_file(upload.getvalue(), limits.max_upload_mb)[:MAX_TASKS])
            prompts, answers = [t.prompt for t in tasks], [t.answer for t in tasks]
            # The benchmarks' methods (core.methods): ESamp at the paper's β, plain, min-p, FIRE.
            configs = list(methods.compared(SamplingConfig(**sampling), betas=(0.25,), temperatures=(1.0,)).values())
        if not prompts or not configs:
            raise ValueError("Give at least one prompt and one setting to sweep.")
    except ValueError as exc:
        st.error(render.md(exc))
        st.stop()
    lm = settings.load_chosen_model() or st.stop()
    st.session_state.sweep_run = Sweep(start_job(
        lm, prompts, configs, [config_label(c) for c in configs], score=trace_perplexities if answers is None else None,
        finish=history and (lambda job: history.save(job.traces, job.perplexities))), answers)

sweep = st.session_state.get("sweep_run")
job = render.finished_job(sweep and sweep.job, "sweep", "Choose what to sweep and run it.")
if job is None:
    st.stop()
if (sweep.answers is None) != (mode == TRADEOFF):
    st.info(f"The last sweep on this page was a {TASK if sweep.answers else TRADEOFF} one: switch back to see it.")
elif sweep.answers is None:
    texts = tuple(s.text for t in job.traces for s in t.samples)
    points = sweep_points(job.traces, embeddings(texts), job.perplexities)
    st.plotly_chart(charts.sweep_figure(with_esamp_start(points)))
    prompts_run = len(job.traces[0].prompts)
    if prompts_run < 2 or job.traces[0].config.sampling.n < 4:
        st.warning(f"{prompts_run} prompt(s) × {job.traces[0].config.sampling.n} answers: the ± columns are the "
                   "spread over prompts (none with one prompt), and a few answers make a noisy diversity. "
                   "Several prompts and n ≥ 8 tell more.")
    st.dataframe(sweep_rows(points, prompts_run), hide_index=True)
else:
    curves, rows = pass_at_k_table(job.traces, sweep.answers)
    st.plotly_chart(charts.pass_at_k_figure(curves))
    st.caption(passk_noise(len(sweep.answers)))
    st.dataframe(rows, hide_index=True)
    with st.expander("Answers"):
        st.dataframe(answer_rows(job.traces, sweep.answers), hide_index=True)
