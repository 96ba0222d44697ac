"""Loading a transformers causal LM and finding the parts ESamp reads: first decoder layer,
final norm, LM head."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import torch

from ...esamp.head import FinalNorm, LMHead
from ...esamp.words import word_starts
from ..base import ModelLoadError, UnsupportedArchitectureError, eos_ids
from ..embedded import DEFAULT_MODEL, model_source
from ..hardware import resolve_device, resolve_dtype

# model_type -> (path of the decoder layer list, path of the final norm), from the CausalLM root.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("model.layers", "model.norm"),
    "mistral": ("model.layers", "model.norm"),
    "qwen2": ("model.layers", "model.norm"),
    "qwen3": ("model.layers", "model.norm"),
    "gemma": ("model.layers", "model.norm"),
    "gemma2": ("model.layers", "model.norm"),
    "gemma3_text": ("model.layers", "model.norm"),
    "phi3": ("model.layers", "model.norm"),
    "gpt2": ("transformer.h", "transformer.ln_f"),
}


@dataclass
class HfModel:
    """A transformers causal LM, its tokenizer and the modules ESamp hooks (a ``LanguageModel``)."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    first_layer: torch.nn.Module  # its output is the shallow state s
    final_norm: torch.nn.Module  # its output is the final state h
    head: LMHead
    context_length: int
    backend: str = "transformers"
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.head.weight.shape[1]

    @property
    def eos_ids(self) -> list[int]:
        return eos_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)


def load(name: str = DEFAULT_MODEL, *, device: str | torch.device | None = None,
         dtype: torch.dtype | str | None = None, trust_remote_code: bool = False, safetensors_only: bool = False,
         **options) -> HfModel:
    """Load a causal LM by transformers name or local path. dtype defaults to the faster one here
    (``hardware.default_dtype``: bfloat16 on CUDA and on CPUs with native bfloat16, else float32).
    Raises ModelLoadError with a message that says what to try."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if options:
        raise ValueError(f"Engine options {sorted(options)} are for the vLLM backend only.")
    try:
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    source = model_source(name)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        offline = " (no network here: give a local directory)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ModelLoadError(
            f"Cannot load model {name!r}: it is neither a local directory with a config.json nor a "
            f"model name the Hugging Face Hub answered for{offline}. Leave the model empty for the "
            f"embedded default {DEFAULT_MODEL!r}. ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    model_type = getattr(config, "model_type", "?")
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Model {name!r} has model_type {model_type!r}, which ESamp Explorer cannot hook yet; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **({"use_safetensors": True} if safetensors_only else {}))
    except (OSError, ValueError) as exc:
        only = " (only safetensors weights load here: a pickled checkpoint can run code)" if safetensors_only else ""
        raise ModelLoadError(f"Cannot load model {name!r}: {exc}{only}") from exc
    return wrap_model(name, model.to(device).eval(), tokenizer)


def wrap_model(name: str, model: torch.nn.Module, tokenizer) -> HfModel:
    """Find the hooked parts of an already loaded model (also for tiny test models)."""
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"Model {name!r} has model_type {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}.")
    layers_path, norm_path = ARCHITECTURES[model_type]
    layers = model.get_submodule(layers_path)
    final_norm = model.get_submodule(norm_path)
    out = model.get_output_embeddings()
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = LMHead(out.weight, getattr(out, "bias", None), getattr(cfg, "final_logit_softcapping", None),
                  FinalNorm.of(final_norm), word_starts(tokenizer, out.weight.shape[0]).to(out.weight.device))
    ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return HfModel(name=name, model=model, tokenizer=tokenizer, first_layer=layers[0],
                   final_norm=final_norm, head=head, context_length=int(ctx))
