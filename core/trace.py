"""The run trace: one format from the engine through viz, the app, history and the CLI.

Plain dataclasses with a JSON round trip (``RunTrace.from_json(t.to_json()) == t``); no pickle.
Token pieces concatenate exactly to their sample's text.

The format carries a version. A change to what a trace holds bumps ``TRACE_VERSION`` and adds
an upgrade from the version before to ``_UPGRADES``, so every older trace still loads:

- version 1: the first format;
- version 2: every token has ``logp_base`` (version 1 traces may lack it: it loads as None);
- version 3: every prompt has ``rel_novelty``, its distiller's mean relative novelty per step
  (empty in older traces); timings have ``parts``, the seconds per part of the per-step work; the
  config has ``trace`` ("full", or "light": no ``logp_base``);
- version 4: the config's ``esamp`` has ``warmup_steps`` and ``warmup_novelty`` (older traces had
  no warm-up: 0 and 0.0);
- version 5: the config has ``prefix_ids``, a continuation's given tokens, and its ``esamp`` has
  ``prime`` (older traces: none, and False);
- version 6: every token has ``kl``, how far the fusion moved its step's distribution, and the
  config's ``esamp`` has ``max_kl``, the bound on it (older traces: unknown, None; and no bound, None);
- version 7: the config's ``esamp`` has ``keep_entropy``, whether the push was leveled (older traces: the
  paper's push, False);
- version 8: the config's ``esamp`` has ``between_words``, whether the push moved word starts only
  (older traces: every candidate, False);
- version 9: the config's ``esamp`` has ``distiller_dtype``, what the distillers' weights computed in
  ("float32", or "model": bfloat16 for a bfloat16 model; older traces: "float32", as every run's then).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import RunConfig

TRACE_VERSION = 9


@dataclass
class Candidate:
    id: int
    text: str
    p_ref: float  # probability before fusion (after the filters)
    p_new: float  # and after


@dataclass
class Token:
    id: int
    text: str  # this token's piece of the sample text ("" when it completes a later character)
    logp_ref: float
    logp_new: float
    entropy_ref: float
    entropy_new: float
    novelty: float | None = None  # ||h - h_hat||; None when no distiller ran
    rel_novelty: float | None = None  # ||h - h_hat|| / ||h||
    # log p of this token under the model itself (T=1, no filters, no fusion): perplexity without a
    # second forward pass. None only where a version 1 trace did not record it.
    logp_base: float | None = None
    # KL(p_new || p_ref) of this token's step in nats: how far the fusion moved the distribution it was
    # drawn from (0 where unguided). None where a version 5 or older trace did not record it.
    kl: float | None = None
    top: list[Candidate] = field(default_factory=list)


# The per-token signals a run records: every field of Token but its id, text and candidates. This is
# their one list: core.esamp.signals computes each per step under its name, core.backends.record
# stores them without naming any. Adding one: a Token field (a format change: bump TRACE_VERSION,
# with an upgrade) and its value in core.esamp.signals.
TOKEN_SIGNALS = tuple(f.name for f in fields(Token) if f.name not in ("id", "text", "top"))


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    text: str
    finish_reason: str  # "eos", "length" or "stopped"
    tokens: list[Token] = field(default_factory=list)


@dataclass
class PromptTrace:
    text: str  # as the user gave it
    n_prompt_tokens: int
    loss: list[float] = field(default_factory=list)  # distiller loss per step (empty: no distiller)
    # mean ||h - h_hat|| / ||h|| over the rows the distiller trained on, per step (1 = no better than zero)
    rel_novelty: list[float] = field(default_factory=list)
    resets: int = 0  # NaN/inf resets of this prompt's distiller


@dataclass
class Timings:
    seconds: float
    new_tokens: int
    tokens_per_s: float
    prefill_seconds: float = 0.0
    distiller_seconds: float = 0.0  # of `seconds`, spent in ESamp's own work (distiller and fusion)
    # of `seconds`, by part of the per-step work around the model (core.esamp.clock.PARTS)
    parts: dict[str, float] = field(default_factory=dict)


@dataclass
class RunTrace:
    config: RunConfig
    model: str
    backend: str
    device: str
    dtype: str
    prompts: list[PromptTrace]
    samples: list[Sample]
    timings: Timings
    stopped: bool = False  # cancelled by the user; what was generated so far is kept
    created: str = ""  # ISO time
    version: int = TRACE_VERSION

    @property
    def method(self) -> str:
        return self.config.method

    def samples_of(self, prompt_index: int) -> list[Sample]:
        return [s for s in self.samples if s.prompt_index == prompt_index]

    def texts(self, prompt_index: int | None = None) -> list[str]:
        return [s.text for s in self.samples if prompt_index is None or s.prompt_index == prompt_index]

    def mean_novelty(self) -> float | None:
        vals = [t.novelty for s in self.samples for t in s.tokens if t.novelty is not None]
        return sum(vals) / len(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return _finite(d)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent, allow_nan=False)

    def save(self, path: str | Path) -> None:
        """Written whole or not at all: a crash mid-write leaves any earlier file at ``path`` as it was."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_json(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunTrace":
        """A trace of this version or any older one (upgraded on the way in); ValueError for
        anything else, saying what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"Not a run trace: the JSON holds a {type(d).__name__}, not an object.")
        try:
            return cls._from_dict(d)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"Not a run trace of version {d.get('version')!r}: {type(exc).__name__} "
                             f"{exc} (a damaged or hand-edited file?).") from exc

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "RunTrace":
        version = d.get("version", 0)
        if not isinstance(version, int) or not 1 <= version <= TRACE_VERSION:
            raise ValueError(f"Trace version {version!r} is not supported: this build reads versions 1 to "
                             f"{TRACE_VERSION}. A newer ESamp Explorer wrote it; upgrade to read it.")
        for v in range(version, TRACE_VERSION):
            d = _UPGRADES[v](d)
        samples = [Sample(**{**s, "tokens": [Token(**{**t, "top": [Candidate(**c) for c in t["top"]]})
                                             for t in s["tokens"]]}) for s in d["samples"]]
        return cls(config=RunConfig.from_dict(d["config"]), model=d["model"], backend=d["backend"],
                   device=d["device"], dtype=d["dtype"], prompts=[PromptTrace(**p) for p in d["prompts"]],
                   samples=samples, timings=Timings(**d["timings"]), stopped=d["stopped"],
                   created=d["created"], version=TRACE_VERSION)

    @classmethod
    def from_json(cls, text: str) -> "RunTrace":
        try:
            data = json.loads(text)
        except RecursionError:  # brackets nested past Python's recursion limit
            raise ValueError("Not a run trace: its JSON is nested too deeply.") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "RunTrace":
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path} is not a run trace: not UTF-8 text.") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """Version 1 traces were written with and without ``logp_base``; where it is missing it is unknown."""
    for s in d["samples"]:
        for tok in s["tokens"]:
            tok.setdefault("logp_base", None)
    return {**d, "version": 2}


def _v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
    """Version 2 traces did not record the distiller's mean relative novelty per step."""
    return {**d, "prompts": [{**p, "rel_novelty": []} for p in d["prompts"]],
            "timings": {**d["timings"], "parts": {}}, "version": 3}


def _v3_to_v4(d: dict[str, Any]) -> dict[str, Any]:
    """Version 3 traces had no warm-up of the guidance."""
    esamp = {"warmup_steps": 0, "warmup_novelty": 0.0, **d["config"]["esamp"]}
    return {**d, "config": {**d["config"], "esamp": esamp}, "version": 4}


def _v4_to_v5(d: dict[str, Any]) -> dict[str, Any]:
    """Version 4 traces had no continuations."""
    esamp = {"prime": False, **d["config"]["esamp"]}
    return {**d, "config": {"prefix_ids": [], **d["config"], "esamp": esamp}, "version": 5}


def _v5_to_v6(d: dict[str, Any]) -> dict[str, Any]:
    """Version 5 traces had no bound on the fusion's push and did not record it per token."""
    for s in d["samples"]:
        for tok in s["tokens"]:
            tok.setdefault("kl", None)
    esamp = {"max_kl": None, **d["config"]["esamp"]}
    return {**d, "config": {**d["config"], "esamp": esamp}, "version": 6}


def _v6_to_v7(d: dict[str, Any]) -> dict[str, Any]:
    """Version 6 traces pushed as the paper does: no leveling."""
    esamp = {"keep_entropy": False, **d["config"]["esamp"]}
    return {**d, "config": {**d["config"], "esamp": esamp}, "version": 7}


def _v7_to_v8(d: dict[str, Any]) -> dict[str, Any]:
    """Version 7 traces pushed every candidate."""
    esamp = {"between_words": False, **d["config"]["esamp"]}
    return {**d, "config": {**d["config"], "esamp": esamp}, "version": 8}


def _v8_to_v9(d: dict[str, Any]) -> dict[str, Any]:
    """Version 8 traces' distillers were float32, whatever the model's dtype."""
    esamp = {"distiller_dtype": "float32", **d["config"]["esamp"]}
    return {**d, "config": {**d["config"], "esamp": esamp}, "version": 9}


_UPGRADES = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6, 6: _v6_to_v7,
             7: _v7_to_v8, 8: _v8_to_v9}  # version v -> v + 1


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: -inf log-probabilities (impossible tokens) become -1e30."""
    if isinstance(x, float) and not math.isfinite(x):
        return -1e30 if x < 0 else (1e30 if x > 0 else None)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
