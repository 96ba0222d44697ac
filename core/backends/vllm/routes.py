"""ESamp's own routes on vLLM's server: whole run traces (every token's novelty, log-probs and
candidates), for the app on another machine and any client that wants more than text. Their
client is ``core.backends.remote`` (the backend "server").

vLLM's server adds them as a middleware, its documented extension point for routes of one's own
(``--middleware core.backends.vllm.routes.esamp_routes``, with the worker extension
``--worker-extension-cls core.backends.vllm.worker.EsampWorker``; ``python -m core serve`` adds
both). They live under /v1 and take the server's ``--api-key`` as vLLM's own routes do.

- ``GET /v1/esamp/model``: the served model, as the client needs to know it.
- ``POST /v1/esamp/runs`` ``{"prompts": [...], "configs": [RunConfig dicts], "job": id}``: the runs,
  generated as the in-process vLLM backend generates them (loop.py: every sample one request,
  recorded in the worker, the same tokens and signals), streamed as JSON lines: ``{"progress":
  [...]}`` (each run's ``Progress``) at least every ``BEAT_S``, then ``{"traces": [...]}`` or
  ``{"error": ...}``. A client that goes away aborts its runs.
- ``POST /v1/esamp/check`` ``{"prompts": [...], "configs": [...]}``: whether the runs can start (a
  400 that says why not: a prompt too long for the context, say), before the client asks for them.
- ``POST /v1/esamp/stop`` ``{"job": id}``: the job's runs stop where they are and its stream ends
  with them, cut short (``trace.stopped``), as a cancel does in process.
- ``POST /v1/esamp/logprobs`` ``{"prefixes": [[ids]], "answers": [[ids]]}``: ``answer_logprobs``.

A bad body is an HTTP 400 that says what is wrong. Under data parallelism each run goes to one
engine (its own distiller), the runs of a call round robin over the engines.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from ...config import RunConfig
from . import internals, loop
from .model import model_eos

log = logging.getLogger(__name__)

PREFIX = "/v1/esamp/"
BEAT_S = 0.5  # a progress line at least this often: the client sees the run is alive
MIDDLEWARE = f"{__name__}.esamp_routes"
_jobs: dict[str, asyncio.Event] = {}  # a job's stop
_served: dict[int, "Served"] = {}  # id(engine client) -> its model
_rank = itertools.count()
_cleanups: set[asyncio.Task] = set()  # abandoned jobs being freed (a reference keeps each task alive)


@dataclass
class Served:
    """The served model as encode_prompts and build_trace need it (a ``LanguageModel`` with no engine here)."""

    name: str
    tokenizer: Any
    context_length: int
    eos_ids: list[int]
    dtype: torch.dtype
    device: torch.device
    engines: int  # data-parallel engines
    backend: str = "vllm"
    head: None = None
    lock: None = None

    def info(self) -> dict:
        return {"name": self.name, "context_length": self.context_length, "eos_ids": self.eos_ids,
                "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device), "engines": self.engines}


class BadRequest(ValueError):
    """A body this route cannot take (HTTP 400)."""


async def esamp_routes(request, call_next):
    """vLLM's ``--middleware``: the routes under ``PREFIX``; every other request goes on to vLLM."""
    from starlette.responses import JSONResponse

    path = request.url.path
    if not path.startswith(PREFIX):
        return await call_next(request)
    if not _allowed(request):
        return JSONResponse({"error": "Unauthorized: this server wants its API key (Authorization: Bearer KEY)."},
                            status_code=401)
    handler = _ROUTES.get((request.method, path[len(PREFIX):]))
    if handler is None:
        return JSONResponse({"error": f"No ESamp route {request.method} {path}; the routes are "
                                      + ", ".join(f"{m} {PREFIX}{p}" for m, p in _ROUTES)}, status_code=404)
    try:
        return await handler(request, request.app.state.engine_client)
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


def _allowed(request) -> bool:
    """The server's ``--api-key`` (or ``$VLLM_API_KEY``) holds here too: vLLM adds a ``--middleware`` outside
    its own key check, so these routes check the key themselves, as vLLM's check does."""
    import os

    args = getattr(request.app.state, "args", None)
    keys = [k for k in (getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY", "")]) if k]
    if not keys:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(given.encode(), k.encode()) for k in keys)


async def served_model(engine) -> Served:
    """The model this server serves, its hooks installed in every worker (once per process)."""
    if id(engine) not in _served:
        from transformers import AutoTokenizer

        mc = engine.model_config
        try:
            shape = (await internals.rpc_every_engine(engine, "esamp_install"))[0]
        except Exception as exc:  # noqa: BLE001 - said to the client
            raise BadRequest("This server cannot run ESamp's routes: its workers have no ESamp extension "
                             f"(start it with --worker-extension-cls core.backends.vllm.worker.EsampWorker, or "
                             f"python -m core serve): {exc}") from exc
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, mc.tokenizer,
                                            trust_remote_code=mc.trust_remote_code)
        name = mc.served_model_name if isinstance(mc.served_model_name, str) else mc.served_model_name[0]
        _served[id(engine)] = Served(name, tokenizer, mc.max_model_len, model_eos(mc.model, tokenizer), mc.dtype,
                                     torch.device(shape["device"]),
                                     engine.vllm_config.parallel_config.data_parallel_size)
    return _served[id(engine)]


async def _model(request, engine):
    from starlette.responses import JSONResponse

    return JSONResponse((await served_model(engine)).info())


async def _body(request, *keys: str) -> dict:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f"The body is not JSON: {exc}") from None
    except RecursionError:  # json's parser gives up on deep nesting; nothing here nests that deep
        raise BadRequest("The body nests too deeply to be a request of these routes.") from None
    missing = [k for k in keys if not isinstance(body, dict) or k not in body]
    if missing:
        raise BadRequest(f"The body needs {', '.join(keys)} (missing: {', '.join(missing)}).")
    return body


def _configs(body: dict) -> tuple[list[str], list[RunConfig]]:
    prompts, configs = body["prompts"], body["configs"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("`prompts` must be a list of strings.")
    if not isinstance(configs, list) or not configs:
        raise BadRequest("`configs` must be a list of one or more run configurations.")
    try:
        return prompts, [RunConfig.from_dict(c) for c in configs]
    except KeyError as exc:
        raise BadRequest(f"A run configuration lacks {exc} (RunConfig.to_dict() gives them all).") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise BadRequest(f"A run configuration is not valid: {exc}") from None
    except RecursionError:  # a value nested so deep that even its repr fails
        raise BadRequest("A run configuration nests too deeply to be valid.") from None


async def _encoded(request, engine, *keys: str) -> tuple[dict, Served, list[str], list[RunConfig], list]:
    """The body, the model, the runs and their prompts' ids; BadRequest where they cannot run."""
    body = await _body(request, "prompts", "configs", *keys)
    prompts, configs = _configs(body)
    lm = await served_model(engine)
    try:
        return body, lm, prompts, configs, loop.encode_runs(lm, prompts, configs)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def _check(request, engine):
    from starlette.responses import JSONResponse

    await _encoded(request, engine)
    return JSONResponse({"ok": True})


async def _runs(request, engine):
    from starlette.responses import StreamingResponse

    body, lm, prompts, configs, ids_of = await _encoded(request, engine, "job")
    job = str(body["job"])
    if job in _jobs:
        raise BadRequest(f"Job {job!r} is already running.")
    _jobs[job] = asyncio.Event()
    return StreamingResponse(_stream(engine, lm, prompts, configs, ids_of, job), media_type="application/x-ndjson")


async def _stream(engine, lm: Served, prompts, configs, ids_of, job: str):
    """The JSON lines of one job: progress while its runs generate, then their traces."""
    # (with data parallelism a ladder's rungs go to engines in turn, each its own run, and its prompts'
    # samples go into their engine together; with one engine, all the job's requests, as in process)
    runs, groups = loop.requests_of(lm, ids_of, configs, ladders=lm.engines == 1, one_group=lm.engines == 1)
    counts: dict[str, list[int]] = {}  # request id -> its token ids so far
    live = loop.live_pieces(lm.tokenizer, runs, lm.eos_ids)
    t0 = time.perf_counter()  # (the clock of the worker's first_step_at)
    rank = {k: next(_rank) % lm.engines if lm.engines > 1 else None for k in loop.keys(runs)}
    run_of = {rid: r.key for r in runs for rid in r.request_ids}
    work = asyncio.create_task(_follow(engine, [r for g in groups for r in g], counts, rank, run_of))
    stop = asyncio.create_task(_jobs[job].wait())
    aborted = False
    try:
        while not work.done():
            await asyncio.wait({work, stop}, timeout=BEAT_S, return_when=asyncio.FIRST_COMPLETED)
            if stop.done() and not aborted:
                aborted = True
                await engine.abort([rid for r in runs for rid in r.request_ids])
            yield _line({"progress": [asdict(p) for p in loop.progress_of(runs, counts, None, t0, live)]})
        work.result()
        results = loop.results_of(runs, {k: await _take(engine, k) for k in loop.keys(runs)})
        seconds = time.perf_counter() - t0

        def answer() -> bytes:  # off the server's event loop: every other request's outputs go through it
            traces = loop.traces_of(lm, prompts, runs, ids_of, results, t0=t0, seconds=seconds, stopped=stop.done())
            return _line({"traces": [t.to_dict() for t in traces]})

        yield await asyncio.to_thread(answer)
    except Exception as exc:  # noqa: BLE001 - the client is told; the server goes on
        log.exception("ESamp job %s failed", job)
        yield _line({"error": f"{type(exc).__name__}: {exc}"})
    finally:  # also when the client went away: its requests end and its runs are freed
        stop.cancel()
        _jobs.pop(job, None)
        if not work.done():
            work.cancel()
            # In a task of its own: the server cancels this one's every await once the client has gone.
            cleanup = asyncio.get_running_loop().create_task(_forget(engine, runs))
            _cleanups.add(cleanup)
            cleanup.add_done_callback(_cleanups.discard)


async def _forget(engine, runs: Sequence[loop.Run]) -> None:
    """Abort a job's requests and free its runs' state (a client that went away)."""
    try:
        await engine.abort([rid for r in runs for rid in r.request_ids])
        for k in loop.keys(runs):
            await _take(engine, k)
    except Exception:  # noqa: BLE001 - nobody to tell but the log
        log.exception("freeing an abandoned ESamp job failed")


async def _follow(engine, requests, counts, rank, run_of) -> None:
    """Every request of the job at once (vLLM's engine lets each group in once all of it has come)."""
    async def one(req) -> None:
        async for out in engine.generate({"prompt_token_ids": req.prompt}, req.params, req.id,
                                         data_parallel_rank=rank[run_of[req.id]]):
            counts.setdefault(req.id, []).extend(out.outputs[0].token_ids)

    await asyncio.gather(*(one(r) for r in requests))


async def _take(engine, key: str) -> dict:
    """A run's result from the engine that ran it (the others answer that they have no such run)."""
    results = await internals.rpc_every_engine(engine, "esamp_take", key)
    return next((r for r in results if not r["error"]), results[0])


async def _stop(request, engine):
    from starlette.responses import JSONResponse

    job = str((await _body(request, "job"))["job"])
    if job not in _jobs:
        return JSONResponse({"error": f"No running job {job!r}."}, status_code=404)
    _jobs[job].set()
    return JSONResponse({"stopping": job})


async def _logprobs(request, engine):
    from starlette.responses import JSONResponse
    from vllm import SamplingParams

    body = await _body(request, "prefixes", "answers")
    prefixes, answers = body["prefixes"], body["answers"]
    lm = await served_model(engine)
    vocab = len(lm.tokenizer)
    ok = lambda xs: isinstance(xs, list) and all(  # noqa: E731
        isinstance(x, list) and all(isinstance(i, int) and 0 <= i < vocab for i in x) for x in xs)
    if not ok(prefixes) or not ok(answers) or len(prefixes) != len(answers):
        raise BadRequest(f"`prefixes` and `answers` must be equally long lists of token-id lists (ids below {vocab}).")
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    tag, result = f"esamp-lp-{id(request)}-{time.monotonic_ns()}", []
    for i, (p, a) in enumerate(zip(prefixes, answers)):
        async for out in engine.generate({"prompt_token_ids": p + a}, params, f"{tag}-{i}"):
            final = out
        result.append(loop.prompt_logprobs_of(final, p, a))
    return JSONResponse({"logprobs": result})


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


_ROUTES = {("GET", "model"): _model, ("POST", "check"): _check, ("POST", "runs"): _runs, ("POST", "stop"): _stop,
           ("POST", "logprobs"): _logprobs}
