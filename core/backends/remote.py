"""The backend "server": a client of ESamp's routes on a running vLLM server (``python -m core serve``;
core/backends/vllm/routes.py), so that the front end runs on one machine and the model on another.

``load_model(backend="server", url="http://host:8000")`` connects; ``generate_runs`` sends the runs
and gets back the traces the server's vLLM backend made of them (the same tokens and signals as
the in-process vLLM backend on that machine), with progress while they generate and a stop that
keeps what was generated. Only the standard library talks HTTP here. The traces say where they
ran: backend "server", the server's device and dtype.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..config import RunConfig
from ..trace import RunTrace
from .base import ModelLoadError, Progress, ProgressFn
from .embedded import DEFAULT_MODEL

NAME = "server"
PATH = "/v1/esamp/"  # routes.PREFIX (core/backends/vllm/ is not imported here: it needs vLLM)
CONNECT_S = 10.0
READ_S = 600.0  # the server sends a line at least every half second while runs generate


class ServerError(RuntimeError):
    """The server refused a call or failed it; the message is the server's."""


@dataclass
class RemoteModel:
    """A model served by an ESamp server (a ``LanguageModel`` whose engine is elsewhere)."""

    url: str
    name: str
    context_length: int
    eos_ids: list[int]
    dtype: torch.dtype
    device: torch.device
    api_key: str | None = None
    backend: str = NAME
    tokenizer: None = None  # the server's: prompts are encoded and traces decoded there
    head: None = None
    lock: None = None  # the server batches every caller's runs


class ServerBackend:
    name = NAME

    def load(self, name: str, *, url: str | None = None, api_key: str | None = None, dtype=None, device=None,
             trust_remote_code: bool = False, safetensors_only: bool = False, **_options) -> RemoteModel:
        """Connect to the server at ``url``; ``name``: the model it must serve (DEFAULT_MODEL: whichever it serves)."""
        if not url:
            raise ModelLoadError("The server backend needs the server's address (url=, or $ESAMP_SERVER in the app).")
        if dtype is not None or device is not None:
            raise ModelLoadError("A server runs its model on its own device and dtype: leave them unset.")
        url = url.rstrip("/")
        try:
            info = _call(url, "GET", "model", None, api_key, CONNECT_S + 20)  # the first call loads the tokenizer
        except (ServerError, ValueError) as exc:
            raise ModelLoadError(f"The ESamp server at {url} refused: {exc}") from exc
        except OSError as exc:
            raise ModelLoadError(f"Cannot reach an ESamp server at {url}: {exc}. Start one there with "
                                 "`python -m core serve` (it serves the embedded model on 127.0.0.1:8000).") from exc
        if name not in (DEFAULT_MODEL, info["name"]):
            raise ModelLoadError(f"The server at {url} serves {info['name']!r}, not {name!r}.")
        return RemoteModel(url, info["name"], info["context_length"], list(info["eos_ids"]),
                           getattr(torch, info["dtype"]), torch.device(info["device"]), api_key)

    def generate(self, lm: RemoteModel, prompts: Sequence[str], config: RunConfig, *,
                 progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> RunTrace:
        return self.generate_runs(lm, prompts, [config], progress=progress, cancel=cancel)[0]

    def generate_runs(self, lm: RemoteModel, prompts: Sequence[str], configs: Sequence[RunConfig], *,
                      progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> list[RunTrace]:
        """The runs on the server; on ``cancel`` the server stops them and they come back cut short."""
        job = uuid.uuid4().hex
        body = {"prompts": list(prompts), "configs": [c.to_dict() for c in configs], "job": job}
        stopping = False
        with _open(lm.url, "POST", "runs", body, lm.api_key, READ_S) as response:
            for raw in response:
                line = json.loads(raw)
                if "error" in line:
                    raise ServerError(line["error"])
                if "traces" in line:
                    return [_here(RunTrace.from_dict(t)) for t in line["traces"]]
                if progress is not None:
                    for p in line["progress"]:
                        progress(Progress(**{**p, "answers": tuple(map(tuple, p.get("answers", ())))}))
                if cancel is not None and cancel.is_set() and not stopping:
                    stopping = True
                    try:
                        _call(lm.url, "POST", "stop", {"job": job}, lm.api_key, CONNECT_S)
                    except ServerError:  # it has just finished: its traces are on their way
                        pass
        raise ServerError(f"The server at {lm.url} ended the runs' stream without their traces.")

    def check_runs(self, lm: RemoteModel, prompts: Sequence[str], configs: Sequence[RunConfig]) -> None:
        body = {"prompts": list(prompts), "configs": [c.to_dict() for c in configs]}
        _call(lm.url, "POST", "check", body, lm.api_key, CONNECT_S + 20)

    def answer_logprobs(self, lm: RemoteModel, prefixes: Sequence[list[int]],
                        answers: Sequence[list[int]]) -> list[list[float]]:
        body = {"prefixes": [list(p) for p in prefixes], "answers": [list(a) for a in answers]}
        return _call(lm.url, "POST", "logprobs", body, lm.api_key, READ_S)["logprobs"]


def _here(trace: RunTrace) -> RunTrace:
    """A trace from the server as this side's: its backend is the server (device and dtype are the server's)."""
    return replace(trace, backend=NAME)


def _open(url: str, method: str, route: str, body: dict | None, api_key: str | None, timeout: float):
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url + PATH + route, data=data, method=method, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", "")
        except ValueError:
            message = ""
        if isinstance(message, dict):  # vLLM's own error shape
            message = message.get("message", "")
        if exc.code == 400:  # what was asked cannot run (as a ValueError says in process)
            raise ValueError(message) from None
        raise ServerError(message or f"HTTP {exc.code} {exc.reason}") from None


def _call(url: str, method: str, route: str, body: dict | None, api_key: str | None, timeout: float) -> dict:
    with _open(url, method, route, body, api_key, timeout) as response:
        return json.loads(response.read())


BACKEND = ServerBackend()
