"""ESamp's vLLM worker extension (``worker_extension_cls``): the calls the caller makes into the
worker through ``collective_rpc``, wherever the engine runs (this process or vLLM's own).

- ``esamp_install()``: forward hooks on the model that fill the processor's ``Capture`` for the
  rows the sampler reads, and the LM head the processor's runs project through.
- ``esamp_take(key)``: a finished run's result (its tokens' signals and its distiller's
  statistics, in types vLLM's RPC carries), freeing its state.
- ``esamp_failed()``: the live runs whose steps failed.
- ``esamp_served()``: the served requests' runs (``Registry.served``).

Every method name starts with ``esamp_`` (vLLM refuses an extension whose names clash with the worker's).
"""

from __future__ import annotations

from ...esamp.head import LMHead
from . import internals
from .processor import find
from .registry import Registry

QUALNAME = f"{__name__}.EsampWorker"


class EsampWorker:
    """Mixed into vLLM's worker class by vLLM itself."""

    def esamp_runs(self) -> Registry:
        return find(internals.runner_processors(self.model_runner))

    def esamp_install(self) -> dict:
        """Install the hooks (once); returns what the caller needs to know of the model."""
        runs = self.esamp_runs()
        head, runner = runs.install(self.get_model()), type(self.model_runner)
        return {"hidden_size": int(head.weight.shape[1]), "device": str(head.weight.device),
                "graph_safe": runs.capture.graph_safe, "runner": f"{runner.__module__}.{runner.__qualname__}"}

    def esamp_head(self) -> LMHead:
        """The head itself: for an engine in this process only (a tensor this size is no RPC message)."""
        return self.esamp_runs().head

    def esamp_take(self, key: str) -> dict:
        return self.esamp_runs().take(key)

    def esamp_failed(self) -> dict[str, str]:
        return self.esamp_runs().failed()

    def esamp_served(self) -> dict:
        return self.esamp_runs().served()
