"""ESamp's vLLM v1 logits processor: it keeps track of which batch row is which ESamp sample,
and hands each step's logits of an ESamp run to that run (``loop._Run.step``), which filters,
predicts, fuses, trains and records. Requests outside an ESamp run pass through untouched.

A request opts in through ``SamplingParams.extra_args[EXTRA_KEY] = {"run": id, "row": r}``
(row r = prompt * n + sample, and so its prompt's distiller).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch

from . import internals

internals.prepare_environment()  # before anything imports vllm

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # vLLM not installed: the module still imports, load() explains
    LogitsProcessor = object  # type: ignore[misc,assignment]

EXTRA_KEY = "esamp_explorer"


@dataclass
class Capture:
    """The states of the latest forward pass at the sampled rows, written by the model's hooks."""

    s: torch.Tensor | None = None  # (B, H) float32, first decoder layer's residual stream
    h: torch.Tensor | None = None  # (B, H) float32, LM head input


@dataclass
class Row:
    run: int
    row: int  # prompt * n + sample
    out: list[int]  # vLLM's live list of this request's output token ids


# run.step(logits, batch, capture) -> logits: what the processor hands an ESamp run's rows to.
Step = Callable[[torch.Tensor, list[tuple[int, Row]], Capture], torch.Tensor]


class VllmProcessor(LogitsProcessor):
    """vLLM v1 logits processor; does nothing for requests that are not part of an ESamp run."""

    _instances: "weakref.WeakSet[VllmProcessor]" = weakref.WeakSet()

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, Row] = {}  # persistent batch index -> row
        self.run_id: int | None = None
        self.step: Step | None = None  # the running run's step function
        self.capture = Capture()
        VllmProcessor._instances.add(self)

    @classmethod
    def created_since(cls, before: set) -> "VllmProcessor":
        """The one processor vLLM created since ``before`` (a snapshot of ``_instances``)."""
        new = [p for p in cls._instances if p not in before]
        if len(new) != 1:
            raise internals.VllmUnavailableError(
                f"vLLM created {len(new)} ESamp logits processors for one engine; expected exactly one.")
        return new[0]

    def attach(self, run_id: int | None, step: Step | None) -> None:
        """Route the rows of run ``run_id`` to ``step`` (None: no run)."""
        self.run_id, self.step = run_id, step

    def is_argmax_invariant(self) -> bool:
        return False  # fusion can change the most likely token

    def update_state(self, batch_update: "BatchUpdate | None") -> None:
        process_dict_updates(self.rows, batch_update, _row_of)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.step is None or not self.rows:
            return logits
        batch = [(i, r) for i, r in sorted(self.rows.items()) if r.run == self.run_id and i < logits.shape[0]]
        return self.step(logits, batch, self.capture) if batch else logits


def _row_of(params, _prompt_ids, out: list[int]) -> Row | None:
    mine = (params.extra_args or {}).get(EXTRA_KEY)
    return None if mine is None else Row(mine["run"], mine["row"], out)
