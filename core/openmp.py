"""The OpenMP runtime torch computes with on a CPU: a thread that ran a parallel torch op keeps a team
of helper threads, and every thread's team is kept until the thread lets it go.

GNU OpenMP (what torch's Linux wheels ship) spins only briefly once it manages more threads than the
machine has CPUs, so one idle thread's kept team slows every small kernel of the thread that computes:
its helpers are asleep and each kernel wakes them. Two kinds of thread here let their team go:

- a thread about to hand work to another and wait, as a caller of the in-process vLLM engine does (the
  engine's driver thread computes; ``core.backends.vllm.engine.Engine.submit``, and the loading thread
  once the engine is up). Kept, vLLM's own sampling in process ran at 535 tokens/s and let go at 667,
  ESamp at 473 and 604 (``python -m bench.openmp``, 2-core AMD EPYC);
- the worker thread that runs a distiller update off the critical path on a CPU (``overlap``;
  ``core.esamp.steerer.Background``), after each update. Kept, its team slowed everything the in-process
  vLLM engine ran after the first such update, overlap or not (plain sampling at 4x16: 722 and 623
  tokens/s before, 531 and 530 after, on a 2-core AMD EPYC with AVX512-BF16), and on transformers the
  overlap runs themselves (0.85 of plain against 0.97; docs/results.md, "An update in a worker thread
  kept its OpenMP team").

``ESAMP_RELEASE_OMP=0`` keeps every team (to measure what letting them go is worth).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys

import torch

ENV = "ESAMP_RELEASE_OMP"  # "0": every thread keeps its OpenMP team
_PAUSE_SOFT = 1  # omp_pause_soft (OpenMP 5.0, omp.h)


@functools.lru_cache(maxsize=1)
def _pause():
    """``omp_pause_resource_all`` of GNU OpenMP as torch's Linux wheels ship it (torch/lib, torch.libs),
    or None: elsewhere the runtime may be LLVM's, whose pause is for every thread of the process."""
    root = os.path.dirname(torch.__file__)
    found = sorted(glob.glob(os.path.join(root, "lib", "libgomp*.so*")) + glob.glob(root + ".libs/libgomp*.so*"))
    if not sys.platform.startswith("linux") or not found:
        return None
    try:
        pause = ctypes.CDLL(found[0]).omp_pause_resource_all  # the library torch loaded: the same handle
    except (OSError, AttributeError):
        return None
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return pause


def release_team() -> bool:
    """Let the calling thread's OpenMP helper threads go (they come back at its next parallel torch op);
    True where they went. No-op where torch's runtime has no such call, or with ``ESAMP_RELEASE_OMP=0``."""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    pause = _pause()
    return pause is not None and pause(_PAUSE_SOFT) == 0
