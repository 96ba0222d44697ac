"""Learn: what ESamp does, shown on the loaded model: one real fusion step with numbers, and
novelty building up token by token, at every β of a ladder generated once: a teacher moves one
slider in front of a class."""

import streamlit as st

from app import render, serving, settings
from app.jobs import start_job
from app.resources import open_history
from core import RunConfig, SamplingConfig, beta_ladder
from core.scoring import trace_perplexities
from viz import charts, heatmap
from viz.summary import (config_label, fusion_step, ladder, learning_sentence, left_to_the_model,
                         readable_step, run_label, token_label)

st.title("Learn: how ESamp explores")

st.info("**In one sentence:** while the model writes its answers, a tiny network keeps learning to guess "
        "the model's next thought from its first one; where the guess is bad the context is new, and ESamp "
        "nudges the next word toward where the guess went wrong, so later answers go somewhere the earlier "
        "ones have not been.")
st.markdown("""
**1 · What the distiller reads and predicts.** At every step the language model computes a
*shallow* state **s** (after its first layer) and a *final* state **h** (what the output layer
reads). A tiny network, the **distiller**, learns online — during this very generation — to
predict **h** from **s**. Contexts it has already seen (earlier tokens of *all* n answers to
this prompt) are predicted well; new ones are not.

**2 · Novelty.** The prediction error **e = h − ĥ** is the novelty signal: its length ‖e‖ says
how new the context is, its direction says *which* tokens lead somewhere new.

**3 · Fusion.** ESamp tilts the next-token distribution toward that direction:
""")
st.latex(r"\ell_{new}(z) = (1+\beta)\,\ell_{ref}(z) - \beta\,\ell_{dist}(z)")  # two lines: each fits 1024 px
st.latex(r"\Longleftrightarrow\quad \ell_{new}(z) = \ell_{ref}(z) + \beta\,\frac{w_z\cdot e}{T}")
explained = """
| symbol | in words |
|---|---|
| **s** | the shallow state: the model's vector for this position after its first layer |
| **h** | the final state: the vector the output layer turns into next-token scores |
| **ĥ** | the distiller's guess of **h**, made from **s** |
| **e = h − ĥ** | how wrong the guess is: its length is the novelty |
| ℓ_new(z) | the score ESamp samples token z by: the model's own, tilted toward the error |
| ℓ_ref(z) | the model's own score (logit) for candidate token z, divided by T |
| ℓ_dist(z) | the score token z would get if the final state were the guess ĥ |
| w_z | the output layer's row for token z: ℓ(z) = w_z · h / T |
| T | the sampling temperature |
| β | the exploration strength: 0 is plain sampling |

Only the tokens that survive top-k / top-p / min-p are reweighted; β = 0 is plain sampling.
Then the distiller trains on this step's (s, h), so the next step's novelty is measured
against everything seen so far.

**4 · A bounded push.** While the distiller is still learning, **e** is large and points nowhere in
particular, and the formula alone would move a token's distribution a long way: on this small model
the answers then break into loops ("sapphire sapphire sapphire…"). So each step may move the
distribution by at most {bound} (the KL divergence between after and before, in nats): where β would push
further, that token gets the largest β that stays within it. β is then the most a step may use; the
bound is how far it may go.{warm}

**5 · A leveled push.** Where the distiller's guess is still vague, the formula also makes the model's
likeliest tokens likelier still: part of the push acts like a lower temperature, and a small model's
long answers then repeat themselves. {level}

**6 · Between words.** A word is often several tokens ("A|le|phan|t"). Pushed towards pieces the distiller
did not expect, ESamp would spell new non-words ("Alephanocephalallodyide"). {words}""".format(
    words="So the push moves only the tokens that start a word (a space or a new line first): ESamp chooses "
    "the next word; how a word is spelled, and its punctuation, stay the model's own."
    if settings.DEFAULTS["words"] else
    "Here every token is pushed, also the pieces inside a word (the paper's push).",
    level="So that part is taken out (\"leveled\"): the push only moves probability between tokens, towards "
    "those the distiller did not expect." if settings.DEFAULTS["level"] else "Here it is left in (the paper's push).",
    bound=settings.nats(settings.DEFAULTS["max_kl"]) if settings.DEFAULTS["max_kl"] else "any amount (no bound set)",
    warm=f" The first {settings.DEFAULTS['warmup'] + 1} tokens of an answer are sampled unguided." if
    settings.DEFAULTS["warmup"] else " The first token of an answer is sampled unguided: no distiller has seen "
    "the prompt's answers yet.")
st.markdown(explained)

st.header("Try it on the loaded model")
history, history_error = open_history()
if history is None:
    st.warning(f"Runs are not saved: {render.md(history_error)} See the History page.")
settings.model_caption()
with st.form("learn"):
    prompt = st.text_input("Prompt", "Invent a name for a new colour and describe it.")
    c1, c2 = st.columns(2)
    ladder_text = c1.text_input("β ladder", settings.DEFAULTS["ladder"],
                                help="One run per β with the same seed; afterwards one slider moves between them.")
    tokens = c2.slider("Tokens", 4, 48, 24)
    go = st.form_submit_button("Generate 4 answers at each β", type="primary")
if go:
    try:
        if not prompt.strip():
            raise ValueError("Write a prompt first: it is empty.")
        betas = settings.parse_ladder(ladder_text, serving.policy().limits.max_rungs)
    except ValueError as exc:
        st.error(render.md(exc))
        st.stop()
    d = settings.DEFAULTS  # Explore's candidate set and warm-up (docs/results.md, "The candidate set")
    sampling = SamplingConfig(n=4, max_new_tokens=tokens, seed=0, top_k=d["top_k"], top_p=d["top_p"], min_p=d["min_p"])
    esamp = settings.esamp_of(d["warmup"], d["max_kl"], d["level"], d["words"])
    configs = beta_ladder(RunConfig(sampling=sampling, esamp=esamp), betas, scale_bound=True)
    st.session_state.learn_job = start_job(
        settings.load_chosen_model() or st.stop(), [prompt], configs, [config_label(c) for c in configs],
        score=trace_perplexities, finish=history and (lambda job: history.save(job.traces, job.perplexities)))

job = render.finished_job(st.session_state.get("learn_job"), "learn", "Generate to step through a real run.")
if job is None:
    st.stop()

rungs = ladder(job.traces)
c1, c2 = st.columns([3, 1])
b = render.beta_slider(c1, list(rungs), settings.DEFAULTS["beta"], f"learn_beta{id(job)}",
                       "β: move it in front of the class")
trace = job.traces[rungs[b]]
sample_index = c2.radio("Answer", range(len(trace.samples)), horizontal=True, format_func=lambda i: f"#{i + 1}")
sample = trace.samples[sample_index]
if not sample.tokens:
    st.info("This answer is empty.")
    st.stop()
held = trace.config.esamp.warmup_steps + 1  # the tokens sampled unguided (the first, then the warm-up)
pos = st.slider("Step through the answer", 1, len(sample.tokens), readable_step(sample.tokens, held + 2))
token = sample.tokens[pos - 1]

st.subheader("The distiller learning, token by token")
st.markdown("Each token is coloured by how badly the distiller predicted its context (relative novelty "
            "‖e‖ / ‖h‖): at 1 it does no better than predicting nothing; a context no answer has visited yet "
            "stands out. The same seed drives every β: where a β's answer leaves plain sampling's, fusion chose "
            "another token. " + render.md(learning_sentence(sample)))
st.html(heatmap.heatmap_html(trace, "rel_novelty", samples=[sample_index], upto=pos))
st.plotly_chart(charts.novelty_figure([trace], [run_label(trace)], relative=True), key="learn_novelty")

st.subheader(f"One fusion step at β = {b:g}: token {pos}, {render.md(token_label(token.text, token.id))}")
if pos == 1:
    st.info("The first token is sampled unguided: the distiller has not trained yet, so before = after.")
elif pos <= held and b > 0 and token.logp_new == token.logp_ref:
    st.info(f"Warm-up: ESamp samples the first {held} tokens unguided while the distiller learns this prompt, "
            "so before = after. Step further along the answer.")
elif b == 0:
    st.info("At β = 0 fusion leaves the distribution alone (plain sampling): before = after. Move the β slider.")
elif left_to_the_model(token, trace.config):
    st.info("This token continues a word (or a character): the push moves only the tokens that start one, so its "
            "probability stays the model's (before = after). Step to a token that starts a word to see a push.")
for col, (name, value) in zip(st.columns(3), fusion_step(token, trace.config.esamp.max_kl).items()):
    col.metric(name, value)
st.plotly_chart(charts.candidates_figure(token, b), key="learn_candidates")
render.candidates(token)
