"""The one place that installs hooks on a model: a context manager that always removes them.

Hooks are global state on a shared model (the app serves many sessions from one copy), so
they exist only inside ``capture_states`` and are removed in ``finally``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .models import LoadedModel


@dataclass
class States:
    """The last position's shallow and final states of the latest forward pass, float32."""

    s: torch.Tensor | None = None  # (R, H) output of the first decoder layer
    h: torch.Tensor | None = None  # (R, H) output of the final norm: what the LM head reads


def _last_position(output) -> torch.Tensor:
    hidden = output[0] if isinstance(output, tuple) else output  # (R, L, H)
    return hidden[:, -1, :].detach().float()


@contextmanager
def capture_states(lm: LoadedModel) -> Iterator[States]:
    """Record (s, h) of every forward pass while the block runs; hooks are removed on exit."""
    states = States()

    def on_first(_module, _inputs, output):
        states.s = _last_position(output)

    def on_norm(_module, _inputs, output):
        states.h = _last_position(output)

    handles = [lm.first_layer.register_forward_hook(on_first), lm.final_norm.register_forward_hook(on_norm)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()
