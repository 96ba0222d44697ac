"""The transformers backend: any transformers causal LM, on CPU or CUDA, decoded by this
project's own batched KV-cache loop (loop.py); ``interop.py`` puts ESamp into ``model.generate()``."""

from __future__ import annotations

from ..base import check_encoding
from . import loop, model


class HfBackend:
    """``core.backends.base.Backend`` on transformers."""

    name = "transformers"
    load = staticmethod(model.load)
    generate = staticmethod(loop.generate)
    generate_runs = staticmethod(loop.generate_runs)
    answer_logprobs = staticmethod(loop.answer_logprobs)
    check_runs = staticmethod(check_encoding)


BACKEND = HfBackend()
