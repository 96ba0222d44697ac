"""Where ESamp steered: each answer's fork from plain sampling's.

A ladder's runs share one seed, so sample i of every β draws the same random numbers as plain
sampling's sample i: the two answers are the same token for token until the first step where
fusion moved the distribution far enough to change the draw. That step is the fork. Before it
the answers share a prefix; at it, the ESamp run's token carries the candidates before and after
fusion and the novelty that moved them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

from core.trace import RunTrace, Token


@dataclass(frozen=True)
class Fork:
    """One ESamp answer against plain sampling's answer with the same prompt and sample index."""

    prompt_index: int
    sample_index: int
    position: int | None  # 0-based index of the first token that differs; None: the same answer throughout
    prefix: str  # the text both answers share before the fork
    plain: Token | None  # plain sampling's token at the fork (None where plain's answer had ended)
    esamp: Token | None  # ESamp's token at the fork (None where ESamp's answer had ended)


def fork_position(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where two token sequences differ; where one ends first, its length; None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def forks(plain: RunTrace, esamp: RunTrace) -> list[Fork]:
    """Every ESamp answer's fork from plain sampling's, in sample order; ValueError when the two
    runs did not draw the same random numbers (another seed or other sampling settings, prompts)."""
    if plain.config.sampling != esamp.config.sampling or [p.text for p in plain.prompts] != [
            p.text for p in esamp.prompts]:
        raise ValueError("A fork needs two runs of one ladder: the same prompts, seed and sampling settings.")
    by_key = {(s.prompt_index, s.sample_index): s for s in plain.samples}
    out = []
    for s in esamp.samples:
        base = by_key.get((s.prompt_index, s.sample_index))
        if base is None:
            continue  # plain's run was stopped before this sample
        pos = fork_position([t.id for t in base.tokens], [t.id for t in s.tokens])
        shared = s.tokens if pos is None else s.tokens[:pos]
        out.append(Fork(s.prompt_index, s.sample_index, pos, "".join(t.text for t in shared),
                        _at(base.tokens, pos), _at(s.tokens, pos)))
    return out


def _at(tokens: Sequence[Token], pos: int | None) -> Token | None:
    return tokens[pos] if pos is not None and pos < len(tokens) else None


def fork_sentence(label: str, found: Sequence[Fork]) -> str:
    """One line for a teacher: how many answers part from plain sampling's, and how early."""
    if not found:
        return f"{label}: no answers to compare with plain sampling's."
    parted = sorted(f.position + 1 for f in found if f.position is not None)  # 1-based, as the page counts
    same = len(found) - len(parted)
    if not parted:
        which = "its answer is" if len(found) == 1 else f"all {len(found)} answers are"
        return f"{label}: {which} plain sampling's, token for token (fusion never changed a draw)."
    if len(found) == 1:
        return f"{label}: its answer parts from plain sampling's at token {parted[0]}."
    text = (f"{label}: {len(parted)} of {len(found)} answers part from plain sampling's, at a median token "
            f"{statistics.median(parted):g} (earliest {parted[0]}, latest {parted[-1]})")
    return text + (f"; {same} {'stays' if same == 1 else 'stay'} the same throughout." if same else ".")
