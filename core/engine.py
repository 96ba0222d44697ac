"""The transformers decode loop: P prompts x n samples in one batch with a KV cache.

Per step it reads like the paper's Algorithm 1: forward -> filter -> predict and fuse ->
sample -> train the distillers. ESamp itself lives in esamp.py, filters in filters.py.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

import torch

from .config import RunConfig, check_prompts
from .esamp import Proposal, Steerer, unguided
from .filters import apply_filters, run_filters
from .fusion import step_signals
from .hooks import capture_states
from .models import LoadedModel
from .trace import Candidate, PromptTrace, RunTrace, Sample, Timings, Token


@dataclass
class Progress:
    step: int  # decode steps done
    max_steps: int
    tokens: int  # tokens generated so far, all rows
    max_tokens: int  # rows x max_new_tokens
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[Progress], None]


def encode_prompts(lm: LoadedModel, prompts: Sequence[str], chat: bool, max_new_tokens: int) -> list[list[int]]:
    """Token ids per prompt (chat template when asked and available); checks emptiness and context."""
    check_prompts(prompts)
    tok = lm.tokenizer
    use_chat = chat and getattr(tok, "chat_template", None)
    out = []
    for i, p in enumerate(prompts):
        if use_chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(p)["input_ids"]
        if len(ids) + max_new_tokens > lm.context_length:
            raise ValueError(
                f"Prompt {i} has {len(ids)} tokens and `max_new_tokens` is {max_new_tokens}: together more "
                f"than the model's context of {lm.context_length} tokens. Shorten the prompt or lower "
                f"max_new_tokens to at most {max(lm.context_length - len(ids), 0)}.")
        out.append(ids)
    return out


def left_pad(ids: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, L) input ids and attention mask, padded on the left so every row ends at its last token."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, width - len(x):] = torch.tensor(x)
        mask[i, width - len(x):] = 1
    return input_ids.to(device), mask.to(device)


def sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row from logits (R, V), as transformers samples: softmax then multinomial."""
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)[:, 0]


def generate(lm: LoadedModel, prompts: Sequence[str], config: RunConfig | None = None, *,
             progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> RunTrace:
    """Generate ``config.sampling.n`` samples for each prompt with plain, esamp or fire.

    Returns the full trace. ``progress`` is called after every step; setting ``cancel`` stops
    after the current step and returns what was generated (``trace.stopped``). ``lm`` from
    ``load_model(..., backend="vllm")`` runs on vLLM (vllm_backend.py), with the same trace.
    """
    if getattr(lm, "backend", "transformers") == "vllm":
        from .vllm_backend import generate_vllm

        return generate_vllm(lm, prompts, config, progress=progress, cancel=cancel)
    config = config or RunConfig()
    sc = config.sampling
    ids = encode_prompts(lm, prompts, config.chat, sc.max_new_tokens)
    P, n = len(ids), sc.n
    R = P * n
    device = lm.device
    eos = torch.tensor(lm.eos_ids, device=device)
    pad_id = lm.tokenizer.pad_token_id
    first, main = run_filters(config)
    gen = torch.Generator(device=device).manual_seed(sc.seed)
    steerer = None
    if config.uses_distiller:
        groups = P if config.esamp.scope == "prompt" else 1
        steerer = Steerer(groups, R, lm.head, config.esamp, config.beta, sc.temperature, seed=sc.seed)

    input_ids, mask = left_pad(ids, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    finished = torch.zeros(R, dtype=torch.bool, device=device)
    record: dict[str, list[torch.Tensor]] = {k: [] for k in _RECORDED}
    stopped = False
    t0 = time.perf_counter()
    with lm.lock, torch.no_grad(), capture_states(lm) as states:
        # Prefill each prompt once, then copy its cache to its n sample rows.
        out = lm.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, 0)  # (R, V)
        s, h = states.s.repeat_interleave(n, 0), states.h.repeat_interleave(n, 0)  # (R, H)
        mask = mask.repeat_interleave(n, 0)
        position = positions[:, -1:].repeat_interleave(n, 0)  # (R, 1)
        prefill_s = time.perf_counter() - t0
        tokens_done = 0
        for step in range(sc.max_new_tokens):
            filters, filtering, bound = first if step == 0 else main
            filtered = apply_filters(filters, logits)  # temperature -> top-k -> top-p -> min-p
            if steerer is None:
                prop = unguided(filtered, filtering, bound)
            else:  # predict h_hat and fuse; the first token has no trained distiller yet: unguided
                prop = steerer.propose(filtered, filtering, s, h, guided=step > 0, bound=bound)
            active = ~finished
            tokens = torch.where(active, sample(prop.to_sample, gen), pad_id)
            _record(record, prop, tokens, active, logits)
            bad = steerer.learn(prop, active) if steerer else torch.zeros(1, dtype=torch.bool)  # train after sampling
            if not sc.ignore_eos:
                finished = finished | torch.isin(tokens, eos)
            n_active, all_done, any_bad = torch.stack([active.sum(), finished.all(), bad.any()]).tolist()  # one sync
            tokens_done += n_active
            if any_bad:
                steerer.bank.handle_bad(bad)
            if progress:
                progress(Progress(step + 1, sc.max_new_tokens, tokens_done, R * sc.max_new_tokens,
                                  time.perf_counter() - t0))
            if all_done or step + 1 == sc.max_new_tokens:
                break
            if cancel is not None and cancel.is_set():
                stopped = True
                break
            # Next forward: one new token per row.
            mask = torch.cat([mask, mask.new_ones(R, 1)], dim=1)
            position = position + 1
            out = lm.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=position,
                           past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits = out.logits[:, -1].float()
            s, h = states.s, states.h
        seconds = time.perf_counter() - t0
    return _build_trace(lm, prompts, ids, config, record, steerer, stopped,
                        Timings(seconds, tokens_done, tokens_done / seconds, prefill_s,
                                steerer.seconds if steerer else 0.0))


_RECORDED = ("tokens", "active", "logp_ref", "logp_new", "logp_base", "entropy_ref", "entropy_new",
             "top_ids", "top_p_ref", "top_p_new", "novelty", "rel_novelty")


def _record(record: dict[str, list[torch.Tensor]], prop: Proposal, tokens: torch.Tensor,
            active: torch.Tensor, raw: torch.Tensor) -> None:
    sig = step_signals(prop.cand, prop.fused, tokens, raw)
    record["tokens"].append(tokens)
    record["active"].append(active)
    for k in ("logp_ref", "logp_new", "logp_base", "entropy_ref", "entropy_new", "top_ids", "top_p_ref",
              "top_p_new"):
        record[k].append(getattr(sig, k))
    if prop.novelty is not None:
        record["novelty"].append(prop.novelty)
        record["rel_novelty"].append(prop.rel_novelty)


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each token's piece of the decoded text, so that ``"".join(pieces)`` is the text.

    Decodes incrementally against the previous piece (as vLLM's detokenizer does) so word
    boundaries come out right; a token that ends in the middle of a multi-byte character
    gets "" and the character goes to the token that completes it.
    """
    pieces: list[str] = []
    prefix, read = 0, 0  # ids[prefix:read] is context already emitted
    for i in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        after = tokenizer.decode(ids[prefix:i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if after.endswith("\ufffd") and i + 1 < len(ids):
            pieces.append("")  # incomplete character: wait for the next token
            continue
        pieces.append(after[len(before):])
        prefix, read = read, i + 1
    return pieces


def _build_trace(lm, prompts, ids, config, record, steerer, stopped, timings) -> RunTrace:
    # (steps, R, ...) tensors -> per-row Python lists, once (element access on tensors is slow).
    rows = {k: torch.stack(v).cpu().transpose(0, 1).tolist() for k, v in record.items() if v}
    return build_trace(lm, "transformers", prompts, ids, config, rows, steerer, stopped, timings)


def build_trace(lm, backend: str, prompts, ids, config, rows: dict[str, list[list]], steerer, stopped,
                timings) -> RunTrace:
    """The trace from per-row records: ``rows[field][r][t]`` for row r = prompt * n + sample at its
    step t (fields as in ``_RECORDED``; ``active`` says which steps produced a token)."""
    R = len(rows["tokens"])
    n = config.sampling.n
    tok = lm.tokenizer
    eos = set(lm.eos_ids)
    vocab_text: dict[int, str] = {}

    def piece_of(i: int) -> str:
        if i not in vocab_text:
            vocab_text[i] = tok.decode([i], skip_special_tokens=False)
        return vocab_text[i]

    samples = []
    for r in range(R):
        steps = [t for t, a in enumerate(rows["active"][r]) if a]
        keep = [t for t in steps if config.sampling.ignore_eos or rows["tokens"][r][t] not in eos]
        token_ids = [rows["tokens"][r][t] for t in keep]
        pieces = token_pieces(tok, token_ids)
        tokens = []
        for t, tid, piece in zip(keep, token_ids, pieces):
            top = [Candidate(i, piece_of(i), pr, pn) for i, pr, pn in
                   zip(rows["top_ids"][r][t], rows["top_p_ref"][r][t], rows["top_p_new"][r][t])
                   if i >= 0 and pn > 0]
            tokens.append(Token(
                id=tid, text=piece, logp_ref=rows["logp_ref"][r][t], logp_new=rows["logp_new"][r][t],
                logp_base=_finite_or_none(rows, "logp_base", r, t), entropy_ref=rows["entropy_ref"][r][t],
                entropy_new=rows["entropy_new"][r][t],
                novelty=_finite_or_none(rows, "novelty", r, t), rel_novelty=_finite_or_none(rows, "rel_novelty", r, t),
                top=top))
        reason = "eos" if len(keep) < len(steps) else ("stopped" if stopped else "length")
        samples.append(Sample(r // n, r % n, "".join(pieces), reason, tokens))

    prompt_traces = []
    losses = torch.stack(steerer.losses).cpu() if steerer and steerer.losses else None  # (steps, G)
    live = torch.stack(steerer.live).cpu() if losses is not None else None  # (steps, G)
    for p, (text, pid) in enumerate(zip(prompts, ids)):
        loss: list[float] = []
        g = 0
        if losses is not None:
            g = p if losses.shape[1] > 1 else 0
            loss = losses[live[:, g], g].tolist()  # the steps where this distiller had rows
        prompt_traces.append(PromptTrace(text=text, n_prompt_tokens=len(pid), loss=loss,
                                         resets=int(steerer.bank.resets[g]) if steerer else 0))
    return RunTrace(config=config, model=lm.name, backend=backend, device=str(lm.device),
                    dtype=str(lm.dtype).removeprefix("torch."), prompts=prompt_traces, samples=samples,
                    timings=timings, stopped=stopped,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _finite_or_none(rows, key, r, t):
    if key not in rows:
        return None
    x = rows[key][r][t]
    return x if math.isfinite(x) else None
