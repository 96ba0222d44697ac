"""What the machine can do fast, decided at run time: machines of one kind can have different
CPUs (some with AMX and AVX512-BF16, some without), so a dtype that is fast on one can be slow
on the next."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

import torch

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags of native bfloat16 matrix arithmetic


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's name, as reports print it (Linux /proc/cpuinfo; the platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = name_in_cpuinfo(f.read(65536))
        if name:
            return name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def name_in_cpuinfo(text: str) -> str | None:
    """The first CPU's model name in /proc/cpuinfo's text. A virtual machine may show a bare family name
    ("AMD EPYC"), the same for CPUs of different generations whose speeds differ twofold (here a Zen 5,
    family 26, ran the embedded model in bfloat16 twice as fast as an earlier EPYC of that name): such a
    name gets the family and model numbers, so that a figure says which CPU it was measured on."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block ends
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if name and not any(c.isdigit() for c in name) and "cpu family" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def cpu_has_fast_bf16() -> bool:
    """Whether bfloat16 matrix products run natively here (AMX or AVX512-BF16); without them
    PyTorch and vLLM emulate bfloat16 on CPU and it is slower than float32."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS) or torch.backends.cpu.get_cpu_capability() == "AMX"


DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ENV = "ESAMP_DTYPE"  # forces the default dtype on every device (tests run the suite once each way)


def default_dtype(device: torch.device) -> torch.dtype:
    """The faster model dtype for a device: bfloat16 on CUDA and on CPUs with native bfloat16,
    float32 on other CPUs; ``ESAMP_DTYPE=float32|bfloat16|float16`` overrides the choice."""
    forced = os.environ.get(DTYPE_ENV, "").strip()
    if forced:
        if forced.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"{DTYPE_ENV}={forced!r} is not a dtype: use one of {', '.join(DTYPES)}, or unset it.")
        return getattr(torch, forced.removeprefix("torch."))
    if device.type == "cuda" or cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


MALLOC_ENV = "ESAMP_KEEP_FREED"  # "0" leaves glibc's malloc as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest mallopt takes on 64-bit Linux
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before it goes back to the OS


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation of the same size, for the
    whole process; True where it now does. By default glibc gives blocks of a few MB back to the
    OS when they are freed (it serves them by mmap, and trims the heap's free top), so the next
    step's tensor of that size (or one a little larger: a growing KV cache) comes as fresh pages,
    and touching them can cost more than the arithmetic: the distillers' forward and backward at
    24 prompts x 16 rows took 11 ms that way against 6 ms with the memory kept (2-core Intel
    Xeon); a transformers decode step at 4 x 16 faulted 2000-3000 pages, with it 20-170. PyTorch's
    own advice on CPUs is an allocator that keeps it (jemalloc, tcmalloc); this is the same in
    glibc's own terms: blocks under 32 MB from the heap, up to 256 MB of free heap kept. Larger
    blocks (vLLM's logits at hundreds of rows) still come as fresh pages; TCMalloc preloaded keeps
    them too, faster at a class's 512 rows and slower at 64 (``python -m bench.allocator``).
    ``ESAMP_KEEP_FREED=0`` turns it off; a no-op off glibc (and for an allocator preloaded in its place)."""
    if os.environ.get(MALLOC_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has mallopt but not these parameters)
    except (OSError, AttributeError):
        return False
    mmap = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mmap) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load a model on: CUDA when there is one, else the CPU; a device asked for
    that this machine does not have is a ValueError that says what it has."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"Unknown device {str(device)!r}: use cpu, cuda or cuda:N.") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {str(device)!r} asked for, but this machine has no CUDA GPU (or this "
                             "torch build has no CUDA): use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"Device {str(device)!r} asked for, but this machine has "
                             f"{count} CUDA GPU(s): cuda:0 to cuda:{count - 1}.")
    elif device.type != "cpu":
        raise ValueError(f"Device {str(device)!r} is not supported: use cpu, cuda or cuda:N.")
    return device


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """A model dtype from a name or a torch dtype; None is ``default_dtype(device)``."""
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
        return getattr(torch, dtype.removeprefix("torch."))
    return dtype


def describe() -> dict:
    """The machine, for benchmark reports: where a figure was measured."""
    return {"cpu": cpu_name(), "cpus": os.cpu_count(), "cpu_bf16": [f for f in BF16_FLAGS if f in cpu_flags()],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "platform": platform.platform()}
