"""ESamp inside vLLM: the same Steerer, filters, signals and trace as the transformers loop.

vLLM schedules the requests; ESamp rides along through two official extension points:

- forward hooks (installed once with ``LLM.apply_model``) copy the first decoder layer's
  residual stream and the LM head's input for the rows the sampler will read;
- a v1 logits processor (``EsampLogitsProcessor``) applies temperature and filters with
  transformers' semantics (filters.py), predicts and fuses (esamp.py), trains the distillers,
  and hands vLLM the final logits. vLLM then samples at temperature 1 with no filters of its
  own, from a per-request seeded generator.

Each request is one sample; its ``SamplingParams.extra_args`` say which run and which row
(prompt * n + sample) it is, and so which distiller it shares. Rows move, finish and join
between steps; the Steerer gets each row's layout slot. The chosen token of a step is known
only after vLLM samples it, so each step's log-probabilities of the chosen token are read at
the next step from the request's output list (or at the end).

Internals this relies on are isolated in ``vllm_internals``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch

from . import vllm_internals as vi
from .config import RunConfig
from .engine import Progress, ProgressFn, build_trace, encode_prompts
from .esamp import Steerer, unguided
from .filters import apply_filters, run_filters
from .fusion import LMHead, base_logprobs, chosen_logps, distribution_signals
from .models import DEFAULT_MODEL, ModelLoadError, embedded_model_dir
from .trace import RunTrace, Timings

log = logging.getLogger(__name__)

vi.prepare_environment()  # before anything imports vllm
_EXTRA_KEY = "esamp_explorer"
CPU_KV_CACHE_GIB = 2.0
# vLLM's prefix cache shares whole KV blocks only. With its CPU default of 128 tokens a block,
# a shorter prompt would be prefilled again for each of its n samples.
CPU_BLOCK_SIZE = 32
_runs = itertools.count()


@dataclass
class _Capture:
    """The states of the latest forward pass at the sampled rows, written by the hooks."""

    s: torch.Tensor | None = None  # (B, H) float32, first decoder layer's residual stream
    h: torch.Tensor | None = None  # (B, H) float32, LM head input


@dataclass
class VllmModel:
    """A vLLM engine with ESamp's hooks and processor; one generation at a time."""

    name: str
    llm: object
    tokenizer: object  # transformers tokenizer of the same model: chat template, token pieces
    head: LMHead
    context_length: int
    eos_ids: list[int]
    dtype: torch.dtype
    processor: "EsampLogitsProcessor"
    backend: str = "vllm"
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def hidden_size(self) -> int:
        return self.head.weight.shape[1]


def load_vllm(name: str | None = None, *, dtype: str | None = None, max_model_len: int | None = None,
              kv_cache_gib: float | None = None, trust_remote_code: bool = False, **llm_kwargs) -> VllmModel:
    """Start a vLLM engine (eager mode: hooks do not run inside captured graphs) for ESamp.

    ``name`` is a transformers model name or directory; None is the embedded default. dtype
    defaults to float32 on CPU (as the transformers backend; bfloat16 ran 4x slower on these
    CPUs) and to vLLM's choice on GPUs. The KV cache takes
    ``kv_cache_gib`` (default on CPU: 2 GiB; vLLM would otherwise reserve 92% of the
    machine's memory); on GPUs vLLM sizes it. Other keyword arguments go to ``vllm.LLM``.
    """
    from transformers import AutoTokenizer, GenerationConfig

    vllm = vi.import_vllm()
    note = vi.version_note(vllm.__version__)
    if note:
        log.warning(note)
    # Whole prompts only: with chunked prefill a partly prefilled request gets a logits row whose
    # token vLLM throws away (the processor would train on it), and on CPU throwing away a seeded
    # request's token fails ("CPU Generator does not use offset", vLLM 0.32).
    llm_kwargs.setdefault("enable_chunked_prefill", False)
    if not torch.cuda.is_available():
        dtype = dtype or "float32"
        kv_cache_gib = kv_cache_gib or CPU_KV_CACHE_GIB
        llm_kwargs.setdefault("block_size", CPU_BLOCK_SIZE)
    if kv_cache_gib is not None:
        llm_kwargs.setdefault("kv_cache_memory_bytes", int(kv_cache_gib * 2**30))
    name = name or DEFAULT_MODEL
    source = str(embedded_model_dir()) if name == DEFAULT_MODEL else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot load model {name!r} for vLLM: {str(exc).splitlines()[0]}") from exc
    try:
        before = set(EsampLogitsProcessor._instances)
        with vi.scan_safe():
            llm = vllm.LLM(model=source, tokenizer=source, enforce_eager=True, dtype=dtype or "auto",
                           max_model_len=max_model_len, logits_processors=[EsampLogitsProcessor],
                           trust_remote_code=trust_remote_code, **llm_kwargs)
    except Exception as exc:  # vLLM raises many types (pydantic validation, OSError, RuntimeError)
        raise ModelLoadError(f"vLLM cannot load model {name!r}: {str(exc).splitlines()[0]}") from exc
    vi.check_in_process(llm)
    capture = _Capture()
    head = llm.apply_model(lambda model: _install_hooks(model, capture))[0]
    processor = EsampLogitsProcessor.created_since(before)
    processor.capture = capture
    eos: set[int] = set()
    try:
        gen_eos = GenerationConfig.from_pretrained(source).eos_token_id
    except OSError:
        gen_eos = None
    for src in (gen_eos, tokenizer.eos_token_id):
        if src is not None:
            eos.update(src if isinstance(src, (list, tuple)) else [src])
    model_config = llm.llm_engine.model_config
    return VllmModel(name=name, llm=llm, tokenizer=tokenizer, head=head, context_length=model_config.max_model_len,
                     eos_ids=sorted(eos), dtype=model_config.dtype, processor=processor)


def _install_hooks(model: torch.nn.Module, capture: _Capture) -> LMHead:
    """Runs inside the worker (``apply_model``): hooks that fill ``capture``; returns the LM head."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "logits_processor") or not hasattr(model, "lm_head"):
        raise ModelLoadError(f"ESamp's vLLM backend cannot find the first layer and LM head of "
                             f"{type(model).__name__} (it expects model.model.layers and model.lm_head).")
    lp = model.logits_processor
    if getattr(lp, "scale", 1.0) != 1.0:
        raise ModelLoadError(f"{type(model).__name__} scales its logits by {lp.scale}; ESamp's fusion does not yet.")

    def on_first_layer(_module, _inputs, output):
        rows = vi.last_token_rows()
        capture.s = vi.residual_stream(output)[rows].float()  # copies: vLLM reuses these buffers in place

    def on_head_input(_module, args):
        capture.h = args[1].float()  # (B, H): compute_logits(hidden_states[logits_indices])

    layers[0].register_forward_hook(on_first_layer)
    lp.register_forward_pre_hook(on_head_input)
    vocab = model.config.vocab_size if hasattr(model, "config") else lp.org_vocab_size
    weight = model.lm_head.weight[:vocab]  # the embedding may be padded beyond the vocabulary
    bias = getattr(model.lm_head, "bias", None)
    return LMHead(weight, None if bias is None else bias[:vocab], getattr(lp, "soft_cap", None))


# ---- the logits processor ---------------------------------------------------------------------

try:
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
except ImportError:  # vLLM not installed: the module still imports, load_vllm explains
    LogitsProcessor = object  # type: ignore[misc,assignment]


@dataclass
class _Row:
    run: int
    row: int  # prompt * n + sample
    out: list[int]  # vLLM's live list of this request's output token ids


class EsampLogitsProcessor(LogitsProcessor):
    """vLLM v1 logits processor; does nothing for requests that are not part of an ESamp run."""

    _instances: "weakref.WeakSet[EsampLogitsProcessor]" = weakref.WeakSet()

    def __init__(self, vllm_config, device, is_pin_memory):
        self.rows: dict[int, _Row] = {}  # persistent batch index -> row
        self.run: _Run | None = None
        self.capture: _Capture | None = None
        EsampLogitsProcessor._instances.add(self)

    @classmethod
    def created_since(cls, before: set) -> "EsampLogitsProcessor":
        """The one processor vLLM created since ``before`` (a snapshot of ``_instances``)."""
        new = [p for p in cls._instances if p not in before]
        if len(new) != 1:
            raise vi.VllmUnavailableError(f"vLLM created {len(new)} ESamp logits processors for one engine; "
                                          "expected exactly one.")
        return new[0]

    def is_argmax_invariant(self) -> bool:
        return False  # fusion can change the most likely token

    def update_state(self, batch_update: "BatchUpdate | None") -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, out in batch_update.added:
            mine = (params.extra_args or {}).get(_EXTRA_KEY)
            if mine is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = _Row(mine["run"], mine["row"], out)
        for a, b, how in batch_update.moved:
            ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ra is not None:
                self.rows[b] = ra
            if how == MoveDirectionality.SWAP and rb is not None:
                self.rows[a] = rb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        run = self.run
        if run is None or not self.rows:
            return logits
        batch = [(i, r) for i, r in sorted(self.rows.items()) if r.run == run.id and i < logits.shape[0]]
        if not batch:
            return logits
        return run.step(logits, batch, self.capture)


class _Run:
    """One generate() call's state inside the processor: filters, Steerer, records."""

    def __init__(self, run_id: int, config: RunConfig, head: LMHead, groups: int, rows: int):
        sc = config.sampling
        self.id = run_id
        self.first, self.main = run_filters(config)
        self.steerer = Steerer(groups, rows, head, config.esamp, config.beta, sc.temperature, seed=sc.seed) \
            if config.uses_distiller else None
        self.pending: list[_Step] = []  # steps whose chosen tokens are not read yet
        self.done: list[_Step] = []
        self.rows_done = 0  # tokens proposed so far, all rows
        self.first_step_at: float | None = None
        self.error: BaseException | None = None

    def step(self, logits: torch.Tensor, batch: list[tuple[int, _Row]], capture: _Capture) -> torch.Tensor:
        try:
            return self._step(logits, batch, capture)
        except BaseException as exc:  # keep vLLM's engine alive; generate() re-raises after aborting
            self.error = exc
            return logits

    def _step(self, logits, batch, capture) -> torch.Tensor:
        self._resolve()
        index = torch.tensor([i for i, _ in batch], device=logits.device)
        whole = len(batch) == logits.shape[0]
        raw = logits if whole else logits[index]
        s, h = capture.s, capture.h
        if s is None or h is None or s.shape[0] != logits.shape[0] or h.shape[0] != logits.shape[0]:
            raise vi.VllmUnavailableError(
                f"ESamp's hooks saw {None if s is None else s.shape[0]} / {None if h is None else h.shape[0]} "
                f"rows but the sampler has {logits.shape[0]}; this vLLM lays out batches differently.")
        if not whole:
            s, h = s[index], h[index]
        t = [len(r.out) for _, r in batch]  # the step (token position) each row is at
        filters, filtering, bound = self.main
        filtered = apply_filters(filters, raw)  # temperature -> top-k -> top-p -> min-p
        is_first = torch.tensor([x == 0 for x in t], device=logits.device)
        if self.first is not self.main and any(x == 0 for x in t):  # FIRE: first tokens filtered their own way
            filtered = torch.where(is_first[:, None], apply_filters(self.first.filters, raw), filtered)
            filtering = filtering or self.first.active
            bound = max(bound, self.first.bound) if bound and self.first.bound else None
        if self.steerer is None:
            prop = unguided(filtered, filtering, bound)
        else:
            # vLLM samples under inference_mode; the distiller needs autograd, on ordinary tensors
            # (s and h enter its graph; the logits do not).
            with torch.inference_mode(False):
                slots = torch.tensor([r.row for _, r in batch], device=logits.device)
                prop = self.steerer.propose(filtered, filtering, s.clone(), h.clone(), guided=~is_first, slots=slots,
                                            bound=bound)
                # Training now is the same as after sampling: it reads this step's (s, h) only, and the
                # fused logits were computed with the weights from before this update.
                bad = self.steerer.learn(prop, torch.ones(len(batch), dtype=torch.bool, device=logits.device))
                if bool(bad.any()):
                    self.steerer.bank.handle_bad(bad)
        lp_ref, lp_new, sig = distribution_signals(prop.cand, prop.fused)
        logps = (lp_ref, lp_new, base_logprobs(raw, prop.cand))
        self.pending.append(_Step([r for _, r in batch], t, prop.cand, logps, sig, prop.novelty, prop.rel_novelty))
        self.rows_done += len(batch)
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        if whole:
            return prop.to_sample
        logits[index] = prop.to_sample
        return logits

    def _resolve(self, final: bool = False) -> None:
        """Read the chosen tokens of earlier steps from the output lists; keep what is not there yet."""
        still = []
        for st in self.pending:
            if st.resolve(final):
                self.done.append(st)
            else:
                still.append(st)
        self.pending = still

    def rows(self, total_rows: int) -> dict[str, list[list]]:
        """Per-row lists of every field, as ``build_trace`` takes them."""
        self._resolve(final=True)
        fields = ("logp_ref", "logp_new", "logp_base", "entropy_ref", "entropy_new", "top_ids", "top_p_ref",
                  "top_p_new")
        if self.steerer is not None:
            fields += ("novelty", "rel_novelty")
        rows: dict[str, list[list]] = {k: [[] for _ in range(total_rows)] for k in ("tokens", "active") + fields}
        for st in self.done:
            values = {k: st.values[k].cpu().tolist() for k in fields}
            for i, (row, t) in enumerate(zip(st.rows, st.t)):
                if st.tokens[i] < 0:
                    continue  # never sampled (aborted)
                for k in ("tokens", "active") + fields:
                    col = rows[k][row.row]
                    while len(col) <= t:
                        col.append(False if k == "active" else 0)
                rows["tokens"][row.row][t] = st.tokens[i]
                rows["active"][row.row][t] = True
                for k in fields:
                    rows[k][row.row][t] = values[k][i]
        width = max((len(c) for c in rows["tokens"]), default=0)
        for k, per_row in rows.items():
            for col in per_row:
                col.extend([False if k == "active" else 0] * (width - len(col)))
        return rows


class _Step:
    """One processor call's signals, waiting for its chosen tokens."""

    def __init__(self, rows, t, cand, logps, sig, nov, rel):
        self.rows, self.t = rows, t
        self._cand, self._lp = cand, logps  # (R, K) each: log p_ref, log p_new, log p_base
        self.values = {"entropy_ref": sig.entropy_ref, "entropy_new": sig.entropy_new, "top_ids": sig.top_ids,
                       "top_p_ref": sig.top_p_ref, "top_p_new": sig.top_p_new}
        if nov is not None:
            self.values["novelty"], self.values["rel_novelty"] = nov, rel
        self.tokens: list[int] = []

    def resolve(self, final: bool) -> bool:
        """Look up the chosen tokens; True once done (``final``: whatever is missing was never sampled)."""
        tokens = [r.out[t] if len(r.out) > t else -1 for r, t in zip(self.rows, self.t)]
        if not final and any(x < 0 for x in tokens):
            return False
        ids = torch.tensor(tokens, device=self._lp[0].device).clamp(min=0)
        chosen = chosen_logps(self._cand, ids, *self._lp)
        self.values.update(zip(("logp_ref", "logp_new", "logp_base"), chosen))
        self.tokens, self._cand, self._lp = tokens, None, None  # free the (B, K) tensors
        return True


# ---- generate -----------------------------------------------------------------------------------

def generate_vllm(lm: VllmModel, prompts: Sequence[str], config: RunConfig | None = None, *,
                  progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> RunTrace:
    """``core.generate`` on vLLM: same arguments, same trace (backend "vllm")."""
    from vllm import SamplingParams

    config = config or RunConfig()
    sc = config.sampling
    ids = encode_prompts(lm, prompts, config.chat, sc.max_new_tokens)
    P, n = len(ids), sc.n
    R = P * n
    groups = P if config.esamp.scope == "prompt" else 1
    engine = lm.llm.llm_engine
    with lm.lock:
        run = _Run(next(_runs), config, lm.head, groups, R)
        request_ids = [f"esamp-{run.id}-{r}" for r in range(R)]
        lm.processor.run = run
        stopped = False
        unfinished: set[str] = set()  # added to the engine, not finished
        t0 = time.perf_counter()

        def add(r: int) -> None:
            params = SamplingParams(
                n=1, max_tokens=sc.max_new_tokens, temperature=1.0, seed=_request_seed(sc.seed, r),
                ignore_eos=sc.ignore_eos, stop_token_ids=[] if sc.ignore_eos else lm.eos_ids,
                detokenize=False, extra_args={_EXTRA_KEY: {"run": run.id, "row": r}})
            engine.add_request(request_ids[r], {"prompt_token_ids": ids[r // n]}, params)
            unfinished.add(request_ids[r])

        # Each prompt's first sample goes first; its other samples join once its prompt is in
        # vLLM's prefix cache, so the prompt is prefilled once, not n times.
        siblings = {request_ids[p * n]: range(p * n + 1, p * n + n) for p in range(P) if n > 1}
        try:
            for p in range(P):
                add(p * n)
            step = 0
            while unfinished:
                for out in engine.step():
                    for r in siblings.pop(out.request_id, ()):
                        add(r)
                    if out.finished:
                        unfinished.discard(out.request_id)
                step += 1
                if run.error is not None:
                    raise run.error
                if progress:
                    progress(Progress(min(step, sc.max_new_tokens), sc.max_new_tokens, run.rows_done,
                                      R * sc.max_new_tokens, time.perf_counter() - t0))
                if cancel is not None and cancel.is_set() and unfinished:
                    stopped = True
                    break
        finally:
            if unfinished:  # stopped, or an error: nothing of this run may stay in the engine
                engine.abort_request(sorted(unfinished))
                while engine.has_unfinished_requests():
                    engine.step()
            lm.processor.run = None
        seconds = time.perf_counter() - t0
    rows = run.rows(R)
    done = sum(sum(a) for a in rows["active"])
    timings = Timings(seconds, done, done / seconds if seconds > 0 else 0.0,
                      (run.first_step_at or t0) - t0, run.steerer.seconds if run.steerer else 0.0)
    return build_trace(lm, "vllm", prompts, ids, config, rows, run.steerer, stopped, timings)


def _request_seed(seed: int, row: int) -> int:
    """Each sample's own sampling seed: depends on the run seed and its row only."""
    return (seed * 1_000_003 + row) % (2**31)


def answer_logprobs(lm: VllmModel, prefixes: Sequence[list[int]], answers: Sequence[list[int]]) -> list[list[float]]:
    """Log-probability of every answer token given its prefix, under the model at T=1 (vLLM's
    prompt log-probabilities of prefix + answer)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    with lm.lock:
        outs = lm.llm.generate([{"prompt_token_ids": list(p) + list(a)} for p, a in zip(prefixes, answers)],
                               params, use_tqdm=False)
    result = []
    for out, p, a in zip(outs, prefixes, answers):
        steps = out.prompt_logprobs[len(p):len(p) + len(a)]  # entry t: the logprob of token t given those before
        result.append([step[tok].logprob for step, tok in zip(steps, a)])
    return result
