"""ESamp inside vLLM: runs in, run traces out, with the same Pipeline, signals and trace as the
transformers backend.

vLLM schedules the requests; ESamp rides along through two extension points: forward hooks
(worker.py) copy the first decoder layer's residual stream and the LM head's input for the rows
the sampler reads, and the v1 logits processor (processor.py) hands each step's rows of every
run to that run's state (state.py), which applies temperature and filters with transformers'
semantics, predicts, fuses, trains the distillers and records. vLLM then samples at temperature 1
with no filters of its own, from a per-request seeded generator.

Each sample is one request, carrying its run's settings; the runs of one call (a β ladder, Sweep's
methods) are submitted together and share the engine's steps with every other caller's
(engine.py). Once a run's requests have finished, its result comes back through the worker
extension and becomes its trace here.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Sequence

from ...config import RunConfig, ladder_key
from ...esamp.steerer import RunStats
from ...trace import RunTrace
from .. import start
from ..base import Progress, ProgressFn, encode_prompts
from ..record import LivePieces, build_trace
from .engine import Request, Submission
from .model import VllmModel
from .request import request_extra

POLL_S = 0.05  # how often a waiting caller looks at its cancel event between engine steps


@dataclass
class Run:
    """The caller's side of one run in a submission."""

    key: str  # the run in the engine: the rungs of a β ladder share one (``requests_of``)
    config: RunConfig
    request_ids: list[str]
    rung: int = 0  # its place among the runs stepped as one: their rows in turn


def generate_runs(lm: VllmModel, prompts: Sequence[str], configs: Sequence[RunConfig], *,
                  progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> list[RunTrace]:
    """``core.generate_runs`` on vLLM: every sample of every run one request, all submitted together."""
    ids_of = encode_runs(lm, prompts, configs)
    starts(lm, configs)
    runs, groups = requests_of(lm, ids_of, configs, live=progress is not None)
    t0 = time.perf_counter()
    sub = lm.engine.submit(Submission(groups, keys=keys(runs)))
    stopped = _follow(lm, sub, runs, progress, cancel, t0)
    seconds = time.perf_counter() - t0
    taken = {k: lm.engine.call(lambda llm, key=k: llm.collective_rpc("esamp_take", args=(key,))[0]) for k in keys(runs)}
    results = results_of(runs, taken)
    if sub.error is not None:
        raise sub.error
    return traces_of(lm, prompts, runs, ids_of, results, t0=t0, seconds=seconds, stopped=stopped)


def encode_runs(lm, prompts: Sequence[str], configs: Sequence[RunConfig]) -> list[list[list[int]]]:
    """Each run's prompts as token ids (a ladder's runs share them); ValueError for what vLLM cannot run."""
    if any(c.esamp.prime and c.prefix_ids for c in configs):
        raise ValueError("A primed continuation (`prime`) runs on the transformers backend only: vLLM's worker "
                         "sees no states of the given tokens.")
    encoded: dict[tuple, list[list[int]]] = {}
    for c in configs:
        key = (c.chat, c.sampling.max_new_tokens, c.prefix_ids)
        if key not in encoded:
            encoded[key] = encode_prompts(lm, prompts, *key)
    return [encoded[(c.chat, c.sampling.max_new_tokens, c.prefix_ids)] for c in configs]


def check_runs(lm, prompts: Sequence[str], configs: Sequence[RunConfig]) -> None:
    """``Backend.check_runs`` on vLLM."""
    encode_runs(lm, prompts, configs)


def traces_of(lm, prompts: Sequence[str], runs: Sequence[Run], ids_of, results: Sequence[dict], *, t0: float,
              seconds: float, stopped: bool) -> list[RunTrace]:
    """The runs' traces from their results taken from the worker (``esamp_take``)."""
    for result in results:
        if result["error"]:
            raise RuntimeError(f"ESamp failed inside vLLM: {result['error']}")
    return [build_trace(lm, prompts, ids, r.config, res["rows"], RunStats(**res["stats"]), seconds=seconds,
                        prefill_seconds=(res["first_step_at"] or t0) - t0, stopped=stopped)
            for r, ids, res in zip(runs, ids_of, results)]


def starts(lm: VllmModel, configs: Sequence[RunConfig]) -> None:
    """The pretrained distiller of runs that start from it (``EsampConfig.start``), built here in the caller's
    thread where it is not yet (once; cached: core.backends.start), so that no engine step, every session's,
    waits for it; the worker then finds it in memory (this process) or in the cache (vLLM's). Loading a model
    builds none: it takes a copy of the model on the CPU and its answers to eight prompts, which a model
    whose runs all start fresh (the default) never needs."""
    mc = lm.llm.llm_engine.model_config  # what the worker keys it by (registry.Registry.model)
    for config in configs:
        if config.uses_distiller and config.esamp.start != "fresh":
            start.initial(mc.model, str(mc.dtype).removeprefix("torch."), config.esamp)


def generate(lm: VllmModel, prompts: Sequence[str], config: RunConfig, *, progress: ProgressFn | None = None,
             cancel: threading.Event | None = None) -> RunTrace:
    """``core.generate`` on vLLM: one run."""
    return generate_runs(lm, prompts, [config], progress=progress, cancel=cancel)[0]


def requests_of(lm, ids_of: list[list[list[int]]], configs: Sequence[RunConfig], ladders: bool = True,
                live: bool = True, one_group: bool = False):
    """The runs and their requests in groups, each of which goes into vLLM's engine at one step: a
    prompt's samples in every rung of its engine run (or, ``one_group``, all the requests). A group lies
    side by side in vLLM's batch, so its run works on its rows where they are (``RunState._rows``; rungs
    let in one by one would lie among other sessions' rows, copied every step). The requests of one step
    share their prompt's blocks in vLLM's prefix cache (internals, fact 14), so a prompt is prefilled once
    per run; every group keeps the schedule it has alone, under any load (the engine lets a group in once
    there is room for all of it: engine.py) and whatever the timing of a client of vLLM's own process
    (each request's record names its group, which vLLM's engine holds until all of it has come: fact 13).

    A run's tokens come from the worker (``esamp_take``), not from vLLM's outputs: those are for the
    caller's progress. So with ``live`` every request reports each step's new tokens; without it only
    a prompt's first sample does and the rest report once, at their end: vLLM then makes no output a
    step for them (at 24 prompts x 16, 2-5 ms of a 560 ms step on a 2-core EPYC, and 0.8 ms of the
    driver's own).

    With ``ladders``, runs that differ in β alone (``core.config.ladder_key``: a β ladder's rungs) are
    one run in the engine, with a β per row: each engine step then filters, fuses and records them in
    one pass instead of one a rung (docs/results.md: a run's own costs a step). Each rung keeps its
    own requests, seeds and distillers, so its tokens are those it has alone (to the last bit of a
    wider batch's roundings); ``traces_of`` gives each its own trace."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    groups: dict[object, list[int]] = {}  # the configs of each engine run, by ladder key (or alone)
    for i, config in enumerate(configs):
        key = ladder_key(config) if ladders else None
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    runs: list[Run | None] = [None] * len(configs)
    together: dict[str, list[Request]] = {}  # group key -> its requests
    everything = (uuid.uuid4().hex, sum(len(ids) * c.sampling.n for ids, c in zip(ids_of, configs)))
    for members in groups.values():
        key = uuid.uuid4().hex
        ladder = [configs[i].to_dict() for i in members] if len(members) > 1 else None
        for rung, i in enumerate(members):
            config, ids = configs[i], ids_of[i]
            sc, P = config.sampling, len(ids)
            base = rung * P * sc.n  # the rung's first row in its engine run
            run = runs[i] = Run(key, config, [f"esamp-{key}-{base + r}" for r in range(P * sc.n)], rung)
            for r, rid in enumerate(run.request_ids):
                group = everything if one_group else (f"esamp-{key}-p{r // sc.n}", len(members) * sc.n)
                extra = request_extra(key, base + r, P, config, ladder=ladder, together=group)
                params = SamplingParams(
                    n=1, max_tokens=sc.max_new_tokens, temperature=1.0, seed=request_seed(sc.seed, r),
                    ignore_eos=sc.ignore_eos, stop_token_ids=[] if sc.ignore_eos else lm.eos_ids, detokenize=False,
                    output_kind=RequestOutputKind.DELTA if live or r % sc.n == 0 else RequestOutputKind.FINAL_ONLY,
                    extra_args=extra)
                together.setdefault(group[0], []).append(Request(rid, ids[r // sc.n], params))
    return runs, list(together.values())


def keys(runs: Sequence[Run]) -> tuple[str, ...]:
    """The engine's runs of ``runs``, each once, in order."""
    return tuple(dict.fromkeys(r.key for r in runs))


def results_of(runs: Sequence[Run], taken: dict[str, dict]) -> list[dict]:
    """Each run's result from those taken from the worker by engine run (``esamp_take``): a ladder's
    rung its own part (``state.RunState.result``)."""
    out = []
    for r in runs:
        res = taken[r.key]
        out.append(res if res["error"] or "rungs" not in res else res | res["rungs"][r.rung])
    return out


def _follow(lm: VllmModel, sub: Submission, runs: list[Run], progress: ProgressFn | None,
            cancel: threading.Event | None, t0: float) -> bool:
    """Wait for ``sub``, reporting each run's progress and aborting it on ``cancel``; True if stopped."""
    stopped, seen = False, None
    live = live_pieces(lm.tokenizer, runs, lm.eos_ids) if progress is not None else None
    while not sub.finished:
        sub.wait(POLL_S)
        if progress is not None and (sub.steps, sub.queued) != seen:
            seen = sub.steps, sub.queued
            for p in progress_of(runs, sub.ids, sub.steps, t0, live):
                progress(replace(p, waiting=True) if seen[1] else p)
        if cancel is not None and cancel.is_set() and not stopped and not sub.finished:
            stopped = True
            lm.engine.abort(sub)
    return stopped


def live_pieces(tokenizer, runs: Sequence[Run], eos_ids: Sequence[int]) -> list[LivePieces]:
    """Each run's answers so far, kept for ``progress_of`` (in the runs' order)."""
    return [LivePieces(tokenizer, len(r.request_ids), () if r.config.sampling.ignore_eos else eos_ids) for r in runs]


def progress_of(runs: Sequence[Run], ids: dict[str, list[int]], steps: int | None, t0: float,
                live: list[LivePieces] | None = None) -> list[Progress]:
    """Each run's progress from its requests' token ids so far, after ``steps`` engine steps (None: as
    many as its longest sample has tokens); with ``live``, its answers so far too (decoding what is new)."""
    out = []
    for i, run in enumerate(runs):
        sc, done = run.config.sampling, [ids.get(rid, []) for rid in run.request_ids]
        counts = [len(d) for d in done]
        step = max(counts) if steps is None else steps
        answers: tuple = ()
        if live is not None:
            pieces = live[i]
            for row, d in enumerate(done):
                pieces.extend(row, d[pieces.taken[row]:])
            answers = pieces.snapshot([row for row, c in enumerate(counts) if c >= sc.max_new_tokens])
        out.append(Progress(min(step, sc.max_new_tokens), sc.max_new_tokens, sum(counts),
                            len(counts) * sc.max_new_tokens, time.perf_counter() - t0, run=i, answers=answers))
    return out


def prompt_logprobs_of(out, prefix: Sequence[int], answer: Sequence[int]) -> list[float]:
    """log p of each answer token from a request's ``prompt_logprobs`` over prefix + answer (entry t:
    the log-probability of token t given those before)."""
    steps = out.prompt_logprobs[len(prefix):len(prefix) + len(answer)]
    return [step[tok].logprob for step, tok in zip(steps, answer)]


def request_seed(seed: int, row: int) -> int:
    """Each sample's own sampling seed: depends on the run seed and its row only."""
    return (seed * 1_000_003 + row) % (2**31)


def native(lm: VllmModel, prompts: Sequence[list[int]], params: Sequence) -> list:
    """vLLM's own sampling (no ESamp) of token-id prompts through the shared engine: the final
    ``RequestOutput`` of each, in order."""
    from vllm.sampling_params import RequestOutputKind

    tag = uuid.uuid4().hex
    requests = [Request(f"native-{tag}-{i}", list(p), q.clone()) for i, (p, q) in enumerate(zip(prompts, params))]
    for r in requests:
        r.params.output_kind = RequestOutputKind.FINAL_ONLY
    sub = lm.engine.submit(Submission([[r] for r in requests]))
    while not sub.finished:
        sub.wait(POLL_S)
    if sub.error is not None:
        raise sub.error
    return [sub.outputs[r.id] for r in requests]


def answer_logprobs(lm: VllmModel, prefixes: Sequence[list[int]], answers: Sequence[list[int]]) -> list[list[float]]:
    """log p of every answer token given its prefix, under the model at T=1 (vLLM's prompt
    log-probabilities of prefix + answer)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    outs = native(lm, [list(p) + list(a) for p, a in zip(prefixes, answers)], [params] * len(prefixes))
    return [prompt_logprobs_of(out, p, a) for out, p, a in zip(outs, prefixes, answers)]
