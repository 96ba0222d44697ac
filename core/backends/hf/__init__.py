"""The transformers backend: any transformers causal LM, on CPU or CUDA, decoded by this
project's own batched KV-cache loop (loop.py); ``interop.py`` puts ESamp into ``model.generate()``."""

from __future__ import annotations

from .. import start
from ..base import check_encoding
from . import loop, model


def generate(lm, prompts, config, *, progress=None, cancel=None):
    """loop.generate, its distillers starting where ``config.esamp.start`` says."""
    return loop.generate(lm, prompts, config, progress=progress, cancel=cancel, initial=start.initial_for(lm, config))


def generate_runs(lm, prompts, configs, *, progress=None, cancel=None):
    return loop.generate_runs(lm, prompts, configs, progress=progress, cancel=cancel,
                              initial=lambda config: start.initial_for(lm, config))


class HfBackend:
    """``core.backends.base.Backend`` on transformers."""

    name = "transformers"
    load = staticmethod(model.load)
    generate = staticmethod(generate)
    generate_runs = staticmethod(generate_runs)
    answer_logprobs = staticmethod(loop.answer_logprobs)
    check_runs = staticmethod(check_encoding)


BACKEND = HfBackend()
