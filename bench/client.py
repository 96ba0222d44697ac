"""A benchmark's runs through a running ESamp server (``python -m core serve``, or ``vllm serve``
with this project installed) instead of a model loaded here: the same RunConfig, sent as an OpenAI
client sends it, so the paper-scale runs (7B-8B models, 16-64 samples) can be made on a GPU box
with the same code (``--server URL``).

Only answers' texts come back (no trace: a served client gets no per-token novelty, docs/serving.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core import RunConfig
from core.backends.vllm import served  # the keys a server takes (no vLLM import)

from .procs import free_port, wait_ready

def offered(config: RunConfig) -> bool:
    """Whether the server runs this config: plain sampling, min-p and ESamp, not FIRE or the noise ablation."""
    return config.method == "plain" or (config.method == "esamp" and not config.esamp.noise)


def request_of(config: RunConfig) -> dict:
    """The keyword arguments of ``chat.completions.create`` (besides model and messages) for a run's
    prompt: the request ``served.params_of`` describes, in the OpenAI client's shape (vLLM's own
    fields and ESamp's ``vllm_xargs`` in ``extra_body``)."""
    if not offered(config):
        raise ValueError(f"A server does not run method {config.method!r}"
                         + (" with noise" if config.esamp.noise else "") + ".")
    params = served.params_of(config)
    body = {k: params.pop(k) for k in ("top_k", "min_p", "ignore_eos")}
    if "extra_args" in params:
        body["vllm_xargs"] = params.pop("extra_args")
    return {**params, "extra_body": body}


def answers(client, model: str, prompts: list[str], config: RunConfig) -> list[list[str]]:
    """Each prompt's n answers, every prompt's request at once (chat, or a plain completion when the
    config does not use the chat template)."""
    kw = request_of(config)

    def ask(prompt: str) -> list[str]:
        if config.chat:
            r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kw)
            return [c.message.content or "" for c in r.choices]
        return [c.text for c in client.completions.create(model=model, prompt=prompt, **kw).choices]

    with ThreadPoolExecutor(min(len(prompts), 16)) as pool:
        return list(pool.map(ask, prompts))


def connect(url: str, timeout: float = 600.0):
    """An OpenAI client of the server at ``url`` (``timeout`` seconds a request), and the name of the
    model it serves."""
    import openai

    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key="not needed", max_retries=0, timeout=timeout)
    return client, client.models.list().data[0].id


@contextmanager
def running_server(*args: str, log: Path | None = None, env: dict | None = None) -> Iterator[str]:
    """``python -m core serve`` on a free port of 127.0.0.1 with ``args`` (its options, then ``--`` and
    vllm serve's), its output to ``log`` (a temporary file without one); yields its URL once it answers
    /health, stops it after. It may start as slowly as a busy machine makes it (``procs.wait_ready``);
    RuntimeError with the log's end when it does not start."""
    port = free_port()
    if log is None:
        log = Path(tempfile.mkdtemp()) / "server.log"
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "core", "serve", "--port", str(port), *args],
                            env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, lambda: _healthy(url), log, "python -m core serve")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False
