"""Logit filters with transformers' exact semantics, composed as a plain list.

Each filter has one contract: ``filter(logits) -> logits`` on a (rows, vocab) float tensor,
returning a new tensor in which removed tokens are ``-inf``. The input is never modified.
Order (transformers' order, ESAMP.md): temperature -> top-k -> top-p -> min-p.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from ..config import RunConfig

Filter = Callable[[torch.Tensor], torch.Tensor]
NEG_INF = float("-inf")


class Temperature:
    def __init__(self, temperature: float):
        if not temperature > 0:
            raise ValueError(f"`temperature` has to be a strictly positive float, but is {temperature}")
        self.temperature = float(temperature)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class TopK:
    """Keep the k largest logits (ties with the k-th are kept, as in transformers)."""

    def __init__(self, top_k: int):
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"`top_k` has to be a strictly positive integer, but is {top_k}")
        self.top_k = top_k

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (R, 1)
        return logits.masked_fill(logits < kth, NEG_INF)


class TopP:
    """Keep the smallest set of most likely tokens whose probability adds up to top_p.

    transformers sorts the whole vocabulary (on a CPU ~1 ms a row at 49k tokens, most of a
    bfloat16 step's filtering); a nucleus is usually a few hundred tokens, so the ``guess`` most
    likely are looked at first and the whole row sorted only when its nucleus is wider. Which
    tokens stay is transformers' rule (a token stays while the tokens above it hold less than
    top_p); the sums run the other way round, so a token whose mass above is top_p to the last
    float32 bit may fall on the other side."""

    def __init__(self, top_p: float, guess: int = 1024):
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"`top_p` has to be a float in (0, 1], but is {top_p}")
        self.top_p = float(top_p)
        self.guess = guess

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.guess < logits.shape[-1]:
            x = logits.float()
            values, ids = torch.topk(x, self.guess, dim=-1)  # (R, guess), most likely first
            probs = (values - torch.logsumexp(x, -1, keepdim=True)).exp()
            keep = probs.cumsum(-1) - probs < self.top_p  # the mass of the tokens above each
            if not bool(keep[:, -1].any()):  # every row's nucleus ends inside the guess
                kept = torch.where(keep, logits.gather(-1, ids), NEG_INF)
                return torch.full_like(logits, NEG_INF).scatter_(-1, ids, kept)
        return self.sorted(logits)

    def sorted(self, logits: torch.Tensor) -> torch.Tensor:
        """transformers' own: sort the whole vocabulary."""
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - self.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        return logits.masked_fill(remove, NEG_INF)


class MinP:
    """Keep tokens whose probability is at least min_p times the top token's."""

    def __init__(self, min_p: float):
        if not 0.0 <= min_p <= 1.0:
            raise ValueError(f"`min_p` has to be a float in [0, 1], but is {min_p}")
        self.min_p = float(min_p)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(dim=-1)
        remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)  # keep at least one
        return logits.masked_fill(remove, NEG_INF)


def build_filters(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> list[Filter]:
    """The filter list for these settings; neutral values leave a filter out.

    Order matters and is transformers': temperature first (min-p is defined on the tempered
    distribution), then top-k, top-p, min-p.
    """
    filters: list[Filter] = []
    if temperature != 1.0:
        filters.append(Temperature(temperature))
    if top_k > 0:
        filters.append(TopK(top_k))
    if top_p < 1.0:
        filters.append(TopP(top_p))
    if min_p > 0.0:
        filters.append(MinP(min_p))
    return filters


class StepFilters(NamedTuple):
    """The filters of one decode step and what the candidates' shortcut needs to know of them."""

    filters: list[Filter]
    active: bool  # any filter besides temperature: the candidates are a subset of the vocabulary
    top_k: int | None  # top-k's k when it is among the filters: no row keeps more (ties aside)
    temperature: float  # what the logits are divided by
    # The first filter besides temperature: ``candidates.select`` takes its candidates straight from the
    # model's logits, and runs the filters after it (``rest``) on those candidates alone.
    first: "TopK | TopP | MinP | None" = None
    rest: tuple = ()

    @classmethod
    def of(cls, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> "StepFilters":
        filters = build_filters(temperature, top_k, top_p, min_p)
        narrowing = [f for f in filters if not isinstance(f, Temperature)]
        return cls(filters, bool(narrowing), top_k or None, float(temperature),
                   narrowing[0] if narrowing else None, tuple(narrowing[1:]))


def run_filters(config: RunConfig) -> tuple[StepFilters, StepFilters]:
    """(first token's, later tokens') filters of a run: FIRE draws its first token hotter, in a
    top-k window; every other method filters every token alike (the same object twice)."""
    sc = config.sampling
    main = StepFilters.of(sc.temperature, sc.top_k, sc.top_p, sc.min_p)
    if config.method != "fire":
        return main, main
    return StepFilters.of(config.fire.temperature, config.fire.top_k), main


def apply_filters(filters: Sequence[Filter], logits: torch.Tensor) -> torch.Tensor:
    for f in filters:
        logits = f(logits)
    return logits
