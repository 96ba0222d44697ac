"""Processes the benchmarks and the tests start on 127.0.0.1 (the app, ``python -m core serve``): a
free port, and a wait for readiness that a busy machine does not fail.

A process that is alive and still writing its log is starting, however slowly: ``wait_ready`` waits
for its own readiness signal (a health route) as long as it lives and its log grows, and gives up
only when it exits, when its log has been silent for ``quiet_s``, or after ``ceiling_s`` in all.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

QUIET_S = 600  # a start that writes nothing for this long is stuck (loading a model logs every few seconds)
CEILING_S = 1800  # and none takes longer than this, however busy the machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, what: str,
               quiet_s: float = QUIET_S, ceiling_s: float = CEILING_S) -> None:
    """Return once ``ready()``; RuntimeError with the end of ``log`` when ``proc`` exits first, or its
    log stops growing for ``quiet_s``, or ``ceiling_s`` pass."""
    start = last = time.monotonic()
    size = -1
    while not ready():
        now = time.monotonic()
        grown = log.stat().st_size if log.exists() else 0
        if grown != size:
            size, last = grown, now
        if proc.poll() is not None or now - last > quiet_s or now - start > ceiling_s:
            why = (f"exited with {proc.returncode}" if proc.poll() is not None else
                   f"wrote nothing for {now - last:.0f} s" if now - last > quiet_s else
                   f"not ready after {now - start:.0f} s")
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start ({why}):\n{tail}")
        time.sleep(0.5)
