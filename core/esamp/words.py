"""Which tokens start a word: what ``EsampConfig.between_words`` lets the push move.

A token starts a word when its text begins with a space or a line break: it is the choice of the next
word. Every other token continues what is there: a piece inside a word ("phan" in "Ale|phan|o"), the
bytes of a character (its text alone is empty or a replacement character: an emoji's first bytes), or
punctuation and symbols attached to a word ("." "!" "'s" "✨"). Pushed, those spelled non-words and
emoji chains on the embedded model, and punctuation lifted into strings of "!" and "...": the choice of
how a word ends, and of its punctuation, stays the model's (docs/results.md, "Pushing between words").
A line's first word ("\nThis": "This" has no space) is the model's too.
"""

from __future__ import annotations

from typing import Sequence

import torch


def starts_word(piece: str) -> bool:
    """Whether a token whose text alone is ``piece`` starts a word (see the module's docstring)."""
    return bool(piece) and "\ufffd" not in piece and piece[0].isspace()


def word_starts(tokenizer, vocab: int) -> torch.Tensor:
    """(vocab,) bool: whether each token id starts a word, from a transformers tokenizer (ids beyond
    the tokenizer's, padding of the embedding, start none)."""
    known = min(vocab, len(tokenizer))
    pieces: Sequence[str] = tokenizer.batch_decode([[i] for i in range(known)], clean_up_tokenization_spaces=False)
    out = torch.zeros(vocab, dtype=torch.bool)
    out[:known] = torch.tensor([starts_word(p) for p in pieces], dtype=torch.bool)
    return out
