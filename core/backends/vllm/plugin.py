"""ESamp's vLLM plugin: what ``vllm serve`` (and any vLLM engine in an environment with this project
installed) loads through vLLM's entry points (pyproject.toml):

- ``vllm.logits_processors``: ``processor.EsampProcessor``, in every engine, whichever model runner
  it uses (V1 or Model Runner V2); it does nothing for a request that does not ask for ESamp.
- ``vllm.general_plugins``: ``register``, in every vLLM process, so that a served request's run can
  find its worker's model and install its hooks there (internals, fact 4), and, under data
  parallelism, so that a request's n samples go to one engine (fact 7), and so that the requests
  of a group (a served request's samples, a prompt's) go in together (fact 13); with graph-safe capture
  (``ESAMP_VLLM_CUDA_GRAPHS=1``, hooks.py) it also has the hooks installed as each model loads.
"""

from __future__ import annotations

from . import hooks, internals
from .request import run_of, together_of

NAME = "esamp_explorer"  # the entry points' name (VLLM_PLUGINS may list it)
PROCESSOR = "core.backends.vllm.processor:EsampProcessor"


def register() -> None:
    """vLLM's general plugin hook: runs in every vLLM process, maybe more than once. It sets no
    environment: which model runner an engine uses stays vLLM's (and its user's) choice."""
    internals.remember_model_runners()
    internals.route_runs_together(run_of)
    internals.hold_groups(together_of)
    if hooks.graph_safe():
        from .processor import install_at_load  # vLLM is importable in a vLLM process

        internals.after_model_load(install_at_load)


def installed() -> bool:
    """Whether this environment registers the processor with vLLM (then vLLM loads it in every engine,
    and an engine must not be given it a second time)."""
    from importlib.metadata import entry_points

    return any(e.value == PROCESSOR for e in entry_points(group="vllm.logits_processors"))
