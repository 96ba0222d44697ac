"""The user's choices: the model (one choice in the sidebar, shared by every page) and Explore's
prompt and sampling settings. Both live in the page URL so that a view can be shared; each URL
parameter is defined once, in ``FIELDS``: the app's own here, the run settings' in core/options.py."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import streamlit as st

from core import (DEFAULT_MODEL, EsampConfig, LanguageModel, RunConfig, SamplingConfig, beta_ladder,
                  check_runs, temperature_ladder)
from core.config import MAX_BETA, continuation
from core.options import SETTINGS, Option, config_of, get
from core.tasks import Task, tasks_from_jsonl

from . import serving
from .render import DEFAULT_BETA, md, nearest
from .resources import get_model


@dataclass(frozen=True)
class ModelChoice:
    name: str = ""  # "" = the embedded default
    backend: str = "transformers"

    @property
    def label(self) -> str:
        if self.backend == serving.SERVER:
            return f"the model of the ESamp server at {serving.policy().server}"
        return f"{self.name or DEFAULT_MODEL + ' (embedded)'} · {self.backend}"


@dataclass(frozen=True)
class Settings:
    """One Generate: the prompt, the sampling settings, the β ladder and the plain temperatures."""

    prompt: str
    config: RunConfig  # the sampling settings every run shares
    ladder: tuple[float, ...]  # β values: plain sampling at 0, ESamp above
    temperatures: tuple[float, ...] = ()  # plain sampling at these temperatures too (optional)
    beta: float = DEFAULT_BETA  # where the slider stands

    def configs(self) -> list[RunConfig]:
        """The runs, in order: the β ladder, then the temperatures not already on it (plain at the
        sampling temperature is the ladder's β = 0)."""
        temperatures = [t for t in self.temperatures if t != self.config.sampling.temperature]
        return beta_ladder(self.config, self.ladder, scale_bound=True) + temperature_ladder(self.config, temperatures)


@dataclass(frozen=True)
class Field:
    key: str  # URL parameter
    read: Callable[[str], Any]  # the URL's text -> the value; ValueError when it is not one
    default: Any
    text: Callable[[ModelChoice, Settings], str]  # what the URL holds for a Generate


def _numbers(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def _setting(o: Option) -> Field:
    """A run setting's URL parameter, as core/options.py spells it."""
    return Field(o.url, o.read, get(FIRST, o.field), lambda m, s: o.text(get(s.config, o.field)))


# The first Generate's run settings, measured by `python -m bench.demo` (docs/results.md, "The default
# demo"): a time a class waits for; at the defaults that hold, ESamp's gain shows beyond the noise of 16
# answers on 6 seeds of 10, and the page says when it does not. ESamp's own settings are EsampConfig's
# defaults (the leveled push between words, at most 1 nat, lr 1e-3).
FIRST = RunConfig(method="esamp", sampling=SamplingConfig(n=16, max_new_tokens=32, top_k=0, top_p=0.9))
# The URL: the app's own parameters, then every run setting that has one (core/options.py). A value
# holds the field's own (``raw`` holds RunConfig.chat: raw=1 in the URL reads as False). The backend:
# app/serving.py's DEFAULT_BACKEND (or $ESAMP_BACKEND).
FIELDS = [
    Field("model", str, "", lambda m, s: m.name),
    Field("backend", str, serving.default_backend(), lambda m, s: m.backend),
    Field("prompt", str, "Invent a name for a new colour and describe it.", lambda m, s: s.prompt),
    Field("ladder", str, "0,0.5,1,1.5", lambda m, s: _numbers(s.ladder)),
    Field("temps", str, "", lambda m, s: _numbers(s.temperatures)),
    Field("beta", float, DEFAULT_BETA, lambda m, s: f"{s.beta:g}"),  # as the slider writes it: "1", "0.25"
    *(_setting(o) for o in SETTINGS if o.url),
]
DEFAULTS = {f.key: f.default for f in FIELDS}


def parse_numbers(text: str, name: str, lo: float, hi: float, most: int) -> tuple[float, ...]:
    """Comma- or space-separated numbers, each in [lo, hi], sorted without repeats, at most ``most``;
    ValueError says which one is wrong."""
    values = []
    for word in text.replace(",", " ").split():
        try:
            v = float(word)
        except ValueError:
            raise ValueError(f"{name}: {word!r} is not a number.") from None
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"{name}: {word} is outside {lo:g} to {hi:g}.")
        values.append(v)
    values = sorted(set(values))
    if len(values) > most:
        raise ValueError(f"{name}: {len(values)} values; at most {most} fit one Generate.")
    return tuple(values)


def parse_ladder(text: str, most: int = 8) -> tuple[float, ...]:
    """The β ladder from its text ("0, 0.1, 0.25"): at least one value, each 0 to ``MAX_BETA``."""
    ladder = parse_numbers(text, "β ladder", 0.0, MAX_BETA, most)
    if not ladder:
        raise ValueError("β ladder: give at least one value, e.g. 0, 0.25, 0.5.")
    return ladder


def nats(value: float) -> str:
    """'1 nat', '0.5 nats'."""
    return f"{value:g} nat" + ("" if value == 1 else "s")


def esamp_of(warmup: int, max_kl: float, level: int | bool = True, words: int | bool = True) -> EsampConfig:
    """ESamp's settings from the form's (or a link's) values: a bound of 0 is none; ``level`` 0: the
    paper's push (with both, the paper's fusion); ``words``: push between words only."""
    return EsampConfig(warmup_steps=warmup, max_kl=max_kl or None, keep_entropy=bool(level), between_words=bool(words))


def url_values() -> dict[str, Any]:
    """Each field's value from the page URL; a missing or bad value gives the default."""
    out = {}
    for f in FIELDS:
        raw = st.query_params.get(f.key)
        try:
            value = f.read(raw) if raw is not None else f.default
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
        except ValueError:
            value = f.default
        out[f.key] = value
    return out


def url_settings() -> Settings | None:
    """The Generate a page's URL describes (a shared or reloaded link), or None when it names no
    prompt or holds a value the form would refuse."""
    d, limits = url_values(), serving.policy().limits
    if "prompt" not in st.query_params or not d["prompt"].strip() or len(d["prompt"]) > limits.max_prompt_chars:
        return None
    try:
        return settings_of(d, limits.max_rungs)
    except ValueError:
        return None


def settings_of(d: dict[str, Any], max_rungs: int = 8) -> Settings:
    """The Generate that values of ``FIELDS`` describe (a URL's; ``DEFAULTS``: the first Generate's),
    the model aside; ValueError for a ladder or temperatures the form would refuse."""
    config = config_of({o.field: d[o.url] for o in SETTINGS if o.url}, base=RunConfig(method="esamp"))
    ladder = parse_ladder(d["ladder"], max_rungs)
    temperatures = parse_numbers(d["temps"], "Temperatures", 0.05, 5.0, max_rungs)
    return Settings(d["prompt"], config, ladder, temperatures, nearest(ladder, d["beta"]))


def set_url(model: ModelChoice, settings: Settings) -> None:
    st.query_params.from_dict({f.key: f.text(model, settings) for f in FIELDS})


def model_picker() -> None:
    """The model and backend every page runs on, in the sidebar (first defaults from the URL).
    A served app offers only its own list: a typed name or path would load any file on its disk."""
    url, options, policy = url_values(), serving.backends(), serving.policy()
    st.session_state.setdefault("model_backend", url["backend"] if url["backend"] in options else DEFAULTS["backend"])
    if policy.server:
        st.session_state.model_name, st.session_state.model_backend = "", serving.SERVER
        _server_caption(policy.server)
        return
    if policy.served:
        allowed = policy.allowed_models()
        if st.session_state.get("model_name") not in allowed:
            st.session_state.model_name = url["model"] if url["model"] in allowed else ""
        st.sidebar.selectbox("Model", allowed, key="model_name",
                             format_func=lambda m: m or f"{DEFAULT_MODEL} (embedded)",
                             help="The models this server offers.")
        if url["model"] and url["model"] not in allowed:
            st.sidebar.caption(f"The link asked for model {md(url['model'])}, which this server does not offer.")
    else:
        st.session_state.setdefault("model_name", url["model"])
        st.sidebar.text_input("Model", key="model_name", placeholder=f"{DEFAULT_MODEL} (embedded)",
                              help="Empty: the embedded default. Or any transformers causal LM name or local path.")
    st.sidebar.selectbox("Backend", options, key="model_backend",
                         help="vllm: the same ESamp inside vLLM, which generates every session's runs at once "
                              "(starting it takes ~15 s). transformers: one generation at a time per model.")


def _server_caption(url: str) -> None:
    """What a client of an ESamp server runs on (the server's model: there is nothing to choose)."""
    try:
        lm = get_model("", serving.SERVER)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError, or anything the server answers
        st.sidebar.error(md(exc))
        st.session_state.server_error = str(exc)  # the pages say it too: the sidebar starts folded
        return
    st.session_state.pop("server_error", None)
    st.sidebar.markdown(f"**Model:** {md(lm.name)}  \n**Runs on** the ESamp server at {md(url)} "
                        f"({md(str(lm.device))}, {md(str(lm.dtype).removeprefix('torch.'))})")


def chosen_model() -> ModelChoice:
    return ModelChoice(st.session_state.get("model_name", "").strip(),
                       st.session_state.get("model_backend", DEFAULTS["backend"]))


def model_caption() -> None:
    """Which model a page's runs use, and where to change it: the sidebar starts folded (streamlit_app.py)."""
    server = serving.policy().server
    where = "" if server else " (choose the model in the sidebar: » at the top left)"
    st.caption(f"Runs on {md(chosen_model().label)}{where}.")
    if server and st.session_state.get("server_error"):
        st.error(md(st.session_state.server_error))


def load_chosen_model(slot=None) -> LanguageModel | None:
    """The chosen model, loaded; None with the reason shown (in ``slot``, else on the page)."""
    choice, policy = chosen_model(), serving.policy()
    try:
        return get_model(policy.check_model(choice.name), choice.backend, safetensors_only=policy.served)
    except Exception as exc:  # ModelLoadError, a model this server does not offer, anything a checkpoint throws
        (slot or st).error(md(exc))
        return None


def _clamp(v, lo, hi):
    return min(max(v, lo), hi)


LADDER_HELP = ("One run per β, same seed: 0 is plain sampling, the paper's default is 0.25. Afterwards the β "
               "slider moves between them without generating again. With the bound and the leveled push below, "
               "β up to 1.5 held at 32 and 128 tokens on the embedded model; without them keep β at 0.5 or below "
               "for long answers (docs/results.md, broken text).")
MAX_KL_HELP = ("At the ladder's highest β no guided token's distribution moves further than this from plain "
               "sampling's (KL, nats); a lower rung's bound is as much smaller as its β (β 0.5 of 1.5: a third). "
               "Where the fusion would push harder, that token gets the β that stays within it. 0: no bound (the "
               "paper's), which breaks long answers on this model (docs/results.md, broken text).")
LEVEL_HELP = ("Leveled: the push moves probability between tokens and leaves out its part that acts as a lower "
              "temperature (where the distiller's prediction is still vague, the paper's push also sharpens the "
              "model's distribution, and a small model's long answers then repeat themselves). Off: the paper's "
              "push. docs/method.md, the leveled push.")
WORDS_HELP = ("The push moves only tokens that start a word (a space or a line first); the pieces inside a word, "
              "an emoji's bytes and punctuation keep the model's own probabilities. So ESamp chooses the next "
              "word and never spells one: pushed everywhere, the embedded model glued non-words and emoji chains "
              "(docs/results.md, pushing between words).")
WARMUP_HELP = ("ESamp samples this many tokens after the first unguided, while the distiller learns the prompt "
               "(0: the paper's rule, only the first token). Guiding by a distiller that has not learned yet "
               "broke the text (docs/results.md, the frontier).")


def settings_form(key: str) -> tuple[Settings, LanguageModel] | None:
    """The prompt and sampling settings in one form. On a valid submit: the settings and the chosen
    model, loaded; otherwise None, with the reason shown next to the widget it concerns."""
    d, limits = url_values(), serving.policy().limits
    model_caption()
    with st.form(key):
        # No max_chars: the browser would drop a longer paste without a word; the length is checked below.
        prompt = st.text_area("Prompt", d["prompt"][:limits.max_prompt_chars], height=100,
                              help=f"At most {limits.max_prompt_chars:,} characters. Model output is shown as text, "
                                   "never as HTML.")
        prompt_error = st.empty()
        # What most runs change first, then Generate, then the method's and the sampler's details: on a
        # classroom projector (1024x768) the button is on the first screen (tests/test_browser.py checks it).
        c1, c2, c3 = st.columns([1, 1, 1.2])
        mode = c1.radio("Mode", ["chat", "raw continuation"], index=0 if d["raw"] else 1, horizontal=True,
                        help="chat wraps the prompt in the model's chat template")
        ladder_text = c2.text_input("β ladder", d["ladder"], max_chars=200, help=LADDER_HELP)
        temps_text = c3.text_input("Also plain at temperatures (optional)", d["temps"], max_chars=200,
                                   placeholder="e.g. 0.7, 1.3, 1.6",
                                   help="To see where ESamp's curve lies against temperature's, for this prompt.")
        ladder_error = st.empty()
        c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")
        n = c1.number_input("Samples per prompt (n)", 1, limits.max_n, int(_clamp(d["n"], 1, limits.max_n)))
        tokens = c2.number_input("Max new tokens", 1, limits.max_new_tokens,
                                 int(_clamp(d["tokens"], 1, limits.max_new_tokens)))
        seed = c3.number_input("Seed", 0, 2**31 - 1, int(_clamp(d["seed"], 0, 2**31 - 1)))
        submitted = c4.form_submit_button("Generate", type="primary", width="stretch")
        model_error = st.empty()
        push, candidates = _details(d, limits.max_new_tokens)
    if not submitted:
        return None
    problem = prompt_problem(prompt, limits.max_prompt_chars)
    if problem:
        prompt_error.error(problem)
        return None
    try:
        ladder = parse_ladder(ladder_text, limits.max_rungs)
        temperatures = parse_numbers(temps_text, "Temperatures", 0.05, 5.0, limits.max_rungs)
        config = RunConfig(method="esamp", chat=mode == "chat", esamp=esamp_of(**push),
                           sampling=SamplingConfig(n=int(n), max_new_tokens=int(tokens), seed=int(seed), **candidates))
        chosen = Settings(prompt, config, ladder, temperatures, nearest(ladder, d["beta"]))
        if len(chosen.configs()) > limits.max_rungs:
            raise ValueError(f"{len(chosen.configs())} runs (β values and temperatures together); this server "
                             f"runs at most {limits.max_rungs} in one Generate.")
    except ValueError as exc:
        ladder_error.error(md(exc))
        return None
    lm = load_chosen_model(model_error)
    return None if lm is None or not _fits(lm, chosen, prompt_error) else (chosen, lm)


def _details(d: dict, max_new_tokens: int) -> tuple[dict, dict]:
    """The form's rows under Generate, as the URL's values ``d`` set them: ESamp's push (``esamp_of``'s
    arguments: warm-up, bound, leveled, between words) and the candidates (SamplingConfig's temperature,
    top-k, top-p, min-p)."""
    st.caption("ESamp's push and the candidates (the defaults are what held on the benchmarks; each ? says more)")
    c1, c2, c3, c4 = st.columns([1, 1, 1.1, 1.1], vertical_alignment="bottom")
    push = dict(warmup=int(c1.number_input("Warm-up (tokens)", 0, max_new_tokens,
                                           int(_clamp(d["warmup"], 0, max_new_tokens)), help=WARMUP_HELP)),
                max_kl=float(c2.number_input("Push per token at most (nats, top β)", 0.0, 5.0,
                                             float(_clamp(d["max_kl"] or 0.0, 0.0, 5.0)), 0.05, help=MAX_KL_HELP)),
                level=c3.checkbox("Leveled push", bool(d["level"]),
                                  help=LEVEL_HELP),
                words=c4.checkbox("Between words only", bool(d["words"]), help=WORDS_HELP))
    c1, c2, c3, c4 = st.columns(4)
    return push, dict(temperature=float(c1.number_input("Temperature", 0.05, 5.0, float(_clamp(d["T"], 0.05, 5.0)),
                                                        0.05)),
                      top_k=int(c2.number_input("Top-k (0 = off)", 0, 1000, int(_clamp(d["top_k"], 0, 1000)))),
                      top_p=float(c3.number_input("Top-p (1 = off)", 0.01, 1.0, float(_clamp(d["top_p"], 0.01, 1.0)),
                                                  0.01)),
                      min_p=float(c4.number_input("Min-p (0 = off)", 0.0, 1.0, float(_clamp(d["min_p"], 0.0, 1.0)),
                                                  0.01)))


def _fits(lm: LanguageModel, chosen: Settings, slot) -> bool:
    """Whether the prompt and its tokens fit the model's context; if not, the reason goes to ``slot``."""
    try:
        check_runs(lm, [chosen.prompt], [chosen.config])
    except ValueError as exc:
        slot.error(md(exc))
        return False
    return True


def prompt_problem(prompt: str, max_chars: int) -> str | None:
    """Why a prompt cannot be generated from, or None."""
    if not prompt.strip():
        return "Write a prompt first: it is empty."
    if len(prompt) > max_chars:
        return (f"The prompt has {len(prompt):,} characters; this server takes at most {max_chars:,}. "
                "Shorten it: your text is still in the box.")
    return None


def read_task_file(data: bytes, max_mb: float) -> list[Task]:
    """An uploaded JSONL task file, checked: its size, its encoding, every line (errors name the line)."""
    if len(data) > max_mb * 2**20:
        raise ValueError(f"The task file is {len(data) / 2**20:.1f} MB; this server takes task files up to "
                         f"{max_mb:g} MB.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"The task file is not UTF-8 text ({exc.reason} at byte {exc.start}).") from exc
    return tasks_from_jsonl(text)


# A branch by hand (Explore's tree): its settings in the URL beside the run's, so a link reopens it.
BRANCH_KEYS = ("bprefix", "bn", "bbeta", "btokens")


def set_branch_url(config: RunConfig) -> None:
    st.query_params.update(bprefix=",".join(map(str, config.prefix_ids)), bn=str(config.sampling.n),
                           bbeta=f"{config.beta:g}", btokens=str(config.sampling.max_new_tokens))


def url_branch(ladder: Sequence[RunConfig], prime: bool) -> RunConfig | None:
    """The branch the URL names, as a continuation of the first of ``ladder``'s runs (``prime``: its
    distiller starts primed, render.primes); None if none or not valid."""
    if not all(k in st.query_params for k in BRANCH_KEYS):
        return None
    try:
        prefix = tuple(int(w) for w in st.query_params["bprefix"].split(","))
        return continuation(ladder[0], ladder, beta=float(st.query_params["bbeta"]), prefix_ids=prefix,
                            n=int(st.query_params["bn"]), max_new_tokens=int(st.query_params["btokens"]), prime=prime)
    except (ValueError, TypeError):
        return None
