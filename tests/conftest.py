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
