"""Every forward hook this project installs, in one place. Hooks are global state on a model.

Two kinds, for two kinds of ownership:

- ``capture_states``: temporary hooks on a shared transformers model (the app serves every
  session from one copy), installed for one generation and removed in ``finally``.
- ``permanent_hooks``: hooks installed once on a model that one engine owns for its whole life
  (vLLM's model lives inside its engine's worker, maybe in another process, and is reached only
  through ``collective_rpc`` into ESamp's worker extension, once, when the engine starts). They
  stay until the engine is shut down; they only copy states, and the ESamp processor ignores what it does not need.

Observer hooks copy (``.float()`` of a slice) and return None: they never change the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.hooks import RemovableHandle


@dataclass
class States:
    """The last position's shallow and final states of the latest forward pass, float32."""

    s: torch.Tensor | None = None  # (R, H) output of the first decoder layer
    h: torch.Tensor | None = None  # (R, H) output of the final norm: what the LM head reads


def _last_position(output) -> torch.Tensor:
    hidden = output[0] if isinstance(output, tuple) else output  # (R, L, H)
    return hidden[:, -1, :].detach().float()


@contextmanager
def capture_states(first_layer: torch.nn.Module, final_norm: torch.nn.Module) -> Iterator[States]:
    """Record (s, h) at the last position of every forward pass while the block runs."""
    states = States()

    def on_first(_module, _inputs, output):
        states.s = _last_position(output)

    def on_norm(_module, _inputs, output):
        states.h = _last_position(output)

    handles = [first_layer.register_forward_hook(on_first), final_norm.register_forward_hook(on_norm)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_output(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the whole output (R, L, H) of ``module``, float32, at every forward pass while the block runs."""
    outputs: list[torch.Tensor] = []

    def on_output(_module, _inputs, output):
        outputs.append((output[0] if isinstance(output, tuple) else output).detach().float())

    handle = module.register_forward_hook(on_output)
    try:
        yield outputs
    finally:
        handle.remove()


Hook = Callable[..., None]


def permanent_hooks(forward: list[tuple[torch.nn.Module, Hook]] = (),
                    forward_pre: list[tuple[torch.nn.Module, Hook]] = ()) -> list[RemovableHandle]:
    """Install observer hooks for an engine's lifetime: (module, hook) pairs, called after (``forward``)
    or before (``forward_pre``) the module runs. Returns the handles; removing them is the owner's job."""
    return ([m.register_forward_hook(fn) for m, fn in forward]
            + [m.register_forward_pre_hook(fn) for m, fn in forward_pre])
