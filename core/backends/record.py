"""From a run's per-step tensors to its trace, the same for every backend.

A backend adds each decode step's tokens and ``StepSignals`` to a ``Recorder`` (for all rows
of the run, or for the rows in its batch), then ``build_trace`` turns the recorder's per-row
lists into a ``RunTrace``. The recorded fields are ``core.trace.TOKEN_SIGNALS`` and the
candidates: this module never names them one by one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Iterable, Sequence

import torch

from ..config import RunConfig
from ..esamp.signals import TOP_FIELDS, StepSignals
from ..esamp.steerer import RunStats
from ..trace import TOKEN_SIGNALS, Candidate, PromptTrace, RunTrace, Sample, Timings, Token
from .base import LanguageModel

SIGNALS = (*TOKEN_SIGNALS, *TOP_FIELDS)
_OPTIONAL = {f.name for f in fields(Token) if f.default is None}  # None when not recorded or not finite


@dataclass
class _Entry:
    rows: list[int] | None  # the layout rows of the batch's rows; None: all rows, in layout order
    t: list[int] | int  # each row's position in its sample, or one position for all
    tokens: torch.Tensor  # (B,)
    active: torch.Tensor  # (B,) bool: the row produced a token at this step
    signals: StepSignals


class Recorder:
    """Every step's tokens and signals, kept on the device until the run ends."""

    def __init__(self, rows: int):
        self.rows = rows
        self._entries: list[_Entry] = []

    def add(self, tokens: torch.Tensor, active: torch.Tensor, signals: StepSignals, t: int | list[int],
            rows: list[int] | None = None) -> None:
        """One step of B rows: all rows at position ``t``, or the layout ``rows`` at positions ``t``."""
        self._entries.append(_Entry(rows, t, tokens, active, signals))

    def per_row(self) -> dict[str, list[list]]:
        """``out[field][row][t]`` for "tokens", "active" and every recorded signal; positions a row
        never reached hold None (and ``active`` False). One host transfer per field."""
        entries = self._entries
        row_of, t_of = [], []
        for e in entries:
            b = e.tokens.shape[0]
            row_of += range(b) if e.rows is None else e.rows
            t_of += [e.t] * b if isinstance(e.t, int) else e.t
        width = max(t_of, default=-1) + 1
        names = ["tokens", "active"] + [n for n in SIGNALS if entries and entries[0].signals[n] is not None]
        out: dict[str, list[list]] = {}
        for name in names:
            parts = [e.tokens if name == "tokens" else e.active if name == "active" else e.signals[name]
                     for e in entries]
            values = torch.cat(parts).cpu().tolist()
            per_row: list[list] = [[False if name == "active" else None] * width for _ in range(self.rows)]
            for r, t, v in zip(row_of, t_of, values):
                per_row[r][t] = v
            out[name] = per_row
        return out


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


class LivePieces:
    """Each row's answer so far as token pieces (``token_pieces``, decoded incrementally: only the new
    tokens at each call), for progress reports that show the answers growing (``Progress.answers``)."""

    def __init__(self, tokenizer, rows: int, skip: Sequence[int] = ()):
        """skip: token ids left out (end-of-sequence tokens, which a trace's text leaves out too)."""
        self.tokenizer, self.skip = tokenizer, set(skip)
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.pieces: list[list[str]] = [[] for _ in range(rows)]
        self.taken = [0] * rows  # ids handed to ``extend`` per row, skipped ones included
        self.ended: set[int] = set()  # rows that drew an end-of-sequence token (in ``skip``): their answer is whole
        self._state = [(0, 0) for _ in range(rows)]  # (prefix, read) of token_pieces, per row

    def extend(self, row: int, ids: Sequence[int]) -> None:
        """Row ``row``'s next tokens."""
        tok, own, pieces = self.tokenizer, self.ids[row], self.pieces[row]
        prefix, read = self._state[row]
        self.taken[row] += len(ids)
        for i in ids:
            if i in self.skip:
                self.ended.add(row)
                continue
            own.append(i)
            before = tok.decode(own[prefix:read], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            after = tok.decode(own[prefix:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if after.endswith("\ufffd"):
                pieces.append("")  # an incomplete character: the token that completes it gets it
                continue
            pieces.append(after[len(before):])
            prefix, read = read, len(own)
        self._state[row] = (prefix, read)

    def snapshot(self, final: Iterable[int] = ()) -> tuple[tuple[str, ...], ...]:
        """Each row's pieces so far; rows in ``final`` (or that drew an end-of-sequence token) have ended,
        and a character their last tokens left incomplete is shown as ``token_pieces`` ends it (U+FFFD),
        so their pieces join to the trace's text."""
        out = [list(p) for p in self.pieces]
        for row in self.ended.union(final):
            own, (prefix, read) = self.ids[row], self._state[row]
            if read < len(own):  # tokens waiting for the rest of a character
                before = self.tokenizer.decode(own[prefix:read], skip_special_tokens=False,
                                               clean_up_tokenization_spaces=False)
                after = self.tokenizer.decode(own[prefix:], skip_special_tokens=False,
                                              clean_up_tokenization_spaces=False)
                out[row][-1] = after[len(before):]
        return tuple(tuple(p) for p in out)


def build_trace(lm: LanguageModel, prompts: Sequence[str], ids: Sequence[list[int]], config: RunConfig,
                rows: dict[str, list[list]], stats: RunStats, *, seconds: float, prefill_seconds: float,
                stopped: bool) -> RunTrace:
    """The trace from ``Recorder.per_row()`` (row r = prompt * n + sample), the Pipeline's
    ``RunStats``, and the run's wall time (all of it, and until the first step)."""
    new_tokens = sum(sum(a) for a in rows["active"])
    timings = Timings(seconds, new_tokens, new_tokens / seconds if seconds > 0 else 0.0, prefill_seconds,
                      stats.esamp_seconds, stats.parts)
    n = config.sampling.n
    tok = lm.tokenizer
    eos = set(lm.eos_ids)
    vocab_text: dict[int, str] = {}

    def piece_of(i: int) -> str:
        if i not in vocab_text:
            vocab_text[i] = tok.decode([i], skip_special_tokens=False)
        return vocab_text[i]

    def value(name: str, r: int, t: int):
        x = rows[name][r][t] if name in rows else None
        if name in _OPTIONAL and x is not None and not math.isfinite(x):
            return None
        return x

    samples = []
    for r in range(len(rows["tokens"])):
        steps = [t for t, a in enumerate(rows["active"][r]) if a]
        keep = [t for t in steps if config.sampling.ignore_eos or rows["tokens"][r][t] not in eos]
        token_ids = [rows["tokens"][r][t] for t in keep]
        pieces = token_pieces(tok, token_ids)
        tokens = []
        for t, tid, piece in zip(keep, token_ids, pieces):
            top = [Candidate(i, piece_of(i), pr, pn) for i, pr, pn in zip(*(rows[k][r][t] for k in TOP_FIELDS))
                   if i >= 0 and pn > 0]
            tokens.append(Token(id=tid, text=piece, top=top, **{k: value(k, r, t) for k in TOKEN_SIGNALS}))
        reason = "eos" if len(keep) < len(steps) else ("stopped" if stopped else "length")
        samples.append(Sample(r // n, r % n, "".join(pieces), reason, tokens))
    prompt_traces = [PromptTrace(text=text, n_prompt_tokens=len(pid), loss=loss, rel_novelty=rel, resets=r)
                     for text, pid, loss, rel, r in zip(prompts, ids, stats.losses, stats.rel_novelty, stats.resets)]
    return RunTrace(config=config, model=lm.name, backend=lm.backend, device=str(lm.device),
                    dtype=str(lm.dtype).removeprefix("torch."), prompts=prompt_traces, samples=samples,
                    timings=timings, stopped=stopped,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
