"""The hooks ESamp installs on the model inside vLLM's worker: they fill the processor's
``Capture`` with the states of the rows the sampler reads, every forward pass.

Two ways to do it. By default (eager mode, which vLLM is then started in) the first layer's
hook picks the sampled rows from the forward context and copies them: Python inside the pass,
which a CUDA graph would not replay. Graph-safe capture (``ESAMP_VLLM_CUDA_GRAPHS=1``) keeps
Python out of the pass: the first layer's hook only copies the whole residual stream into a
persistent buffer (one tensor op, recorded into a graph at capture and replayed with it), and the
LM head's hook, which runs eagerly after the graph, picks the sampled rows there by the runner's
own persistent index buffer (internals, fact 10). It is installed as the model loads, before vLLM
compiles and captures it. On CPU the engine stays eager either way (the same tokens, tested); on
CUDA the flag lets vLLM capture graphs, which has not run anywhere yet (no GPU with vLLM here).
"""

from __future__ import annotations

import os

import torch

from ...esamp.head import FinalNorm, LMHead
from ..base import ModelLoadError
from ..hooks import permanent_hooks
from . import internals
from .state import Capture


GRAPHS_ENV = "ESAMP_VLLM_CUDA_GRAPHS"  # "1": graph-safe capture, and CUDA graphs where there is CUDA


def graph_safe() -> bool:
    """Whether this process captures graph-safely (``ESAMP_VLLM_CUDA_GRAPHS=1``; vLLM's processes inherit it)."""
    return os.environ.get(GRAPHS_ENV, "").strip() == "1"


def cuda_graphs() -> bool:
    """Whether vLLM may capture CUDA graphs: graph-safe capture on a machine with CUDA."""
    return graph_safe() and torch.cuda.is_available()


def install_hooks(model: torch.nn.Module, capture: Capture, runner=None) -> LMHead:
    """Permanent hooks that fill ``capture`` for the rows the sampler reads; returns the LM head.
    With the model ``runner`` the capture is graph-safe (see the module's note)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "logits_processor") or not hasattr(model, "lm_head"):
        raise ModelLoadError(f"ESamp's vLLM backend cannot find the first layer and LM head of "
                             f"{type(model).__name__} (it expects model.model.layers and model.lm_head).")
    lp = model.logits_processor
    if getattr(lp, "scale", 1.0) != 1.0:
        raise ModelLoadError(f"{type(model).__name__} scales its logits by {lp.scale}; ESamp's fusion does not yet.")

    vocab = model.config.vocab_size if hasattr(model, "config") else lp.org_vocab_size
    weight, bias = whole_head(model.lm_head)
    if weight.shape[0] < vocab:
        raise ModelLoadError(f"ESamp needs the whole LM head in each worker, and this one holds "
                             f"{weight.shape[0]} of {vocab} rows.")
    if runner is None:
        def on_first_layer(_module, _inputs, output):
            rows = internals.last_token_rows()
            capture.s = internals.residual_stream(output)[rows].float()  # copies: vLLM reuses its buffers in place

        def on_head_input(_module, args):
            capture.h = args[1].float()  # (B, H): compute_logits(hidden_states[logits_indices])
    else:
        # Every token's residual stream, in the model's dtype (as the eager hook reads it before .float()).
        stream = torch.empty((runner.max_num_tokens, weight.shape[1]), dtype=weight.dtype, device=weight.device)

        def on_first_layer(_module, _inputs, output):  # inside the pass (and a CUDA graph): tensor ops only
            x = internals.residual_stream(output)
            stream[:x.shape[0]].copy_(x)

        def on_head_input(_module, args):  # after the pass, eagerly
            h = args[1]
            capture.s = stream[internals.sampled_rows(runner, h.shape[0])].float()
            capture.h = h.float()
        capture.graph_safe = True
    permanent_hooks(forward=[(layers[0], on_first_layer)], forward_pre=[(lp, on_head_input)])
    norm = FinalNorm.of(inner.norm) if hasattr(inner, "norm") else None
    # The embedding may be padded beyond the vocabulary.
    return LMHead(weight[:vocab], None if bias is None else bias[:vocab], getattr(lp, "soft_cap", None), norm)


def whole_head(lm_head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight (V, H) and bias. Under tensor parallelism each rank holds a slice of
    the vocabulary's rows while its sampler (and ESamp's processor) sees the whole vocabulary's
    logits: the slices are gathered once, a whole copy of the head on every rank (internals, fact 8).
    Every rank must call this at once (a collective)."""
    weight, bias = lm_head.weight.detach(), getattr(lm_head, "bias", None)
    if getattr(lm_head, "tp_size", 1) > 1:
        from vllm.distributed import tensor_model_parallel_all_gather

        weight = tensor_model_parallel_all_gather(weight.contiguous(), dim=0)
        bias = None if bias is None else tensor_model_parallel_all_gather(bias.detach().contiguous(), dim=0)
    return weight, bias
