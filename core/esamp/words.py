"""Which tokens start a word: what ``EsampConfig.between_words`` lets the push move.

A token continues a word when its text starts with a letter or a symbol (it glues onto the piece
before it: "phan" in "Ale|phan|o", "✨" after "✨"), or when it is part of a character's bytes (its
text alone is empty or a replacement character: an emoji's first bytes). Every other token starts
something: a space, a line, punctuation or a digit first. The same letters and symbols make a glued
non-word in ``viz.metrics.glued_run``; a token after a line break that starts with a letter ("This")
counts as continuing, so a line's first word is left to the model.
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import torch


def glues(ch: str) -> bool:
    """Letters and symbols (emoji, box drawing) glue onto what comes before; spaces, digits and
    punctuation do not."""
    return ch.isalpha() or unicodedata.category(ch).startswith("S")


def starts_word(piece: str) -> bool:
    """Whether a token whose text alone is ``piece`` starts a word (see the module's docstring)."""
    return bool(piece) and "\ufffd" not in piece and not glues(piece[0])


def word_starts(tokenizer, vocab: int) -> torch.Tensor:
    """(vocab,) bool: whether each token id starts a word, from a transformers tokenizer (ids beyond
    the tokenizer's, padding of the embedding, start none)."""
    known = min(vocab, len(tokenizer))
    pieces: Sequence[str] = tokenizer.batch_decode([[i] for i in range(known)], clean_up_tokenization_spaces=False)
    out = torch.zeros(vocab, dtype=torch.bool)
    out[:known] = torch.tensor([starts_word(p) for p in pieces], dtype=torch.bool)
    return out
