"""``python -m core serve``: vLLM's own OpenAI-compatible server with ESamp's plugin (installed with
this project) and the settings ESamp needs, on 127.0.0.1 by default.

A request asks for ESamp with ``vllm_xargs`` (request.py); ESamp's own routes (routes.py) give whole
run traces to the app and other clients; everything else is ``vllm serve``.
The limits of the app's served mode hold: one model, chosen by whoever starts the server (a
client cannot load another), no remote code, safetensors weights only.
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch

from ..base import ModelLoadError
from ..embedded import DEFAULT_MODEL, model_source
from ..hardware import default_dtype
from . import hooks, internals, plugin, routes, worker
from .model import CPU_BLOCK_SIZE, CPU_KV_CACHE_GIB, CPU_MAX_NUM_SEQS, prebuild

REFUSED = ("--trust-remote-code", "--load-format")  # the served limits: no remote code, safetensors only


def command(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, dtype: str | None = None,
            extra: Sequence[str] = ()) -> list[str]:
    """The ``vllm`` command line (after ``vllm``) that serves ``model`` (default: the embedded one); ``extra``: more of
    vLLM's own options. ModelLoadError when the plugin is not installed or an option is refused."""
    if not plugin.installed():
        raise ModelLoadError("ESamp's vLLM plugin is not installed in this environment: run ./run setup "
                             "(or pip install -e . in the environment vLLM runs in).")
    refused = [a for a in extra if a.split("=")[0] in REFUSED]
    if refused:
        raise ModelLoadError(f"{refused[0].split('=')[0]} is not offered: a served model runs no remote code "
                             "and loads safetensors weights only.")
    name = model or DEFAULT_MODEL
    argv = ["serve", model_source(name),
            "--served-model-name", name, "--host", host, "--port", str(port), "--load-format", "safetensors",
            # ESamp reads each request's output list as the step's tokens arrive (synchronous
            # scheduling) and needs whole prompts (model.py).
            "--no-async-scheduling", "--no-enable-chunked-prefill",
            # esamp_* calls into the workers (the routes', and POST /collective_rpc with VLLM_SERVER_DEV_MODE=1)
            "--worker-extension-cls", worker.QUALNAME,
            "--middleware", routes.MIDDLEWARE]  # whole run traces for the app (ESAMP_SERVER) and other clients
    if not hooks.cuda_graphs():  # ESamp's default hooks run Python in every forward pass (hooks.py)
        argv.append("--enforce-eager")
    if not torch.cuda.is_available():
        argv += ["--dtype", dtype or str(default_dtype(torch.device("cpu"))).removeprefix("torch."),
                 "--block-size", str(CPU_BLOCK_SIZE), "--max-num-seqs", str(CPU_MAX_NUM_SEQS),
                 "--kv-cache-memory-bytes", str(int(CPU_KV_CACHE_GIB * 2**30))]
    elif dtype:
        argv += ["--dtype", dtype]
    return argv + list(extra)


def serve(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, dtype: str | None = None,
          extra: Sequence[str] = ()) -> None:
    """Run vLLM's server in this process until it stops."""
    argv = command(model, host, port, dtype, extra)
    if "--dtype" in argv:  # a known dtype: the pretrained distiller now, before any request waits for it
        prebuild(argv[1], argv[argv.index("--dtype") + 1])
    internals.cli_version()
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *argv]
    main()
