"""Drawing what the pages show: escaped text, a finished comparison of runs (the β slider over a
ladder, heatmaps, spread, metrics, charts, the command lines that reproduce it) and a running
job's live progress.
Every number comes from core/ or viz/; nothing is computed here."""

from __future__ import annotations

import re
from typing import Callable, Sequence

import streamlit as st

from core import DEFAULT_MODEL, RunConfig, RunTrace
from core.config import MAX_BETA, continuation
from core.cli import command_for
from viz import charts, heatmap, spread
from viz.fork import fork_sentence, forks
from viz.style import count, run_colours
from viz.tree import BRANCHED, answer_tree, branch_point, layout
from viz.summary import (candidate_rows, colour_order, current_point, diversity, ladder, metric_cards, noise_sentence,
                         run_label, speed_ratio, split_by_run, token_label, token_rows, tradeoff_points)

from . import serving
from .jobs import Job
from .resources import embeddings, projection

_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:])")


def md(text: object) -> str:
    """Text that may hold user or model input, escaped for Streamlit's markdown (st.error, st.subheader…):
    no link, image, HTML tag or formula can come out of it."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


# Every page's style (the entry point draws it): Streamlit leaves 128 px above a page's title and has no
# setting for it; on a projector's 768 px that pushed Explore's Generate off the first screen. 72 px keeps
# the title clear of the 60 px bar of page links. The selector is Streamlit's own test id (1.67):
# tests/test_browser.py checks where the title and Generate land.
PAGE_STYLE = "<style>[data-testid='stMainBlockContainer']{padding-top:72px}</style>"


# Where ESamp changed the pick first: it reads at a glance (plain sampling is all white), while
# relative novelty is above 1 for most of a short answer's tokens, a distiller still learning.
PICKER_ORDER = ("logp_gain", "kl", "rel_novelty", "novelty", "entropy", "p_ref")


def signal_picker(key: str) -> str:
    names = [*PICKER_ORDER, *(s for s in heatmap.SIGNALS if s not in PICKER_ORDER)]
    return st.selectbox("Colour tokens by", names, format_func=lambda s: heatmap.SIGNALS[s].label, key=key,
                        help="Changing this never regenerates.")


# A candidate's probability after fusion can be 1e-16: shown as digits it read 0.0000000000000007.
CANDIDATE_COLUMNS = {"p before": st.column_config.NumberColumn(format="%.3g"),
                     "p after": st.column_config.NumberColumn(format="%.3g"),
                     "log ratio (β w·e / T, renormalised)": st.column_config.NumberColumn(format="%.2f")}


def candidates(token) -> None:
    """A token's top candidates before and after fusion, as a table (``candidate_rows``)."""
    st.dataframe(candidate_rows(token), hide_index=True, column_config=CANDIDATE_COLUMNS)


def reproduce_command(trace: RunTrace) -> str:
    """The ``python -m core generate`` line for a run, with the model and backend it ran on."""
    model = None if trace.model == DEFAULT_MODEL else trace.model
    return command_for(trace.config, trace.prompts[0].text, model, trace.backend)


# Where the β slider opens when nothing asks otherwise (a new Generate's link, a run reopened from History):
# the top rung of the default ladder, ESamp at the strength its defaults were chosen for (app/settings.py).
DEFAULT_BETA = 1.5


def nearest(values: Sequence[float], wanted: float | None, default: float = DEFAULT_BETA) -> float:
    """The value closest to ``wanted`` (or to ``default``)."""
    target = default if wanted is None else wanted
    return min(values, key=lambda v: (abs(v - target), v))


def beta_slider(where, betas: Sequence[float], wanted: float | None, key: str, label: str,
                on_change: Callable[[float], None] | None = None) -> float | None:
    """A slider over a ladder's computed βs (``where``: a column or ``st``), starting nearest ``wanted``;
    the only β when there is one, None when there is none."""
    if len(betas) < 2:
        return betas[0] if betas else None
    return where.select_slider(
        label, betas, value=nearest(betas, wanted), key=key,
        format_func=lambda b: f"{b:g}" + (" (plain)" if b == 0 else ""),
        on_change=on_change and (lambda: on_change(st.session_state[key])),
        help="Every β of the ladder was generated with the same seed: moving this never generates again.")


def picked_answer(points: Sequence[dict]) -> str | None:
    """The answer a click on the spread selected ("run:sample", the point's customdata), if any."""
    for point in points:
        data = point.get("customdata")
        if isinstance(data, str):
            return data
        if isinstance(data, (list, tuple)) and data and isinstance(data[0], str):
            return data[0]
    return None


def comparison(traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] | None, key: str,
               beta: float | None = None, on_beta: Callable[[float], None] | None = None, run_key: str = "",
               branches: Sequence[RunTrace] = (), on_branch: Callable[[RunConfig], None] | None = None) -> None:
    """A run of several settings on one prompt: a β slider over the ladder (no generation: every
    run is here already), plain vs the chosen β side by side as heatmaps, one map of every answer,
    where this β sits on diversity vs perplexity, metrics with bootstrap intervals and whether a
    difference is beyond noise, charts and the command lines that reproduce the runs.

    ``beta``: where the slider starts; ``on_beta``: called when it moves; ``run_key``: tells this
    run's widgets from another run's (a slider's values change with the ladder); ``branches``: runs
    continued from these answers, joined to the tree; ``on_branch``: offers branching by hand (a
    node's "continue from here"), called with the continuation's config."""
    labels = [run_label(t) for t in traces]
    rungs = ladder(traces)
    finished = [b for b, i in rungs.items() if not traces[i].stopped]
    if finished and beta is not None and traces[rungs[nearest(list(rungs), beta)]].stopped:
        beta = nearest(finished, beta)  # open on a β that ran to the end, not on the one Stop cut short
    current, signal, prompt_index = _controls(traces, list(rungs), key, run_key, beta, on_beta)
    if traces[0].config.prefix_ids:
        st.caption(f"A continuation: every answer here starts after {len(traces[0].config.prefix_ids)} given "
                   "tokens (a branch of another run's answer); only the tokens generated after them are shown.")
    now, base = rungs.get(current), rungs.get(0.0)
    shown = list(dict.fromkeys(i for i in (base, now) if i is not None)) or list(range(len(traces)))
    focus = now if now is not None else shown[-1]
    summary = st.container()  # filled once the answers are embedded; the answers come first

    value_range = heatmap.signal_range(traces, signal)
    for col, i in zip(st.columns(len(shown)), shown):
        with col:
            _answers(traces[i], labels[i], signal, prompt_index, value_range)

    # One embedding per answer of every run; the map and the intervals use this prompt's answers.
    texts = tuple(s.text for t in traces for s in t.samples)
    per_run = split_by_run(traces, embeddings(texts))
    stats = [diversity(t, e, perplexities[i] if perplexities else None, prompt_index)
             for i, (t, e) in enumerate(zip(traces, per_run))]
    answers = [(i, j) for i, t in enumerate(traces) for j, s in enumerate(t.samples) if s.prompt_index == prompt_index]
    prompt_emb = [e[[j for j, s in enumerate(t.samples) if s.prompt_index == prompt_index]]
                  for t, e in zip(traces, per_run)]
    with summary:
        _headline(traces, labels, prompt_emb, stats, base, now, focus)
    _spread_and_tradeoff(traces, labels, answers, stats, focus, current, key, run_key, prompt_emb)
    _open_answer(traces, labels, answers, signal, value_range, f"{key}_open{run_key}")
    _metrics_and_commands(traces, labels, stats, shown, focus, current, key)
    if base is not None and len(rungs) > 1:
        _forks(traces, labels, rungs, now, prompt_index, f"{key}_fork{run_key}")
    _other_answers(traces, labels, shown, signal, prompt_index, value_range)
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.loss_figure([traces[i] for i in shown], [labels[i] for i in shown]), key=f"{key}_loss")
    c2.plotly_chart(charts.novelty_figure([traces[i] for i in shown], [labels[i] for i in shown], relative=True),
                    key=f"{key}_novelty")
    st.caption("Reproduce from the command line:")
    for i in shown:
        st.code(reproduce_command(traces[i]), language="bash")
    _tree(traces[focus], labels[focus], prompt_index, f"{key}_tree{run_key}", branches, on_branch,
          [t.config for t in traces])
    _branches(traces[focus], branches, signal)


def _headline(traces: Sequence[RunTrace], labels: list[str], prompt_emb: list, stats: list, base: int | None,
              now: int | None, focus: int) -> None:
    """Whether the chosen β differs from plain beyond noise (or that one of them was cut short), and the cards."""
    cut = [labels[i] for i in dict.fromkeys((base, now)) if i is not None and traces[i].stopped]
    if cut:
        st.warning(f"{' and '.join(cut)} stopped early: its answers are cut short, so its diversity and "
                   "perplexity are not comparable with complete answers'. The cards below compare them anyway.")
    elif now is not None and base is not None and now != base:
        said = noise_sentence(labels[base], prompt_emb[base], labels[now], prompt_emb[now],
                              max_n=serving.policy().limits.max_n,
                              broken=(stats[base].broken, stats[now].broken),
                              lengths=(stats[base].mean_tokens, stats[now].mean_tokens))
        (st.warning if stats[now].breaks_more_than(stats[base]) else st.info)(said)
    for col, card in zip(st.columns(4), metric_cards(stats[focus], stats[base] if base is not None else None)):
        col.metric(card["label"], card["value"], card["delta"], delta_color=card["delta_color"],
                   delta_arrow=card["delta_arrow"], help=card["help"])


def _open_answer(traces: Sequence[RunTrace], labels: list[str], answers: list[tuple[int, int]], signal: str,
                 value_range: tuple[float, float], key: str) -> None:
    """A picker (the spread's click sets it too) that opens one answer's heatmap and its tokens' numbers."""
    choice = st.selectbox("Open an answer (or click a point in the spread)", [None, *(f"{i}:{j}" for i, j in answers)],
                          key=key, format_func=lambda o: "–" if o is None else _answer_name(traces, labels, o))
    if choice is not None:
        i, j = map(int, choice.split(":"))
        st.html(heatmap.heatmap_html(traces[i], signal, samples=[j], value_range=value_range))
        with st.expander("Every token's numbers (what hovering a token shows)"):
            st.dataframe(token_rows(traces[i].samples[j]), hide_index=True)


def _forks(traces: Sequence[RunTrace], labels: list[str], rungs: dict[float, int], now: int | None,
           prompt_index: int, key: str) -> None:
    """Where each β's answers part from plain sampling's (same seed, same draws): the sentence for the
    chosen β, the fork positions of every β, and one answer's fork with its candidates."""
    found = {labels[i]: [f for f in forks(traces[rungs[0.0]], traces[i]) if f.prompt_index == prompt_index]
             for b, i in rungs.items() if b > 0}
    st.subheader("Where ESamp steered: the fork from plain sampling")
    st.caption("Every β drew the same random numbers as plain sampling, so an answer is plain's token for token "
               "until fusion moved the distribution enough to change a draw: that token is the fork.")
    focus = labels[now] if now is not None and labels[now] in found else next(iter(found))
    st.info(md(fork_sentence(focus, found[focus])))
    warmup = traces[rungs[0.0]].config.esamp.warmup_steps
    st.plotly_chart(charts.fork_figure(found, warmup), key=f"{key}_chart")
    parted = [f for f in found[focus] if f.position is not None and f.esamp is not None]
    if not parted:
        return
    k = st.selectbox(f"One {focus} answer at its fork", range(len(parted)), key=f"{key}_pick",
                     format_func=lambda k: f"answer {parted[k].sample_index + 1}: token {parted[k].position + 1}")
    f = parted[k]
    plain_word = md(token_label(f.plain.text, f.plain.id)) if f.plain else "nothing (its answer had ended)"
    novelty = f" (relative novelty {f.esamp.rel_novelty:.2f} there)" if f.esamp.rel_novelty is not None else ""
    st.markdown(f"**Shared beginning** ({count(f.position, 'token')}): {md(f.prefix) or '(none)'}  \n**Token "
                f"{f.position + 1}:** plain sampling drew {plain_word}, {md(focus)} drew "
                f"{md(token_label(f.esamp.text, f.esamp.id))}{novelty}. Its candidates there, before and after fusion:")
    candidates(f.esamp)


def _other_answers(traces: Sequence[RunTrace], labels: Sequence[str], shown: Sequence[int], signal: str,
                   prompt_index: int, value_range) -> None:
    """The answers of the runs not side by side, folded away."""
    others = [i for i in range(len(traces)) if i not in shown]
    if others:
        with st.expander(f"The other {len(others)} runs' answers" if len(others) > 1 else "The other run's answers"):
            for i in others:
                _answers(traces[i], labels[i], signal, prompt_index, value_range)


def _tree(trace: RunTrace, label: str, prompt_index: int, key: str, branches: Sequence[RunTrace] = (),
          on_branch: Callable[[RunConfig], None] | None = None, ladder: Sequence[RunConfig] = ()) -> None:
    """The chosen run's answers (and its branches) as a prefix tree; a click on a node shows the
    candidates where it branched off, and with ``on_branch`` a form to continue from another one."""
    st.subheader(f"The answers as a tree ({md(label)})")
    st.caption("Answers that begin alike share a branch, as thick as the answers through it; a node's colour is "
               "how novel its tokens' contexts were. Click a node: the candidates at its first token, where it "
               "branched off, before and after fusion" + (", and continue from one of them." if on_branch else "."))
    root = answer_tree(trace, prompt_index, branches)
    placed = layout(root)
    if not placed:
        st.info("No answers to draw.")
        return
    st.plotly_chart(charts.tree_figure(root), key=key, on_select="rerun", selection_mode="points")
    points = st.session_state[key].selection.points if key in st.session_state else []
    picked = next((p["customdata"] for p in points if isinstance(p.get("customdata"), int)), None)
    if picked is None or not 0 <= picked < len(placed):
        return
    node = placed[picked][0]
    st.markdown(f"**Tokens {node.start + 1}-{node.start + len(node.tokens)}**, {len(node.samples)} of "
                f"{count(len(root.samples), 'answer')}: {md(node.text)}")
    pos = node.start  # a node's first token, or any of its tokens
    if len(node.tokens) > 1:
        pos = int(st.number_input("At token", node.start + 1, node.start + len(node.tokens), node.start + 1,
                                  key=f"{key}_at{picked}", help="Which of this node's tokens to look at and "
                                  "branch from.")) - 1
    candidates(node.tokens[pos - node.start])
    if on_branch is not None and node.samples[0] < BRANCHED and node.tokens[pos - node.start].top:
        _branch_form(trace, prompt_index, node, pos, on_branch, f"{key}_branch", ladder or [trace.config])


def _branch_form(trace: RunTrace, prompt_index: int, node, pos: int, on_branch: Callable[[RunConfig], None],
                 key: str, ladder: Sequence[RunConfig]) -> None:
    """Continue one answer from its token ``pos`` (in ``node``) with a candidate of choice: n answers at a β
    (its bound scaled as ``ladder``'s, the runs shown beside it)."""
    sample = next(s for s in trace.samples if s.prompt_index == prompt_index and s.sample_index == node.samples[0])
    token, limits, sc = node.tokens[pos - node.start], serving.policy().limits, trace.config.sampling
    with st.form(key):
        start = ("from the start: " if pos == 0 else
                 f"the first {count(pos, 'token')} of the {len(node.samples)} answers through this node, then " if
                 len(node.samples) > 1 else f"answer {sample.sample_index + 1}'s first {count(pos, 'token')}, then ")
        st.markdown(f"**Branch here:** {start}a candidate of your choice instead of the model's pick, and n new "
                    "answers from there.")
        c1, c2, c3, c4 = st.columns(4)
        top = token.top
        other = next((i for i, c in enumerate(top) if c.id != token.id), 0)  # not the model's pick, to start
        pick = c1.selectbox("Candidate", range(len(top)), index=other, format_func=lambda i: (
            f"{token_label(top[i].text, top[i].id)} (p {top[i].p_ref:.3f} → {top[i].p_new:.3f})"
            + (" · the model's pick" if top[i].id == token.id else "")))
        n = c2.number_input("Answers (n)", 1, limits.max_n, min(4, limits.max_n))
        beta = c3.number_input("β (0 = plain)", 0.0, MAX_BETA, float(trace.config.beta), 0.25)
        room = max(1, min(limits.max_new_tokens, sc.max_new_tokens - pos - 1))
        tokens = c4.number_input("New tokens", 1, limits.max_new_tokens, room)
        go = st.form_submit_button("Continue from here")
    if go:
        prefix = trace.config.prefix_ids + tuple(t.id for t in sample.tokens[:pos]) + (token.top[pick].id,)
        on_branch(continuation(trace.config, ladder, beta=beta, prefix_ids=prefix, n=n, max_new_tokens=tokens,
                               prime=primes(trace.backend)))


def primes(backend: str) -> bool:
    """Whether a branch's distiller starts primed on the given tokens: where the backend can
    (transformers), since that put novelty along a continuation nearer the original's (bench.branch)."""
    return backend == "transformers"


def _branches(trace: RunTrace, branches: Sequence[RunTrace], signal: str) -> None:
    """Each branch of this run: where it left which answer, and its answers as heatmaps."""
    for branch in branches:
        point = branch_point(trace, branch)
        if point is None:
            continue
        count = f"{len(branch.samples)} answer" + ("" if len(branch.samples) == 1 else "s")
        st.subheader(f"Branch: {md(point.heading())} ({md(run_label(branch))}, {count})")
        st.caption(f"Shared beginning: {md(''.join(t.text for t in point.given[:-1])) or '(none)'}")
        st.html(heatmap.heatmap_html(branch, signal))
        st.code(reproduce_command(branch), language="bash")


def _controls(traces: Sequence[RunTrace], betas: list[float], key: str, run_key: str, beta: float | None,
              on_beta: Callable[[float], None] | None) -> tuple[float | None, str, int]:
    """The comparison's controls: the β slider, the colouring, the prompt. (β, signal, prompt index)."""
    prompts = traces[0].prompts
    # With one prompt the colouring takes the prompt's place too: its choices' labels are long, and on a
    # projector's 1024 px a quarter of the row cut them off mid-word.
    c1, c2, c3 = st.columns([4, 2, 2]) if len(prompts) > 1 else (*st.columns([1, 1]), None)
    current = beta_slider(c1, betas, beta, f"{key}_beta{run_key}", "Exploration strength β", on_beta)
    with c2:
        signal = signal_picker(f"{key}_signal")
    prompt_index = 0
    if len(prompts) > 1:
        prompt_index = c3.selectbox("Prompt", range(len(prompts)), format_func=lambda i: prompts[i].text[:80],
                                    key=f"{key}_prompt")
    return current, signal, prompt_index


def _spread_and_tradeoff(traces: Sequence[RunTrace], labels: list[str], answers: list[tuple[int, int]], stats: list,
                         focus: int, current: float | None, key: str, run_key: str, prompt_emb: list) -> None:
    """One map of this prompt's answers of every run (a click opens one), how far apart each run's answers
    are (what the map cannot show), and where this β sits."""
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Semantic spread")
        prompt_texts = tuple(traces[i].samples[j].text for i, j in answers)
        figure = spread.spread_figure(prompt_texts, [labels[i] for i, _ in answers], projection(prompt_texts, 0),
                                      highlight=labels[focus], keys=[f"{i}:{j}" for i, j in answers],
                                      colours=run_colours(colour_order(traces)))
        chart, opened = f"{key}_spread{run_key}", f"{key}_open{run_key}"

        def on_pick():
            picked = picked_answer(st.session_state[chart].selection.points)
            if picked is not None:
                st.session_state[opened] = picked

        st.plotly_chart(figure, key=chart, on_select=on_pick, selection_mode="points")
        st.caption("The map keeps each answer near those that say something alike; it does not keep distances, so "
                   "a run's patch can look no wider than another's when its answers are further apart. How far "
                   "apart they are:")
        st.plotly_chart(charts.distance_strip_figure(dict(zip(labels, prompt_emb)), run_colours(colour_order(traces)),
                                                     height=90 + 50 * len(labels)), key=f"{key}_strip{run_key}")
    with right:
        st.subheader("Where this β sits")
        st.plotly_chart(charts.sweep_figure(tradeoff_points(traces, stats), current_point(current or 0.0), height=440),
                        key=f"{key}_tradeoff{run_key}")


def _metrics_and_commands(traces: Sequence[RunTrace], labels: list[str], stats: list, shown: list[int], focus: int,
                          current: float | None, key: str) -> None:
    st.subheader("Metrics")
    st.caption(f"For this prompt's answers; 95% intervals by bootstrap over the answers. ▶ marks β = {current:g}."
               if current is not None else "For this prompt's answers; 95% intervals by bootstrap over the answers.")
    st.dataframe([d.as_row(i == focus) for i, d in enumerate(stats)], hide_index=True)
    ratio = speed_ratio([traces[i] for i in shown])
    if ratio is not None:
        st.caption(f"Tokens per second, ESamp over plain, in these two runs: {ratio:.2f}. One pair of runs on a "
                   "server other sessions share is no measurement of ESamp's cost (plain also ran its distiller "
                   "here, to log novelty): bench.speed measures it, docs/results.md has the figures.")


def _answers(trace: RunTrace, label: str, signal: str, prompt_index: int, value_range: tuple[float, float]) -> None:
    st.subheader(label)
    idx = [i for i, s in enumerate(trace.samples) if s.prompt_index == prompt_index]
    ended = sum(trace.samples[i].finish_reason == "eos" for i in idx)  # ESamp's answers end sooner (results.md)
    st.caption(f"{trace.timings.tokens_per_s:.1f} tokens/s · {trace.timings.new_tokens} tokens · "
               + md(f"{trace.backend} · {trace.device} · {trace.dtype}")
               + f" · {ended} of {len(idx)} answers ended by the model"
               + (" · stopped early" if trace.stopped else ""))
    st.html(heatmap.heatmap_html(trace, signal, samples=idx, value_range=value_range))


def _answer_name(traces: Sequence[RunTrace], labels: Sequence[str], option: str) -> str:
    i, j = map(int, option.split(":"))
    sample = traces[i].samples[j]
    return f"{labels[i]} · answer {sample.sample_index + 1}: {sample.text[:60]}"


def job_status(job: Job) -> str:
    label, runs, going = (job.labels[job.current] if job.labels else ""), len(job.labels), job.going()
    room = job.phase != "waiting" and job.progress is not None and job.progress.waiting  # none in yet
    if job.phase != "waiting" and len(going) > 1:
        label = f"{runs} runs" if len(going) == runs else f"runs {going[0] + 1}–{going[-1] + 1} of {runs}"
        label += "" if room else " at once"
    if job.phase == "waiting":
        detail = (f"waiting for {job.waiting_for()} to finish: one generation at a time per model on "
                  "transformers (the vllm backend generates every session's runs at once)…")
    elif job.phase == "scoring":
        detail = "scoring perplexity…"
    elif room:
        detail = "waiting for room (the engine is full of other sessions' answers; these start as theirs finish)…"
    elif job.progress:
        p = job.progress
        detail = f"{p.tokens} of {p.max_tokens} tokens · {p.tokens_per_s:.1f} tokens/s"
    else:
        detail = "starting…"
    if runs == 1 or len(going) > 1:
        return f"{label}: {detail}"
    return f"Run {job.current + 1} of {runs} · {label}: {detail}"


def follow(job: Job, key: str) -> bool:
    """Live progress of a job, with a Stop button that keeps what was generated.

    Returns whether the job has finished. The progress fragment reruns by itself; when the
    job finishes it reruns the whole page once, so the caller draws the results. The answer is
    the one the fragment drew by: a job that finishes while the live view is drawn is finished on
    the next run, not this one (the page would show the live answers above the results). Once the
    finished job has been shown, no fragment is drawn: one that reran by itself every 0.5 s would go
    on for as long as the page is open (an idle result page once sent its server 12 messages a second).
    """
    if job.finished and st.session_state.get(f"{key}_shown") is job:
        return True

    @st.fragment(run_every=0.5)
    def live() -> bool:
        job.watch()
        if job.finished:
            if st.session_state.get(f"{key}_shown") is not job:
                st.session_state[f"{key}_shown"] = job
                st.rerun()
            return True
        st.progress(job.fraction(), text=job_status(job))
        if st.button("Stop", key=f"{key}_stop"):
            job.cancel.set()
        watched = job.live()
        if watched:  # the answers as they grow: where ESamp leaves plain sampling's, marked as it happens
            if len(watched) > 1:
                st.caption(f"The answers as they are written. Marked: where an answer has left {md(watched[0][0])}'s "
                           "answer of the same number (the same seed: until there they drew the same tokens).")
            st.html(heatmap.live_html(watched, job.n))
        return False

    return bool(live())


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
