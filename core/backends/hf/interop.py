"""ESamp for people who already call ``model.generate()``: one logits processor plus its hooks.

    with esamp_for_generate(lm, config) as esamp:
        torch.manual_seed(config.sampling.seed)
        out = lm.model.generate(input_ids, attention_mask=mask, max_new_tokens=64, **esamp.generate_kwargs())

The processor applies the filters itself (temperature -> top-k -> top-p -> min-p, as
transformers would) and then fuses, because transformers runs custom processors *before* its
own warpers while ESamp must rewrite only the candidates that survive the filters; so
``generate_kwargs()`` turns transformers' warpers off. Rows are grouped as generate lays them
out with ``num_return_sequences=n``: prompt-major, n rows per prompt.

Relation to ``core.generate``: the same ``Pipeline`` (filters, fusion, distiller
initialisation and training order), and transformers samples with ``torch.multinomial`` from
the global generator as the transformers backend does from its own. So after
``torch.manual_seed(seed)`` on CPU, one prompt with n=1 gives token-for-token the backend's
output under the same seed (tested). With n > 1,
generate() prefills n copies of the prompt while the backend prefills once and copies the
cache; the float results can then differ in their last bits and, rarely, so can a token.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ...config import RunConfig
from ...esamp.steerer import Pipeline
from .. import start
from ..hooks import States, capture_states
from .model import HfModel


class GenerateProcessor(LogitsProcessor):
    """Filters, then ESamp-fuses, the scores of each generate() step; trains after sampling."""

    def __init__(self, lm: HfModel, states: States, config: RunConfig, initial: list[torch.Tensor] | None = None):
        """initial: the weights the distillers start from (``core.backends.start``; None: fresh)."""
        if config.method != "esamp":
            raise ValueError(f"`method` must be 'esamp' for the generate() processor, but is {config.method!r}.")
        self.lm, self.states, self.config, self.initial = lm, states, config, initial
        self.eos = torch.tensor(lm.eos_ids, device=lm.device)
        self.pipeline: Pipeline | None = None
        self.prompt_len = 0
        self._active: torch.Tensor | None = None  # the rows of the step proposed last, to learn from

    def generate_kwargs(self) -> dict[str, Any]:
        """Arguments for ``model.generate`` that sample with this processor and nothing else."""
        return dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=None,
                    num_return_sequences=self.config.sampling.n,
                    pad_token_id=self.lm.tokenizer.pad_token_id,
                    logits_processor=LogitsProcessorList([self]))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]  # (R, L) prompt plus tokens so far; scores (R, V)
        first = self.pipeline is None
        if first:
            self.pipeline = Pipeline(self.config, self.lm.head, rows // self.config.sampling.n, self.initial)
            self.prompt_len = input_ids.shape[1]
        elif self._active is not None:  # the previous step's token is sampled now: train on its states
            self.pipeline.learn(self._active)
        finished = torch.isin(input_ids[:, self.prompt_len:], self.eos).any(-1)  # (R,)
        position = input_ids.shape[1] - self.prompt_len  # every row draws the same token of its answer
        prop = self.pipeline.propose(scores.float(), self.states.s, self.states.h, torch.full((rows,), position))
        self._active = ~finished
        return self.pipeline.to_sample(prop)  # a new tensor: generate() may keep the scores it passed


@contextmanager
def esamp_for_generate(lm: HfModel, config: RunConfig | None = None) -> Iterator[GenerateProcessor]:
    """A fresh ESamp processor for one ``generate()`` call; its hooks are removed on exit."""
    config = config or RunConfig(method="esamp")
    initial = start.initial_for(lm, config)  # built (once) before the hooks go on
    with capture_states(lm.first_layer, lm.final_norm) as states:
        yield GenerateProcessor(lm, states, config, initial)
