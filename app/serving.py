"""Who may run what: the limits of a run and, when the app is served to other people, which models
load. All of it is the server's to set, from the environment:

- ``ESAMP_SERVED=1``: served mode. A visitor picks a model from a list instead of typing a name or
  path (which would load any file on the server's disk); the list is the embedded default, the
  names in ``ESAMP_MODELS`` (comma-separated names or paths the server trusts) and the
  subdirectories of ``ESAMP_MODELS_DIR``. Remote code is never run and only safetensors weights
  load (a pickled checkpoint can run code).
- ``ESAMP_MAX_N``, ``ESAMP_MAX_NEW_TOKENS``, ``ESAMP_MAX_PROMPT_CHARS``, ``ESAMP_MAX_UPLOAD_MB``,
  ``ESAMP_MAX_RUNS`` (runs kept in the history; the oldest go first): the limits, in either mode.
- ``ESAMP_SERVER=http://host:port``: the app is a client of an ESamp server (``python -m core serve``
  there): every run generates on the server's model, none loads here (the model and backend
  pickers give way to the server's name); ``ESAMP_SERVER_API_KEY``: its ``--api-key``, if it has one.
- ``ESAMP_BACKEND``: the backend a new session starts on (default: ``DEFAULT_BACKEND`` where it
  is installed); ``ESAMP_PRELOAD=0``: do not load the default model in the background when the
  first page opens (it then loads at the first Generate).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from core import DEFAULT_MODEL
from core.backends import installed_backends
from core.config import BACKENDS

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
# The backend a session starts on, where it is installed: vLLM finishes the app's first Generate and
# every later one sooner, and generates every session's runs at once (docs/results.md, "Starting the app").
DEFAULT_BACKEND = "vllm"
SERVER = "server"  # core/backends/remote.py: runs generate on an ESamp server ($ESAMP_SERVER)


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
    backend: str = field(default_factory=lambda: _backend({}))  # the backend a new session starts on
    preload: bool = True  # load the default model when the first page opens
    server: str | None = None  # an ESamp server's URL: every run generates there (backend "server")
    server_key: str | None = field(default=None, repr=False)  # its API key

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
    server = _server(env)
    return Policy(served=env.get("ESAMP_SERVED", "").lower() in _TRUE, models=models, models_dir=models_dir,
                  limits=limits, backend=SERVER if server else _backend(env),
                  preload=_switch(env, "ESAMP_PRELOAD", True), server=server,
                  server_key=env.get("ESAMP_SERVER_API_KEY") or None)


def _server(env) -> str | None:
    raw = env.get("ESAMP_SERVER", "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")) or len(raw.split("//", 1)[1].strip("/")) == 0:
        raise ValueError(f"$ESAMP_SERVER={raw!r} must be a server's address, such as http://127.0.0.1:8000.")
    return raw.rstrip("/")


def default_backend() -> str:
    """The backend a new session starts on (a bad $ESAMP_BACKEND: the first installed; the page says
    what is wrong with it)."""
    try:
        return SERVER if _server(os.environ) else _backend(os.environ)
    except ValueError:
        return installed_backends()[0]


def backends() -> list[str]:
    """The backends a session may choose: the server's only when the app is its client."""
    try:
        return [SERVER] if _server(os.environ) else installed_backends()
    except ValueError:
        return installed_backends()


def _backend(env) -> str:
    installed = installed_backends()
    name = env.get("ESAMP_BACKEND", "").strip()
    if not name:
        return DEFAULT_BACKEND if DEFAULT_BACKEND in installed else installed[0]
    if name not in BACKENDS:
        raise ValueError(f"$ESAMP_BACKEND={name!r} is not a backend; choose one of {', '.join(BACKENDS)}.")
    if name not in installed:
        raise ValueError(f"$ESAMP_BACKEND={name!r} is not installed here (installed: {', '.join(installed)}).")
    return name


def _switch(env, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE | _FALSE:
        raise ValueError(f"${name}={env[name]!r} must be 1 or 0.")
    return raw in _TRUE


def policy() -> Policy:
    """The policy now (read each time: cheap, and a test or a restart may change the environment)."""
    return from_environment()
