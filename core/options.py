"""The run settings a user sets, in one table that every door reads: the command line (core/cli.py),
the app's URL (app/settings.py), one served request (core/backends/vllm/request.py: vLLM's own
request fields and ESamp's ``vllm_xargs``). The routes' JSON and the trace carry the RunConfig
itself (``RunConfig.to_dict``).

Each ``Option`` names a RunConfig field and how each door spells it; ``config_of`` builds the
RunConfig from values by field. Plain text (a command line's word, a URL's value) reads with
``Option.read`` and is written back with ``Option.text``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from .config import DISTILLER_DTYPES, DISTILLERS, METHODS, SCOPES, STARTS, TRACE_LEVELS, EsampConfig, RunConfig

XARG = "esamp_"  # a served request's ESamp settings: vllm_xargs["esamp_<field>"]
NO_BOUND = "none"  # max_kl with no bound, where null cannot be written (a command line, vllm_xargs)


def token_ids(text: str) -> tuple[int, ...]:
    """``12,345,6``: comma-separated token ids (empty: none)."""
    try:
        return tuple(int(w) for w in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of token ids") from None


def bound(text: str) -> float | None:
    """A bound in nats, or none: ``0.5``; ``none``, ``off`` or ``0`` (a URL's older spelling) for no bound."""
    if text.strip().lower() in (NO_BOUND, "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of nats, nor {NO_BOUND!r}") from None
    return value or None


def switch(text: str) -> bool:
    """A switch's value as text: 1/0, true/false (a URL's, or what vLLM's request model made of JSON's true)."""
    value = {"1": True, "true": True, "0": False, "false": False}.get(str(text).strip().lower())
    if value is None:
        raise ValueError(f"{text!r} is not 1/0 nor true/false")
    return value


@dataclass(frozen=True)
class Option:
    """One run setting: the RunConfig ``field`` it sets and how each door spells it."""

    field: str  # a path into RunConfig: "method", "sampling.top_k", "esamp.beta"
    flags: tuple[str, ...]  # the command line's
    type: Callable[[str], Any] | None = None  # reads one word of text; None: a switch (bool)
    help: str | None = None
    choices: Sequence[str] | None = None
    negate: bool = False  # the command line's switch sets the field False (--raw: chat off)
    shown: str = "changed"  # when core.cli.command_for writes it: "always", "changed", or a method's name
    url: str | None = None  # the app's URL parameter (a shared link's: never renamed)
    flip_text: bool = False  # as text (1/0) it holds the switch the other way round (the URL's raw=1: chat off)
    served: str | None = None  # one served request's: "xarg" (vllm_xargs esamp_<name>), a SamplingParams
    #                            field's name, or None (not a request's to choose)

    @property
    def name(self) -> str:
        return self.field.rpartition(".")[2]

    @property
    def dest(self) -> str:  # argparse's
        return self.field.replace(".", "__")

    @property
    def xarg(self) -> str | None:
        return XARG + self.name if self.served == "xarg" else None

    def read(self, text: str) -> Any:
        """The field's value from text; ValueError naming what is wrong."""
        if self.type is None:
            value = switch(text)
            return value != self.flip_text
        value = self.type(text)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return value

    def text(self, value: Any) -> str:
        """The value as ``read`` reads it back."""
        if self.type is None:
            return str(int(value != self.flip_text))
        if value is None:
            return NO_BOUND
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
            return str(int(value))  # "1", as a person writes it (and reads back as the same float)
        return str(value)


SETTINGS = [
    Option("method", ("--method",), str, choices=METHODS, shown="always"),
    Option("sampling.n", ("-n", "--n"), int, "samples per prompt", shown="always", url="n", served="n"),
    Option("sampling.max_new_tokens", ("--max-new-tokens",), int, shown="always", url="tokens", served="max_tokens"),
    Option("sampling.temperature", ("--temperature",), float, shown="always", url="T", served="temperature"),
    Option("sampling.top_k", ("--top-k",), int, "0 turns it off", shown="always", url="top_k", served="top_k"),
    Option("sampling.top_p", ("--top-p",), float, "1.0 turns it off", shown="always", url="top_p", served="top_p"),
    Option("sampling.min_p", ("--min-p",), float, "0.0 turns it off", shown="always", url="min_p", served="min_p"),
    Option("sampling.seed", ("--seed",), int, shown="always", url="seed", served="seed"),
    Option("esamp.beta", ("--beta",), float, "exploration strength (esamp)", shown="esamp", served="xarg"),
    Option("esamp.scope", ("--scope",), str, "one distiller per prompt, or shared", choices=SCOPES),
    Option("fire.temperature", ("--fire-temperature",), float, shown="fire"),
    Option("fire.top_k", ("--fire-top-k",), int, shown="fire"),
    Option("esamp.shadow", ("--no-shadow",), None, "no distiller for plain/fire (no novelty logged)", negate=True),
    Option("esamp.noise", ("--noise",), None,
           "the paper's ablation: steer by Gaussian noise as long as the error instead of the error", served="xarg"),
    Option("esamp.distiller", ("--distiller",), str, "the distiller's design", choices=DISTILLERS, served="xarg"),
    Option("esamp.intermediate", ("--distiller-width",), int,
           f"width inside its gated blocks (default {EsampConfig().intermediate}; the paper's: 384)", served="xarg"),
    Option("esamp.blocks", ("--distiller-blocks",), int, f"gated blocks (default {EsampConfig().blocks})",
           served="xarg"),
    Option("esamp.lr", ("--distiller-lr",), float, f"its learning rate (default {EsampConfig().lr:g})", served="xarg"),
    Option("esamp.eps", ("--distiller-eps",), float, f"its Adam epsilon (default {EsampConfig().eps:g})",
           served="xarg"),
    Option("esamp.grad_clip", ("--distiller-grad-clip",), float,
           f"its gradient clip (default {EsampConfig().grad_clip:g})", served="xarg"),
    Option("esamp.distiller_dtype", ("--distiller-dtype",), str, "what the distillers' weights and Adam state "
           "compute in: float32, or the model's dtype where it is bfloat16 (as the reference's)",
           choices=DISTILLER_DTYPES, served="xarg"),
    Option("esamp.warmup_steps", ("--warmup-steps",), int,
           "esamp: sample this many tokens after the first unguided while the distiller learns", url="warmup",
           served="xarg"),
    Option("esamp.warmup_novelty", ("--warmup-novelty",), float,
           "esamp: sample unguided until the distiller's running relative novelty is below this", served="xarg"),
    Option("esamp.max_kl", ("--max-kl",), bound,
           "esamp: no token's distribution moves more than this many nats (KL) from plain sampling's; none: "
           "unbounded, the paper's fusion", url="max_kl", served="xarg"),
    Option("esamp.keep_entropy", ("--unleveled",), None, "esamp: push as the paper does, with its part along the "
           "model's own logits, which acts as a lower temperature (default: leveled, without it)", negate=True,
           url="level", served="xarg"),
    Option("esamp.between_words", ("--inside-words",), None, "esamp: push every token, also the pieces inside a "
           "word, a character's bytes and punctuation, as the paper does (default: only the tokens that start a word)",
           negate=True, url="words", served="xarg"),
    Option("esamp.start", ("--start",), str, "where each run's distillers start: fresh (the paper) or this model's "
           "pretrained distiller (built once, cached)", choices=STARTS, served="xarg"),
    Option("sampling.ignore_eos", ("--ignore-eos",), None, "always generate max_new_tokens", served="ignore_eos"),
    Option("chat", ("--raw",), None, "no chat template: plain continuation", negate=True, url="raw", flip_text=True),
    Option("trace", ("--trace",), str, "light: no per-token log p under the model itself (perplexity then "
           "scores the text again)", choices=TRACE_LEVELS),
    Option("prefix_ids", ("--prefix-ids",), token_ids, "continue every answer from these token ids (comma-"
           "separated), taken as given after the prompt"),
    Option("esamp.prime", ("--prime",), None, "with --prefix-ids: first train the distiller on the given "
           "tokens' states (transformers only)"),
]
BY_FIELD = {o.field: o for o in SETTINGS}


def get(config: RunConfig, field: str) -> Any:
    for part in field.split("."):
        config = getattr(config, part)
    return config


def config_of(values: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """``base`` (RunConfig's defaults without one) with ``values`` (by field: {"esamp.beta": 0.5}) set;
    ValueError from the config's own checks."""
    base = base or RunConfig()
    unknown = sorted(set(values) - set(BY_FIELD))
    if unknown:
        raise ValueError(f"no run setting {unknown[0]!r}")
    by_section: dict[str, dict[str, Any]] = {}
    for field, value in values.items():
        section, _, name = field.rpartition(".")
        by_section.setdefault(section, {})[name] = value
    parts = {section: replace(getattr(base, section), **kw) for section, kw in by_section.items() if section}
    return replace(base, **by_section.get("", {}), **parts)
