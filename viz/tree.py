"""One run's answers to a prompt as a prefix tree of tokens: answers that share a beginning share
a branch. A chain of tokens that the same answers go through is one node, so 16 answers of 64
tokens stay a readable tree (a tail only one answer takes is one node)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from core.trace import RunTrace, Token

from .summary import token_label

BRANCHED = 1000  # a branch's answers are samples BRANCHED * (b + 1) + k in a joined tree


@dataclass
class Node:
    """A run of tokens the same answers go through, from token ``start`` (0-based) on."""

    start: int
    tokens: list[Token]
    samples: list[int]  # the sample indices (within the prompt) through it
    children: list["Node"] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)

    def walk(self):
        """This node and every node below it, depth first (children in order)."""
        yield self
        for child in self.children:
            yield from child.walk()


def answer_tree(trace: RunTrace, prompt_index: int = 0, branches: Sequence[RunTrace] = ()) -> Node:
    """The prefix tree of a prompt's answers: the root holds no token; children are ordered by how
    many answers go through them (most first), then by their first token's id. ``branches``: runs
    continued from one of these answers (``branch_point``), joined where they left it."""
    answers = {s.sample_index: list(s.tokens) for s in trace.samples_of(prompt_index)}
    for b, branch in enumerate(branches):
        point = branch_point(trace, branch)
        if point is None:
            continue  # not a branch of this run
        for s in branch.samples:
            answers[BRANCHED * (b + 1) + s.sample_index] = point.given + list(s.tokens)
    grown = _grow(0, sorted(answers), answers)
    return Node(0, [], grown.samples, [grown]) if grown.tokens else grown  # every answer's shared start: a node


@dataclass(frozen=True)
class BranchPoint:
    """Where a continuation left one of a run's answers: that answer's tokens before ``position``,
    then the token chosen instead (``given`` holds both), against the token the answer had there."""

    sample_index: int
    position: int
    given: list[Token]
    replaced: Token | None  # the answer's own token at ``position`` (None: it had ended)
    shared: int = 1  # how many of the run's answers begin with the same tokens: with more than one, the
    # branch left all of them there, and ``sample_index`` is only one of them

    def heading(self) -> str:
        """Where the branch left the run, in words."""
        given = self.given[-1]  # no text: a token of choice that was none of the candidates shown
        chose = token_label(given.text, given.id) if given.text else f"token #{given.id}"
        if self.shared > 1:
            begin = "at the first token" if self.position == 0 else f"at token {self.position + 1}"
            return (f"{begin}, {chose} where {self.shared} answers that begin alike went on in their own ways")
        was = token_label(self.replaced.text, self.replaced.id) if self.replaced else "its end"
        swap = f"{chose} again" if self.replaced is not None and self.replaced.id == self.given[-1].id else \
            f"{chose} instead of {was}"
        return f"answer {self.sample_index + 1} from token {self.position + 1}, {swap}"


def branch_point(parent: RunTrace, branch: RunTrace) -> BranchPoint | None:
    """Which answer of ``parent`` a continuation ``branch`` left, and where; None if it is none of them
    (another prompt or run). Its prefix is the parent's own prefix, the answer's first tokens, and one
    token of choice: a candidate at that step (its probabilities known) or any other token."""
    own, given = parent.config.prefix_ids, branch.config.prefix_ids
    if [p.text for p in parent.prompts] != [p.text for p in branch.prompts] or len(given) <= len(own) or \
            given[:len(own)] != own:
        return None
    pos, last = len(given) - len(own) - 1, given[-1]
    left = [s for s in parent.samples
            if len(s.tokens) >= pos and [t.id for t in s.tokens[:pos]] == list(given[len(own):-1])]
    if not left:
        return None
    # Answers with these first tokens split here when their next tokens differ: the one left is one
    # whose own next token is not the chosen one, where there is such (the chosen may be another's).
    s = next((s for s in left if pos == len(s.tokens) or s.tokens[pos].id != last), left[0])
    here = s.tokens[pos] if pos < len(s.tokens) else None
    cand = next((c for o in left if pos < len(o.tokens) for c in o.tokens[pos].top if c.id == last), None)
    chosen = Token(id=last, text=cand.text if cand else "", logp_ref=_log(cand.p_ref if cand else 0.0),
                   logp_new=_log(cand.p_new if cand else 0.0), entropy_ref=0.0, entropy_new=0.0)
    return BranchPoint(s.sample_index, pos, list(s.tokens[:pos]) + [chosen], here, len(left))


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -1e30


def _grow(start: int, samples: list[int], answers: dict[int, Sequence[Token]]) -> Node:
    """The node of ``samples`` (which share their tokens before ``start``) from ``start`` on."""
    node = Node(start, [], samples)
    pos = start
    while True:
        going = [k for k in samples if pos < len(answers[k])]
        ids = {answers[k][pos].id for k in going}
        if len(going) != len(samples) or len(ids) != 1:
            break  # an answer ends here, or they part: children from here
        node.tokens.append(answers[samples[0]][pos])
        pos += 1
    groups: dict[int, list[int]] = {}
    for k in samples:
        if pos < len(answers[k]):
            groups.setdefault(answers[k][pos].id, []).append(k)
    node.children = [_grow(pos, ks, answers) for _, ks in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0]))]
    return node


def layout(root: Node) -> list[tuple[Node, float, Node | None]]:
    """(node, row, parent) for every node but the root, depth first: leaves take rows 0, 1, 2, ... in
    order, a node sits at the mean row of its children."""
    out: list[tuple[Node, float, Node | None]] = []
    next_row = [0]

    def place(node: Node, parent: Node | None) -> float:
        out.append((node, 0.0, parent))
        at = len(out) - 1
        rows = [place(c, node) for c in node.children]
        if rows:
            row = sum(rows) / len(rows)
        else:
            row, next_row[0] = float(next_row[0]), next_row[0] + 1
        out[at] = (node, row, parent)
        return row

    for child in root.children:
        place(child, None)
    return out
