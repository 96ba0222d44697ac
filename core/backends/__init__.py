"""Backends: where a model runs. One interface (``base.Backend``), one dispatch (``get_backend``).

- ``transformers`` (``hf/``): this project's decode loop over any transformers causal LM.
- ``vllm`` (``vllm/``): the same ESamp inside vLLM's scheduler (optional: needs vLLM).
- ``server`` (``remote.py``): a client of a running vLLM server with ESamp's routes (``python -m
  core serve``): the runs generate there (``load_model(backend="server", url=...)``).
"""

from __future__ import annotations

import threading
from typing import Sequence

import torch

from ..config import BACKENDS, RunConfig
from ..trace import RunTrace
from .base import Backend, LanguageModel, ProgressFn
from .embedded import DEFAULT_MODEL
from .hardware import keep_freed_memory


def installed_backends() -> list[str]:
    """The backends this installation can run, in ``BACKENDS`` order (vLLM is optional)."""
    import importlib.util

    return [b for b in BACKENDS if b != "vllm" or importlib.util.find_spec("vllm") is not None]


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one of ``core.config.BACKENDS``); imports it on first use."""
    if name == "transformers":
        from .hf import BACKEND
    elif name == "vllm":
        from .vllm import BACKEND
    elif name == "server":
        from .remote import BACKEND
    else:
        raise ValueError(f"`backend` must be one of {BACKENDS + ('server',)}, but is {name!r}.")
    return BACKEND


def load_model(name: str | None = None, *, backend: str = "transformers", device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, trust_remote_code: bool = False,
               safetensors_only: bool = False, **engine_options) -> LanguageModel:
    """Load a causal LM by transformers name or local path; ``None`` is the embedded default.

    ``backend="vllm"`` starts a vLLM engine (it picks the device itself); ``engine_options``
    (vLLM only) go to it: ``kv_cache_gib``, ``max_num_seqs``, ``block_size``... dtype: the
    backend's choice by default (``load_model(...).dtype`` says which). ``safetensors_only`` loads
    no pickled weights (a served app sets it: a pickle can run code). Raises ModelLoadError
    with a message that says what to try when the model cannot be found or is not supported.
    """
    keep_freed_memory()  # each step's tensors reuse the last step's memory (see there)
    return get_backend(backend).load(name or DEFAULT_MODEL, device=device, dtype=dtype,
                                     trust_remote_code=trust_remote_code, safetensors_only=safetensors_only,
                                     **engine_options)


def generate(lm: LanguageModel, prompts: Sequence[str], config: RunConfig | None = None, *,
             progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> RunTrace:
    """Generate ``config.sampling.n`` samples for each prompt with plain, esamp or fire, on the
    model's own backend. Returns the full trace. ``progress`` is called after every step;
    setting ``cancel`` stops after the current step and returns what was generated
    (``trace.stopped``)."""
    return get_backend(lm.backend).generate(lm, prompts, config or RunConfig(), progress=progress, cancel=cancel)


def generate_runs(lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig], *,
                  progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> list[RunTrace]:
    """One run per config on the same prompts (a β or temperature ladder, compared methods). On vLLM
    they are submitted together and generate in the same engine steps, next to every other caller's
    runs; on transformers the runs of one shape (same samples, tokens, chat, prefix: a ladder) decode
    in one batch of up to ``hf.loop.MAX_ROWS`` rows, batch after batch. ``progress`` gets each run's
    ``Progress`` (its ``run`` field says which). On ``cancel`` the runs stop where they are and come
    back cut short (``trace.stopped``); on transformers no later batch starts."""
    return get_backend(lm.backend).generate_runs(lm, prompts, list(configs), progress=progress, cancel=cancel)


def check_runs(lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig]) -> None:
    """ValueError saying why these runs cannot start on ``lm`` (a prompt too long for its context with
    its new tokens, a prefix id outside its vocabulary, what its backend does not run); None if they can."""
    get_backend(lm.backend).check_runs(lm, prompts, list(configs))


def answer_logprobs(lm: LanguageModel, prefixes: Sequence[list[int]],
                    answers: Sequence[list[int]]) -> list[list[float]]:
    """log p of every answer token given its prefix and the answer's earlier tokens, under the model at T=1."""
    return get_backend(lm.backend).answer_logprobs(lm, prefixes, answers)
