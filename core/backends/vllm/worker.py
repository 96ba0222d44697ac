"""ESamp's vLLM worker extension (``worker_extension_cls``): the calls the caller makes into the
worker through ``collective_rpc``, wherever the engine runs (this process or vLLM's own).

- ``esamp_install()``: forward hooks on the model that fill the processor's ``Capture`` for the
  rows the sampler reads, and the LM head the processor's runs project through.
- ``esamp_take(key)``: a finished run's result (its tokens' signals and its distiller's
  statistics, in types vLLM's RPC carries), freeing its state.
- ``esamp_failed()``: the live runs whose steps failed.
- ``esamp_served()``: the served requests' runs (``VllmProcessor.served``).

Every method name starts with ``esamp_`` (vLLM refuses an extension whose names clash with the worker's).
"""

from __future__ import annotations

from ...esamp.head import LMHead
from .hooks import install_hooks
from .processor import VllmProcessor, find

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
        return {"hidden_size": int(head.weight.shape[1]), "device": str(head.weight.device),
                "graph_safe": processor.capture.graph_safe}

    def esamp_head(self) -> LMHead:
        """The head itself: for an engine in this process only (a tensor this size is no RPC message)."""
        return self.esamp_processor().head

    def esamp_take(self, key: str) -> dict:
        return self.esamp_processor().take(key)

    def esamp_failed(self) -> dict[str, str]:
        return self.esamp_processor().failed()

    def esamp_served(self) -> dict:
        return self.esamp_processor().served()
