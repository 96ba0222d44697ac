"""A running ESamp server for a benchmark or a test: ``running_server`` starts ``python -m core serve``
on 127.0.0.1 and stops it after; ``connect`` gives vLLM's own OpenAI client of it (bench.served
times ESamp's ``vllm_xargs`` through it). Runs with traces go through the backend "server"
(core/backends/remote.py), this project's one client of the server: ``load_model(backend="server",
url=...)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .procs import free_port, wait_ready


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
