"""The one interface every backend implements, and what all backends share about a run's input.

A backend (``core.backends.hf``: a transformers decode loop; ``core.backends.vllm``: ESamp
inside vLLM) is a ``Backend``: it loads a ``LanguageModel``, generates a run trace from it,
and gives answers' log-probabilities under the model. ``core.backends.get_backend(name)`` is the
one dispatch; everything above core/backends/ calls ``core.generate`` and ``core.load_model``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from ..config import RunConfig, check_prompts
from ..esamp.head import LMHead
from ..trace import RunTrace


@dataclass
class Progress:
    step: int  # decode steps done
    max_steps: int
    tokens: int  # tokens generated so far, all rows
    max_tokens: int  # rows x max_new_tokens
    seconds: float
    run: int = 0  # which of the call's runs (``generate_runs``)
    # Each row's answer so far (row = prompt * n + sample) as token pieces, for a view that watches the
    # answers grow; () where the backend was not asked for them or has none yet.
    answers: tuple[tuple[str, ...], ...] = ()
    # None of the run's answers has started: they wait for room in a full engine (vLLM, other sessions' rows)
    waiting: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


ProgressFn = Callable[[Progress], None]


class LanguageModel(Protocol):
    """A loaded causal LM as every backend exposes it. Shared between sessions, never mutated by a run."""

    name: str  # as the user gave it; DEFAULT_MODEL for the embedded one
    backend: str  # the name of the Backend that loaded it
    tokenizer: object  # a transformers tokenizer: chat template, token pieces
    head: LMHead | None  # the LM head ESamp projects through (None: it lives in vLLM's engine process)
    context_length: int
    eos_ids: list[int]
    lock: threading.Lock | None  # one generation at a time; None: runs share the model at once (vLLM)

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...


class Backend(Protocol):
    name: str

    def load(self, name: str, *, dtype: torch.dtype | str | None, device: str | torch.device | None,
             trust_remote_code: bool, safetensors_only: bool, **options) -> LanguageModel:
        """Load a model by transformers name or local directory (DEFAULT_MODEL: the embedded one);
        ``safetensors_only`` refuses pickled weights (.bin, .pt), which can run code when loaded."""

    def generate(self, lm: LanguageModel, prompts: Sequence[str], config: RunConfig, *,
                 progress: ProgressFn | None, cancel: threading.Event | None) -> RunTrace:
        """``config.sampling.n`` samples for each prompt, with every token's signals."""

    def generate_runs(self, lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig], *,
                      progress: ProgressFn | None, cancel: threading.Event | None) -> list[RunTrace]:
        """Each config's run on the prompts, together where the backend batches runs (``Progress.run``
        says whose progress); with ``cancel`` set, the runs finished and the cut-short ones."""

    def answer_logprobs(self, lm: LanguageModel, prefixes: Sequence[list[int]],
                        answers: Sequence[list[int]]) -> list[list[float]]:
        """log p of every answer token given its prefix and the answer's earlier tokens, at T=1."""

    def check_runs(self, lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig]) -> None:
        """ValueError saying why these runs cannot start on this model (a prompt and its new tokens over
        the context, a prefix id outside the vocabulary, what the backend does not run), before any does."""


def encode_prompts(lm: LanguageModel, prompts: Sequence[str], chat: bool, max_new_tokens: int,
                   prefix_ids: Sequence[int] = ()) -> list[list[int]]:
    """Token ids per prompt (chat template when asked and available), then ``prefix_ids`` (a
    continuation's given tokens); checks emptiness, the prefix's ids and the context."""
    check_prompts(prompts)
    tok = lm.tokenizer
    vocab = len(tok)
    bad = [i for i in prefix_ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"The prefix holds token id {bad[0]}, which is not in the model's vocabulary of {vocab}.")
    use_chat = chat and getattr(tok, "chat_template", None)
    out = []
    for i, p in enumerate(prompts):
        if use_chat:
            text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(p)["input_ids"]
        ids = ids + list(prefix_ids)
        if len(ids) + max_new_tokens > lm.context_length:
            raise ValueError(
                f"Prompt {i} has {len(ids)} tokens and `max_new_tokens` is {max_new_tokens}: together more "
                f"than the model's context of {lm.context_length} tokens. Shorten the prompt or lower "
                f"max_new_tokens to at most {max(lm.context_length - len(ids), 0)}.")
        out.append(ids)
    return out


def check_encoding(lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig]) -> None:
    """``Backend.check_runs`` where encoding the prompts is the whole check."""
    for c in configs:
        encode_prompts(lm, prompts, c.chat, c.sampling.max_new_tokens, c.prefix_ids)


def eos_ids(*sources) -> list[int]:
    """The end-of-sequence ids named by generation configs and tokenizers (an id or a list each)."""
    ids: set[int] = set()
    for src in sources:
        if src is not None:
            ids.update(src if isinstance(src, (list, tuple)) else [src])
    return sorted(ids)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to try."""


def cache_dir() -> Path:
    """Where converted and fetched models live: ``$ESAMP_CACHE_DIR``, default ``~/.cache/esamp-explorer``."""
    return Path(os.environ.get("ESAMP_CACHE_DIR") or Path.home() / ".cache" / "esamp-explorer")


class UnsupportedArchitectureError(ModelLoadError):
    """The model's architecture has no known first layer / final norm for ESamp to read."""
