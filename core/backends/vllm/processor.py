"""ESamp's vLLM logits processors: thin adapters of one ``registry.Registry`` to each model runner's
documented processor interface, and the one class vLLM's entry point names.

- ``VllmProcessor``: the V1 model runner's interface (``vllm.v1.sample.logits_processor``): batch
  updates say which request joins or leaves which row; ``apply(logits)`` sees every row.
- ``mrv2.Mrv2Processor``: Model Runner V2's (``vllm.v1.worker.gpu.sample.logits_processor``).
- ``EsampProcessor``: what ``vllm.logits_processors`` registers (pyproject.toml). Both runners read
  that one entry point group: V1 builds a processor with ``(vllm_config, device, is_pin_memory)``,
  MRV2 with ``(vllm_config, req_states)`` and only from a subclass of its own interface, so this
  class is one and builds the adapter of whichever runner asks.

A request opts in through ``SamplingParams.extra_args`` (registry.py); one that does not is left
untouched by either adapter.
"""

from __future__ import annotations

from typing import Iterable

import torch

from . import internals
from .mrv2 import Mrv2Processor, V2LogitsProcessor
from .registry import Registry
from .request import validate_params

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # vLLM not installed: the module still imports, load() explains
    LogitsProcessor = object  # type: ignore[misc,assignment]

class VllmProcessor(LogitsProcessor):
    """The V1 model runner's adapter; does nothing for requests that are not part of an ESamp run."""

    def __init__(self, vllm_config, device, is_pin_memory):
        self.runs = Registry(vllm_config)
        self.rows = {}  # persistent batch index -> Row

    validate_params = staticmethod(validate_params)  # vLLM's door for a request: request.py

    def is_argmax_invariant(self) -> bool:
        return False  # fusion can change the most likely token

    def update_state(self, batch_update: "BatchUpdate | None") -> None:
        # vLLM keeps a request's output list when it preempts and resumes it: the list is its identity.
        process_dict_updates(self.rows, batch_update, lambda params, _ids, out: self.runs.join(params, out, id(out)))
        if batch_update is not None and batch_update.removed:
            self.runs.left({r.run for r in self.rows.values()})

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.runs.step(logits, sorted(self.rows.items())) if self.rows else logits


class EsampProcessor(V2LogitsProcessor):
    """The class vLLM's entry point names: each model runner builds its own adapter from it."""

    def __new__(cls, vllm_config, *args):
        if len(args) == 2:  # V1: (vllm_config, device, is_pin_memory)
            return VllmProcessor(vllm_config, *args)
        return Mrv2Processor(vllm_config, *args)  # MRV2: (vllm_config, req_states)

    validate_params = staticmethod(validate_params)  # vLLM's door for a request: request.py

    def apply(self, logits, ctx=None):  # never called: instances are the adapters above
        raise NotImplementedError


def install_at_load(runner) -> None:
    """Graph-safe capture's hooks (hooks.py), installed as the runner loads its model, before vLLM
    compiles and captures it (``internals.after_model_load``; the plugin registers this)."""
    find(internals.runner_processors(runner)).install(runner.get_model(), runner)


def find(processors: Iterable) -> Registry:
    """The registry of the ESamp processor among a model runner's logits processors."""
    mine = [p.runs for p in processors if isinstance(getattr(p, "runs", None), Registry)]
    if len(mine) != 1:
        raise internals.VllmUnavailableError(
            f"vLLM runs {len(mine)} ESamp logits processors in this worker; expected exactly one.")
    return mine[0]
