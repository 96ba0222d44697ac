"""Configuration dataclasses for one generation run, validated at construction.

Each field's comment says why its default is what it is. A neutral value (``top_k=0``,
``top_p=1.0``, ``min_p=0.0``) means "leave that filter out", as in transformers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

METHODS = ("plain", "esamp", "fire")
BACKENDS = ("transformers", "vllm")  # core/backends/hf/, core/backends/vllm/ (optional: needs vLLM)
SCOPES = ("prompt", "shared")
TRACE_LEVELS = ("full", "light")
DISTILLERS = ("normed", "normed-unit", "final-norm", "residual")  # core/esamp/distiller.py, DESIGNS
STARTS = ("fresh", "pretrained")  # core/backends/start.py
DISTILLER_DTYPES = ("float32", "model")  # core/esamp/distiller.py, weights_dtype

# Upper limits that keep one request sane on a laptop-sized machine; the app uses smaller ones.
MAX_SAMPLES = 512
MAX_NEW_TOKENS = 8192
MAX_BETA = 10.0
MAX_KL = 100.0  # nats; a bound this large never binds on a real vocabulary


def _check_range(name: str, value: Any, lo: float, hi: float, hint: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not lo <= value <= hi:
        raise ValueError(f"`{name}` must be between {lo} and {hi}, but is {value!r}.{hint}")


def _check_int(name: str, value: Any, lo: int, hi: int, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"`{name}` must be an integer from {lo} to {hi}, but is {value!r}.{hint}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):  # "false" from a request is truthy: say so rather than take it as True
        raise ValueError(f"`{name}` must be true or false, but is {value!r}.")


MAX_PROMPTS = 256


def check_prompts(prompts) -> None:
    """Non-empty list of non-blank strings, or ValueError saying which prompt is wrong."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("`prompts` must be a non-empty list of strings.")
    if len(prompts) > MAX_PROMPTS:
        raise ValueError(f"`prompts` holds {len(prompts)} prompts; at most {MAX_PROMPTS} fit one run.")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"Prompt {i} is empty: give some text to continue or answer.")


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn: n samples per prompt, filters in transformers' order."""

    n: int = 4  # samples per prompt; ESamp's distiller is shared by a prompt's n samples
    max_new_tokens: int = 128
    temperature: float = 1.0  # T=1 is the paper's setting for plain sampling
    top_k: int = 50  # transformers' default; 0 turns it off
    top_p: float = 1.0  # 1.0 turns it off
    min_p: float = 0.0  # 0.0 turns it off; 0.1 is the min-p baseline of the paper
    seed: int = 0
    ignore_eos: bool = False  # benchmarks set it so every run does the same work

    def __post_init__(self) -> None:
        _check_int("n", self.n, 1, MAX_SAMPLES)
        _check_int("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or not 0.0 < self.temperature <= 100.0:
            raise ValueError(
                f"`temperature` has to be a positive float up to 100, but is {self.temperature!r}. "
                "For greedy decoding use a small value such as 1e-3.")
        _check_int("top_k", self.top_k, 0, 10**7, " Use 0 to turn top-k off.")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` has to be a float in (0, 1], but is {self.top_p!r}. "
                             "Use 1.0 to turn top-p off.")
        _check_range("min_p", self.min_p, 0.0, 1.0, " Use 0.0 to turn min-p off.")
        _check_int("seed", self.seed, 0, 2**63 - 1)

    @property
    def filters_active(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


@dataclass(frozen=True)
class EsampConfig:
    """The distiller and the fusion strength (ESAMP.md, 'Distiller' and 'Fusion')."""

    beta: float = 0.25  # the paper's default; 0.1 to 0.4 all worked, 0.5 was worse on math
    scope: str = "prompt"  # "prompt": one distiller per prompt (paper default); "shared": one for the batch
    distiller: str = "normed"  # the design around the blocks (bench.distiller); "residual": the paper literally
    # Width inside each gated block. The paper's 384 learns a little better (bench.distiller) at 6x the
    # parameters; its Adam step is memory-bound on a CPU and runs once per prompt per step.
    intermediate: int = 64
    blocks: int = 2  # the paper found 4 no better than 2
    # Deliberately aggressive: it must adapt within one generation. The paper's is 4e-4; 1e-3 (the public
    # reference's) learns faster and, with the bound below, explored more without breaking more text on two
    # seeds of the frontier at 32 and 128 tokens and on one at 256 (docs/results.md, "The reference's
    # learning rate"); --distiller-lr 4e-4 is the paper's.
    lr: float = 1e-3
    eps: float = 1e-4
    grad_clip: float = 0.5
    shadow: bool = True  # run the distiller with beta=0 for plain/fire so novelty is logged
    noise: bool = False  # the paper's ablation: fuse with Gaussian noise of e's norm per row instead of e
    # Run each step's update off the critical path, overlapping the next forward pass (the same
    # weights as the serial order). None: on CUDA (a side stream); off on CPU, where a worker
    # thread competes with the forward pass for 2 cores and gains nothing (bench.openmp's
    # esamp-overlap run: 581 tokens/s against the serial update's 587; docs/results.md).
    overlap: bool | None = None
    # A warm-up of the guidance (bench.frontier's warm-up rows): the fusion waits while the prompt's
    # distiller is still learning. The first token of an answer is never guided; with `warmup_steps`
    # the next that many tokens of every answer are not either, and with `warmup_novelty` > 0 guidance
    # starts only once the prompt's distiller's running relative novelty (about its last four steps)
    # has fallen below that value, and stays on. 0 and 0.0: the paper's rule, every token but the first.
    warmup_steps: int = 0
    warmup_novelty: float = 0.0
    # A continuation's distiller (RunConfig.prefix_ids): False starts it fresh, as for any run; True
    # first trains it one step per given token on that token's states, as the original answer's run
    # did (one row a step, not n; transformers only). bench.branch measured both.
    prime: bool = False
    # A bounded push per token (core/esamp/budget.py): no guided token's distribution moves more than
    # this many nats (KL to the filtered reference) from plain sampling's; where the paper's fusion at
    # β would move it further, that token gets the largest β below that stays within. None: unbounded
    # (the paper's fusion, which on the embedded model loops in about half of its 128-token answers at
    # β = 1.5); 0: no push at all. 1, with the leveled push between words below and lr 1e-3: what held at
    # 32, 128 and 256 tokens with the largest gain, broken answers counted as loops and glued non-words, on
    # two seeds (bench.frontier, docs/results.md "Pushing between words"; pushing every candidate 0.5 held,
    # and at lr 4e-4 0.3).
    max_kl: float | None = 1.0
    # The push less its part along the reference logits (core.esamp.fusion.level): where the distiller's
    # prediction is broad the paper's fusion also sharpens (a lower temperature, which makes a small
    # model's long answers loop); leveled, it only moves mass between tokens. True: what held at 32 and
    # 128 tokens (bench.frontier: fewer looping answers than plain's, as diverse; docs/results.md).
    # False: the paper's push.
    keep_entropy: bool = True
    # The push moves only the candidates that start a word (a space or a line first; core/esamp/words.py);
    # a piece inside a word, a character's bytes and punctuation keep the model's own probabilities, so the
    # push chooses the next word and never spells one (on the default demo the glued non-words and emoji
    # chains came from pushes inside words). True: at the same bound it broke fewer answers than pushing
    # every candidate, as far above temperature's curve, and held a bound twice as large (docs/results.md,
    # "Pushing between words"). False: every candidate, the paper's.
    between_words: bool = True
    # Where each run's distillers start (core/backends/start.py): "fresh" random weights, the paper's;
    # "pretrained": this model's distiller trained once on its own answers to generic prompts (cached),
    # which predicts better than nothing from a run's first token on. Either adapts online, per run.
    start: str = "fresh"
    # What the distillers' weights and Adam state are kept and multiplied in: "float32" always, or "model":
    # bfloat16 for a bfloat16 model (the public reference's model bank keeps the model's dtype), float32 for
    # any other. Their input, prediction, loss and novelty are float32 either way. On the embedded model
    # bfloat16 distillers learned as float32 ones (relative novelty by quarter the same to 0.001) but inside
    # vLLM's engine on a CPU saved only ~4 ms of a ~1 s step at 16 sessions and nothing measurable in one
    # run (docs/results.md, "The distillers in bfloat16"): float32 stays the default.
    distiller_dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_range("beta", self.beta, 0.0, MAX_BETA, " The paper's default is 0.25.")
        if self.max_kl is not None:
            _check_range("max_kl", self.max_kl, 0.0, MAX_KL, " Use None for no bound (the paper's fusion).")
        if self.scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {SCOPES}, but is {self.scope!r}.")
        if self.start not in STARTS:
            raise ValueError(f"`start` must be one of {STARTS}, but is {self.start!r}.")
        if self.distiller_dtype not in DISTILLER_DTYPES:
            raise ValueError(f"`distiller_dtype` must be one of {DISTILLER_DTYPES}, but is {self.distiller_dtype!r}.")
        if self.distiller not in DISTILLERS:
            raise ValueError(f"`distiller` must be one of {DISTILLERS}, but is {self.distiller!r}.")
        _check_int("intermediate", self.intermediate, 1, 65536)
        _check_int("blocks", self.blocks, 1, 16)
        _check_range("lr", self.lr, 1e-8, 1.0)
        _check_range("eps", self.eps, 1e-12, 1.0)
        _check_range("grad_clip", self.grad_clip, 1e-6, 1e6)
        _check_int("warmup_steps", self.warmup_steps, 0, MAX_NEW_TOKENS, " Use 0 for no warm-up.")
        _check_range("warmup_novelty", self.warmup_novelty, 0.0, 10.0, " Use 0 for no novelty threshold.")
        for name in ("shadow", "noise", "prime", "keep_entropy", "between_words"):
            _check_bool(name, getattr(self, name))


@dataclass(frozen=True)
class FireConfig:
    """FIRE baseline: the first token drawn very hot inside a top-k window, then normal sampling."""

    temperature: float = 10.0  # "flaming hot": close to uniform over the window
    top_k: int = 20  # the window keeps the hot first token plausible

    def __post_init__(self) -> None:
        _check_range("fire.temperature", self.temperature, 1e-3, 1000.0)
        _check_int("fire.top_k", self.top_k, 1, 10**7)


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's tokens, apart from the model and the prompts."""

    method: str = "esamp"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    esamp: EsampConfig = field(default_factory=EsampConfig)
    fire: FireConfig = field(default_factory=FireConfig)
    chat: bool = True  # wrap prompts in the model's chat template; False = raw continuation
    # "full" records every token's log p under the model itself (logp_base: perplexity with no second
    # pass, at one pass over the vocabulary per step); "light" leaves it out, for batch runs and benchmarks.
    trace: str = "full"
    # A continuation: token ids every answer starts with, taken as given after the prompt (and its chat
    # template); the answers are the tokens generated after them. () = answers from the prompt on.
    prefix_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, but is {self.method!r}.")
        if self.trace not in TRACE_LEVELS:
            raise ValueError(f"`trace` must be one of {TRACE_LEVELS}, but is {self.trace!r}.")
        ids = self.prefix_ids
        if isinstance(ids, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                    for i in ids) or len(ids) > MAX_NEW_TOKENS:
            raise ValueError(f"`prefix_ids` must be at most {MAX_NEW_TOKENS} token ids (integers >= 0), "
                             f"but is {ids!r:.80}.")
        object.__setattr__(self, "prefix_ids", tuple(ids))  # a list from JSON: still one hashable config

    @property
    def beta(self) -> float:
        """The fusion strength actually applied: 0 for every method but esamp."""
        return self.esamp.beta if self.method == "esamp" else 0.0

    @property
    def uses_distiller(self) -> bool:
        return self.method == "esamp" or self.esamp.shadow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(
            method=d["method"],
            sampling=SamplingConfig(**d["sampling"]),
            esamp=EsampConfig(**d["esamp"]),
            fire=FireConfig(**d["fire"]),
            chat=d["chat"],
            trace=d.get("trace", "full"),
            prefix_ids=tuple(d.get("prefix_ids", ())),
        )


def beta_ladder(config: RunConfig, betas: Sequence[float], scale_bound: bool = False) -> list[RunConfig]:
    """One run per β, in the order given, each with ``config``'s sampling settings and seed: ESamp at
    β > 0, plain sampling at β = 0 (its distiller in shadow, so its novelty is logged too).

    ``scale_bound``: each rung's bound on the push per token (``EsampConfig.max_kl``) is ``config``'s
    times β over the ladder's highest β, so that a higher rung may move each token further. Without it
    one bound binds at every rung where the fusion pushes harder than it (on a fresh distiller: from
    β ≈ 0.1 on), and those rungs draw the same tokens."""
    if not betas:
        raise ValueError("A β ladder needs at least one value.")
    top = max(betas)

    def bound(b: float) -> float | None:
        kl = config.esamp.max_kl
        return round(kl * b / top, 6) if scale_bound and kl is not None and top > 0 else kl  # no 0.09999…

    return [replace(config, method="esamp" if b > 0 else "plain",
                    esamp=replace(config.esamp, beta=float(b), max_kl=bound(b))) for b in betas]


def ladder_key(config: RunConfig) -> tuple | None:
    """What runs share to be stepped as one, with a β per row (a backend may; vLLM's does): everything but
    β and the bound on the push (``max_kl``), plain sampling counting as ESamp at β = 0 (the rungs of
    ``beta_ladder``). None for a run that steps alone: another method, or the noise ablation (its noise
    is drawn for the run's own rows)."""
    if config.method not in ("esamp", "plain") or config.esamp.noise:
        return None
    return config.uses_distiller, replace(config, method="esamp",
                                          esamp=replace(config.esamp, beta=0.0, max_kl=None, shadow=True))


def continuation(config: RunConfig, ladder: Sequence[RunConfig], *, beta: float, prefix_ids: tuple[int, ...],
                 n: int, max_new_tokens: int, prime: bool = False) -> RunConfig:
    """``config`` continued from ``prefix_ids`` (a branch by hand): n answers of ``max_new_tokens`` at
    ``beta`` (plain sampling at 0), the distiller primed on the prefix where ``prime``. Its bound on the
    push per token is scaled from the highest rung of ``ladder`` (the runs it branches beside, made by
    ``beta_ladder(scale_bound=True)``) as that ladder scales it, so a branch at β pushes as a rung at β
    would; that rung's own bound where no rung has β > 0."""
    top = max(ladder, key=lambda c: c.esamp.beta).esamp
    kl = top.max_kl
    if kl is not None and top.beta > 0:
        kl = min(round(kl * beta / top.beta, 6), MAX_KL)
    return replace(config, method="esamp" if beta > 0 else "plain", prefix_ids=tuple(prefix_ids),
                   esamp=replace(config.esamp, beta=float(beta), prime=prime, max_kl=kl),
                   sampling=replace(config.sampling, n=int(n), max_new_tokens=int(max_new_tokens)))


def temperature_ladder(config: RunConfig, temperatures: Sequence[float]) -> list[RunConfig]:
    """Plain sampling at each temperature, with ``config``'s other settings and seed."""
    return [replace(config, method="plain", esamp=replace(config.esamp, beta=0.0),
                    sampling=replace(config.sampling, temperature=float(t))) for t in temperatures]
