"""Shared fixtures: the embedded model is loaded once per test session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def lm():
    from core import load_model

    return load_model()  # the embedded SmolLM2-135M-Instruct, float32 on CPU


@pytest.fixture(scope="session")
def tokenizer(lm):
    return lm.tokenizer


@pytest.fixture(scope="session")
def recorded_and_scored(lm):
    """(recorded, scored): the perplexities a trace recorded while generating, and those of scoring
    its texts again with the transformers model, for the samples whose text tokenizes back to
    their own tokens (only those are the same sequence)."""
    from core.scoring import perplexities, recorded_perplexities

    def compare(trace):
        same = [i for i, s in enumerate(trace.samples) if s.tokens and
                lm.tokenizer(s.text, add_special_tokens=False)["input_ids"] == [t.id for t in s.tokens]]
        assert same, "no sample tokenizes back to its own tokens"
        recorded = recorded_perplexities(trace)
        scored = perplexities(lm, [trace.prompts[trace.samples[i].prompt_index].text for i in same],
                              [trace.samples[i].text for i in same])
        return [recorded[i] for i in same], scored

    return compare
