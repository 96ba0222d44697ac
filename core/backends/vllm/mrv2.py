"""ESamp's adapter to Model Runner V2's logits-processor interface
(``vllm.v1.worker.gpu.sample.logits_processor``, vLLM 0.31 and later), the V2 twin of
``processor.VllmProcessor``: the same ``registry.Registry`` does the work.

What MRV2 gives a processor, and how it maps onto the registry:
- ``add_request(slot, params)``: a request takes a persistent slot (slots are recycled: everything
  kept for a slot is replaced here). Its Row reads its output tokens from the runner's per-slot
  buffers (``SlotTokens``); a request that is not part of an ESamp run is declined (False) and its
  rows are never touched.
- ``apply(logits, ctx)``: the step's rows, each mapped to its slot by ``ctx.expanded_idx_mapping``;
  it runs before vLLM's temperature and filters (set neutral for ESamp's requests, which ESamp
  filters itself, as under V1).
- MRV2 says nothing when a request leaves: a slot's previous request has left when another takes
  the slot. Its tokens are then copied out of the runner's buffer (the run may still need them) and
  its run is freed if it was a served one with no rows left (at most one run per slot stays held).

Under speculative decoding (several rows per request) ESamp's runs fail with an error saying so and
their rows are left as the model made them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .registry import Registry
from .request import validate_params
from .state import Row

try:
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2LogitsProcessor
except ImportError:  # a vLLM without Model Runner V2's interface (before 0.31), or none
    V2LogitsProcessor = object  # type: ignore[misc,assignment]


class SlotTokens(Sequence):
    """One request's output tokens in MRV2's per-slot buffers, read as V1's output list is
    (``len`` and ``[x]``); copied out (``freeze``) before its slot goes to another request."""

    def __init__(self, req_states, slot: int):
        self.states, self.slot = req_states, slot
        self.prompt_len = int(req_states.prompt_len.np[slot])  # set for this request before processors see it
        self.frozen: list[int] | None = None

    def __len__(self) -> int:
        if self.frozen is not None:
            return len(self.frozen)
        return int(self.states.total_len.gpu[self.slot]) - self.prompt_len

    def __getitem__(self, x):
        if self.frozen is not None:
            return self.frozen[x]
        if isinstance(x, slice):
            return [self[i] for i in range(*x.indices(len(self)))]
        if not 0 <= x < len(self):
            raise IndexError(x)
        return int(self.states.all_token_ids.gpu[self.slot, self.prompt_len + x])

    def freeze(self) -> None:
        """Copy the tokens out: the runner has not yet written the slot's next request over them (a
        processor's ``add_request`` runs before the runner applies its staged writes)."""
        if self.frozen is None:
            n = len(self)
            self.frozen = self.states.all_token_ids.gpu[self.slot, self.prompt_len:self.prompt_len + n].tolist()


class Mrv2Processor(V2LogitsProcessor):
    """Model Runner V2's adapter; leaves the rows of requests outside ESamp runs untouched."""

    def __init__(self, vllm_config, req_states):
        self.runs = Registry(vllm_config)
        self.req_states = req_states
        self.slots: dict[int, Row] = {}  # persistent slot -> row

    validate_params = staticmethod(validate_params)  # vLLM's door for a request: request.py

    def add_request(self, req_idx: int, sampling_params) -> bool:
        before = self.slots.pop(req_idx, None)
        if before is not None:  # the slot's previous request has left
            before.out.freeze()
            self.runs.left({r.run for r in self.slots.values()})
        out = SlotTokens(self.req_states, req_idx)
        row = self.runs.join(sampling_params, out, ident=out)
        if row is None:
            return False
        self.slots[req_idx] = row
        return True

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        if not self.slots:
            return logits
        slots = ctx.expanded_idx_mapping.tolist()
        batch = [(i, self.slots[s]) for i, s in enumerate(slots) if s in self.slots]
        if len(slots) != len(ctx.idx_mapping_np):  # speculative decoding: rows are not requests
            for key in {r.run for _, r in batch}:
                self.runs.fail(key, "ESamp does not support speculative decoding (several rows per request).")
            return logits
        return self.runs.step(logits, batch) if batch else logits
