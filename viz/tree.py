"""One run's answers to a prompt as a prefix tree of tokens: answers that share a beginning share
a branch. A chain of tokens that the same answers go through is one node, so 16 answers of 64
tokens stay a readable tree (a tail only one answer takes is one node)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from core.trace import RunTrace, Token


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


def answer_tree(trace: RunTrace, prompt_index: int = 0) -> Node:
    """The prefix tree of a prompt's answers: the root holds no token; children are ordered by how
    many answers go through them (most first), then by their first token's id."""
    answers = {s.sample_index: s.tokens for s in trace.samples_of(prompt_index)}
    return _grow(0, sorted(answers), answers)


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
