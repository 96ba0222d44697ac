"""Who may run what: the limits of a run and, when the app is served to other people, which models
load. All of it is the server's to set, from the environment:

- ``ESAMP_SERVED=1``: served mode. A visitor picks a model from a list instead of typing a name or
  path (which would load any file on the server's disk); the list is the embedded default, the
  names in ``ESAMP_MODELS`` (comma-separated names or paths the server trusts) and the
  subdirectories of ``ESAMP_MODELS_DIR``. Remote code is never run and only safetensors weights
  load (a pickled checkpoint can run code).
- ``ESAMP_MAX_N``, ``ESAMP_MAX_NEW_TOKENS``, ``ESAMP_MAX_PROMPT_CHARS``, ``ESAMP_MAX_UPLOAD_MB``,
  ``ESAMP_MAX_RUNS`` (runs kept in the history; the oldest go first): the limits, in either mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core import DEFAULT_MODEL

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Limits:
    max_n: int = 16  # samples per prompt; these keep the app responsive on a 2-core CPU
    max_new_tokens: int = 256
    max_rungs: int = 8  # runs in one Generate (β ladder and temperatures together): each is a generation
    max_prompt_chars: int = 4000
    max_upload_mb: float = 1.0  # a task file
    max_runs: int | None = None  # runs kept in the history; None: all


@dataclass(frozen=True)
class Policy:
    served: bool = False
    models: tuple[str, ...] = ()  # names or paths allowed besides the embedded default
    models_dir: Path | None = None
    limits: Limits = Limits()

    def allowed_models(self) -> list[str]:
        """The choices a served app offers ("" is the embedded default), in a stable order."""
        found = []
        if self.models_dir is not None and self.models_dir.is_dir():
            found = sorted(p.name for p in self.models_dir.iterdir() if (p / "config.json").is_file())
        return ["", *dict.fromkeys([*self.models, *found])]

    def check_model(self, name: str) -> str:
        """Where a model name loads from, or ValueError when this server does not offer it."""
        if not self.served or name in ("", DEFAULT_MODEL):
            return name
        if name in self.models:
            return name
        if self.models_dir is not None and name in self.allowed_models():
            return str(self.models_dir / name)
        return _refuse(name, self.allowed_models())


def _refuse(name: str, allowed: list[str]) -> str:
    offered = ", ".join(m or DEFAULT_MODEL for m in allowed)
    raise ValueError(f"Model {name!r} is not offered by this server. Choose one of: {offered}.")


def _number(env, name: str, default, kind=int):
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        raise ValueError(f"${name}={raw!r} is not a number.") from exc
    if not value > 0:
        raise ValueError(f"${name}={raw!r} must be above 0.")
    return value


def from_environment(env=None) -> Policy:
    """The policy the environment sets; ValueError names a bad variable."""
    env = os.environ if env is None else env
    d = Limits()
    limits = Limits(max_n=_number(env, "ESAMP_MAX_N", d.max_n),
                    max_new_tokens=_number(env, "ESAMP_MAX_NEW_TOKENS", d.max_new_tokens),
                    max_rungs=_number(env, "ESAMP_MAX_RUNGS", d.max_rungs),
                    max_prompt_chars=_number(env, "ESAMP_MAX_PROMPT_CHARS", d.max_prompt_chars),
                    max_upload_mb=_number(env, "ESAMP_MAX_UPLOAD_MB", d.max_upload_mb, float),
                    max_runs=_number(env, "ESAMP_MAX_RUNS", d.max_runs))
    models = tuple(m.strip() for m in env.get("ESAMP_MODELS", "").split(",") if m.strip())
    models_dir = Path(env["ESAMP_MODELS_DIR"]) if env.get("ESAMP_MODELS_DIR") else None
    return Policy(served=env.get("ESAMP_SERVED", "").lower() in _TRUE, models=models, models_dir=models_dir,
                  limits=limits)


def policy() -> Policy:
    """The policy now (read each time: cheap, and a test or a restart may change the environment)."""
    return from_environment()
