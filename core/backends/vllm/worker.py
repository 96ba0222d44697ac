"""ESamp's vLLM worker extension (``worker_extension_cls``): the calls the caller makes into the
worker through ``collective_rpc``, wherever the engine runs (this process or vLLM's own).

- ``esamp_install()``: forward hooks on the model that fill the processor's ``Capture`` for the
  rows the sampler reads, and the LM head the processor's runs project through.
- ``esamp_take(key)``: a finished run's result (its tokens' signals and its distiller's
  statistics, in types vLLM's RPC carries), freeing its state.
- ``esamp_failed()``: the live runs whose steps failed.

Every method name starts with ``esamp_`` (vLLM refuses an extension whose names clash with the worker's).
"""

from __future__ import annotations

import torch

from ...esamp.head import FinalNorm, LMHead
from ..base import ModelLoadError
from ..hooks import permanent_hooks
from . import internals
from .processor import VllmProcessor, find
from .state import Capture

QUALNAME = f"{__name__}.EsampWorker"


class EsampWorker:
    """Mixed into vLLM's worker class by vLLM itself."""

    def esamp_processor(self) -> VllmProcessor:
        return find(self.model_runner.input_batch.logitsprocs.all)

    def esamp_install(self) -> dict:
        """Install the hooks (once); returns what the caller needs to know of the model."""
        processor = self.esamp_processor()
        if processor.head is None:
            processor.head = install_hooks(self.get_model(), processor.capture)
        head = processor.head
        return {"hidden_size": int(head.weight.shape[1]), "device": str(head.weight.device)}

    def esamp_head(self) -> LMHead:
        """The head itself: for an engine in this process only (a tensor this size is no RPC message)."""
        return self.esamp_processor().head

    def esamp_take(self, key: str) -> dict:
        return self.esamp_processor().take(key)

    def esamp_failed(self) -> dict[str, str]:
        return self.esamp_processor().failed()


def install_hooks(model: torch.nn.Module, capture: Capture) -> LMHead:
    """Permanent hooks that fill ``capture`` for the rows the sampler reads; returns the LM head."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "logits_processor") or not hasattr(model, "lm_head"):
        raise ModelLoadError(f"ESamp's vLLM backend cannot find the first layer and LM head of "
                             f"{type(model).__name__} (it expects model.model.layers and model.lm_head).")
    lp = model.logits_processor
    if getattr(lp, "scale", 1.0) != 1.0:
        raise ModelLoadError(f"{type(model).__name__} scales its logits by {lp.scale}; ESamp's fusion does not yet.")

    def on_first_layer(_module, _inputs, output):
        rows = internals.last_token_rows()
        capture.s = internals.residual_stream(output)[rows].float()  # copies: vLLM reuses its buffers in place

    def on_head_input(_module, args):
        capture.h = args[1].float()  # (B, H): compute_logits(hidden_states[logits_indices])

    permanent_hooks(forward=[(layers[0], on_first_layer)], forward_pre=[(lp, on_head_input)])
    vocab = model.config.vocab_size if hasattr(model, "config") else lp.org_vocab_size
    weight = model.lm_head.weight[:vocab]  # the embedding may be padded beyond the vocabulary
    bias = getattr(model.lm_head, "bias", None)
    norm = FinalNorm.of(inner.norm) if hasattr(inner, "norm") else None
    return LMHead(weight, None if bias is None else bias[:vocab], getattr(lp, "soft_cap", None), norm)
