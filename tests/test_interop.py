"""ESamp through transformers' own model.generate() with one processor object."""

import torch

from core import EsampConfig, RunConfig, SamplingConfig, generate
from core import encode_prompts
from core.backends.hf.interop import esamp_for_generate


def test_generate_with_the_processor_matches_the_engine_under_the_same_seed(lm):
    cfg = RunConfig(method="esamp", sampling=SamplingConfig(n=1, max_new_tokens=12, seed=3, top_p=0.95),
                    esamp=EsampConfig(beta=0.5))
    engine = generate(lm, ["Tell me a story."], cfg)
    ids = torch.tensor(encode_prompts(lm, ["Tell me a story."], True, 12))
    with esamp_for_generate(lm, cfg) as esamp:
        torch.manual_seed(3)
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                **esamp.generate_kwargs())
    eos = set(lm.eos_ids)
    generated = [t for t in out[0, ids.shape[1]:].tolist() if t not in eos]
    assert generated == [t.id for t in engine.samples[0].tokens]
    assert len(esamp.pipeline.steerer.losses) >= 1  # the distiller trained


def test_the_hooks_are_removed_when_the_block_ends(lm):
    before = (len(lm.first_layer._forward_hooks), len(lm.final_norm._forward_hooks))
    with esamp_for_generate(lm):
        assert len(lm.first_layer._forward_hooks) == before[0] + 1
    assert (len(lm.first_layer._forward_hooks), len(lm.final_norm._forward_hooks)) == before


def test_n_samples_per_prompt_share_one_distiller_per_prompt(lm):
    cfg = RunConfig(method="esamp", sampling=SamplingConfig(n=3, max_new_tokens=4))
    ids = torch.tensor(encode_prompts(lm, ["Hi"], True, 4) * 2)  # two prompts, same length
    with esamp_for_generate(lm, cfg) as esamp:
        lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, **esamp.generate_kwargs())
    assert esamp.pipeline.steerer.groups == 2 and esamp.pipeline.steerer.rows == 6
