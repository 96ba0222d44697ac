"""Starting a vLLM engine for ESamp: the engine (here or in vLLM's engine process), its model's
hooks and the ESamp processor, and the driver every caller shares."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace

import torch

from ... import openmp
from ...config import EsampConfig
from ...esamp.head import LMHead
from .. import start
from ..base import ModelLoadError, eos_ids
from ..embedded import DEFAULT_MODEL, model_source
from ..hardware import default_dtype, resolve_dtype
from . import hooks, internals, plugin, worker
from .engine import Engine
from .processor import VllmProcessor

log = logging.getLogger(__name__)

PLACEMENTS = ("inline", "process")
DEFAULT_PLACEMENT = "inline"
PLACEMENT_ENV = "ESAMP_VLLM_PLACEMENT"
CPU_KV_CACHE_GIB = 2.0
# vLLM's prefix cache shares whole KV blocks only. With its CPU default of 128 tokens a block,
# a shorter prompt would be prefilled again for each of its n samples.
CPU_BLOCK_SIZE = 32
# vLLM's CPU default batch is 256 sequences: 24 prompts x 16 samples then take two engine steps per
# token, and ESamp's per-step work (mostly fixed: one fused Adam call) is paid twice (measured at 24x16: its own
# share 3.7% of a run in 256-row steps, 2.5% in one 384-row step).
CPU_MAX_NUM_SEQS = 512


@dataclass
class VllmModel:
    """A vLLM engine with ESamp's hooks and processor (a ``LanguageModel``), shared by every caller:
    runs from any thread generate together (``engine``)."""

    name: str
    llm: object
    engine: Engine
    tokenizer: object  # transformers tokenizer of the same model: chat template, token pieces
    head: LMHead | None  # the worker's head, where the engine runs in this process; None in vLLM's own
    hidden_size: int
    context_length: int
    eos_ids: list[int]
    dtype: torch.dtype
    placement: str  # "inline": the engine in this process; "process": in vLLM's engine process
    device: torch.device
    backend: str = "vllm"
    lock: None = None  # no lock: runs share the engine

    def close(self) -> None:
        """Shut the engine down (and vLLM's engine process); the model cannot generate afterwards."""
        self.engine.close()


def load(name: str = DEFAULT_MODEL, *, dtype: torch.dtype | str | None = None, device=None,
         max_model_len: int | None = None, kv_cache_gib: float | None = None, trust_remote_code: bool = False,
         safetensors_only: bool = False, placement: str | None = None, **llm_kwargs) -> VllmModel:
    """Start a vLLM engine for ESamp, in eager mode: a CUDA graph replays kernels without running
    Python, so the hooks that copy s and h (and pick the sampled rows) would run only at capture;
    with ``ESAMP_VLLM_CUDA_GRAPHS=1`` the hooks are graph-safe and vLLM captures graphs on CUDA
    (hooks.py; unverified on a GPU).

    ``name`` is a transformers model name or directory. dtype defaults to the faster one on CPU
    (``hardware.default_dtype``: bfloat16 where the CPU has native bfloat16, else float32) and to
    vLLM's choice on GPUs. The KV cache takes ``kv_cache_gib``
    (default on CPU: 2 GiB; vLLM would otherwise reserve 92% of the machine's memory); on GPUs
    vLLM sizes it. ``placement``: "inline" runs vLLM's engine in this process, "process" in
    vLLM's own engine process (its default; what tensor and data parallelism need); default
    ``DEFAULT_PLACEMENT`` or ``$ESAMP_VLLM_PLACEMENT``. Other keyword arguments go to
    ``vllm.LLM``. vLLM picks the device itself.
    """
    from transformers import AutoTokenizer

    if device is not None:
        raise ModelLoadError("The vLLM backend picks its device itself: leave the device unset.")
    placement = placement or os.environ.get(PLACEMENT_ENV) or DEFAULT_PLACEMENT
    if placement not in PLACEMENTS:
        raise ModelLoadError(f"`placement` (or ${PLACEMENT_ENV}) must be one of {PLACEMENTS}, not {placement!r}.")
    if dtype is not None:
        try:
            dtype = str(resolve_dtype(dtype, torch.device("cpu"))).removeprefix("torch.")
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
    dtype = _engine_options(llm_kwargs, dtype, kv_cache_gib, safetensors_only)
    if hooks.graph_safe() and not plugin.installed():
        raise ModelLoadError(f"{hooks.GRAPHS_ENV}=1 needs ESamp's vLLM plugin, which installs the hooks as the "
                             "model loads: pip install -e . in this environment (./run setup does).")
    vllm = internals.import_vllm()
    note = internals.version_note(vllm.__version__)
    if note:
        log.warning(note)
    source = model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot load model {name!r} for vLLM: {str(exc).splitlines()[0]}") from exc
    try:
        with internals.scan_safe(), internals.engine_process(placement == "process"):
            llm = vllm.LLM(model=source, tokenizer=source, enforce_eager=not hooks.cuda_graphs(), dtype=dtype or "auto",
                           max_model_len=max_model_len, logits_processors=[] if plugin.installed() else [VllmProcessor],
                           worker_extension_cls=worker.QUALNAME, trust_remote_code=trust_remote_code,
                           **llm_kwargs)
    except Exception as exc:  # vLLM raises many types (pydantic validation, OSError, RuntimeError)
        raise ModelLoadError(f"vLLM cannot load model {name!r}: {str(exc).splitlines()[0]}") from exc
    shape, head = _hook(llm, name, placement)
    model_config = llm.llm_engine.model_config
    failed = (lambda: llm.collective_rpc("esamp_failed")[0]) if placement == "inline" else None
    openmp.release_team()  # the driver thread computes from now on (engine.Engine.submit)
    return VllmModel(name=name, llm=llm, engine=Engine(llm, failed), tokenizer=tokenizer, head=head,
                     hidden_size=shape["hidden_size"], context_length=model_config.max_model_len,
                     eos_ids=model_eos(source, tokenizer), dtype=model_config.dtype,
                     placement=placement, device=torch.device(shape["device"]))


def prebuild(source: str, dtype: torch.dtype | str) -> None:
    """The model's pretrained distiller for the default design, built now (once; cached) where it is
    not yet, so that no served request's engine step waits for it (``python -m core serve``;
    core.backends.start). A failure only logs: runs that start fresh do not need it, and one that asks
    for it says why it cannot have it. (In process, the first run that asks builds it: ``loop.starts``.)"""
    try:
        start.initial(source, str(dtype).removeprefix("torch."), replace(EsampConfig(), start="pretrained"))
    except Exception as exc:  # noqa: BLE001 - the engine runs without it
        log.warning("no pretrained distiller for %s: %s", source, exc)


def model_eos(source: str, tokenizer) -> list[int]:
    """The model's end-of-sequence ids: its generation config's and its tokenizer's."""
    from transformers import GenerationConfig

    try:
        gen_eos = GenerationConfig.from_pretrained(source).eos_token_id
    except OSError:
        gen_eos = None
    return eos_ids(gen_eos, tokenizer.eos_token_id)


def _hook(llm, name: str, placement: str) -> tuple[dict, LMHead | None]:
    """Install ESamp's hooks in the worker; what the caller learns of the model, and the head itself
    where the engine runs in this process."""
    try:
        shape = llm.collective_rpc("esamp_install")[0]
        return shape, llm.collective_rpc("esamp_head")[0] if placement == "inline" else None
    except Exception as exc:  # an architecture the hooks do not know; from vLLM's process, re-raised by vLLM
        llm.llm_engine.engine_core.shutdown()
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"ESamp cannot hook {name!r} in vLLM: {str(exc).splitlines()[0]}") from exc


def _engine_options(llm_kwargs: dict, dtype: str | None, kv_cache_gib: float | None,
                    safetensors_only: bool) -> str | None:
    """Fill in ESamp's engine settings in ``llm_kwargs`` (the caller's win); returns the dtype."""
    if safetensors_only:
        llm_kwargs["load_format"] = "safetensors"
    # Whole prompts only: with chunked prefill a partly prefilled request gets a logits row whose
    # token vLLM throws away (the processor would train on it), and on CPU throwing away a seeded
    # request's token fails ("CPU Generator does not use offset", vLLM 0.32).
    llm_kwargs.setdefault("enable_chunked_prefill", False)
    # Asynchronous scheduling (on by default on GPUs in recent vLLM) prepares step t+1 before step t's
    # tokens are in the requests' output lists: the processor reads those lists to know each row's
    # position and to record the chosen tokens, so it needs the synchronous order.
    llm_kwargs.setdefault("async_scheduling", False)
    if not torch.cuda.is_available():
        dtype = dtype or str(default_dtype(torch.device("cpu"))).removeprefix("torch.")
        kv_cache_gib = kv_cache_gib or CPU_KV_CACHE_GIB
        llm_kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
        llm_kwargs.setdefault("max_num_seqs", CPU_MAX_NUM_SEQS)
    if kv_cache_gib is not None:
        llm_kwargs.setdefault("kv_cache_memory_bytes", int(kv_cache_gib * 2**30))
    return dtype
