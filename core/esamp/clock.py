"""Where ESamp's time goes: wall time per part of its per-step work, summed over a run."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

# filter: temperature and filters, and gathering the candidates; predict: the distiller's forward
# pass and the novelty; fuse: the fused logits; learn: the distiller's update; signals: each
# token's recorded signals; bookkeeping: the backend's own per-step work around them.
PARTS = ("filter", "predict", "fuse", "learn", "signals", "bookkeeping")
DISTILLER_PARTS = ("predict", "fuse", "learn")  # what ESamp adds to plain sampling


class Stopwatch:
    """Seconds per part (``PARTS``). On CUDA, kernels run asynchronously: the time is the host's
    (launches), not the device's, unless the caller synchronises."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - t0

    @property
    def distiller_seconds(self) -> float:
        return sum(self.seconds[p] for p in DISTILLER_PARTS)

    def parts(self) -> dict[str, float]:
        return {p: self.seconds[p] for p in PARTS if p in self.seconds}
