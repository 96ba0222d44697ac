"""Tiny randomly initialised models of each supported family generate with ESamp (no downloads)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from core import RunConfig, SamplingConfig, generate
from core import UnsupportedArchitectureError, load_model
from core.backends.hardware import default_dtype
from core.backends.hf.model import wrap_model

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def tiny_configs(vocab):
    return {
        "llama": LlamaConfig(vocab_size=vocab, **SMALL),
        "qwen2": Qwen2Config(vocab_size=vocab, **SMALL),
        "mistral": MistralConfig(vocab_size=vocab, **SMALL),
        "gemma2": Gemma2Config(vocab_size=vocab, head_dim=8, final_logit_softcapping=30.0, **SMALL),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256),
    }


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma2", "gpt2"])
def test_tiny_model_generates_with_esamp(family, tokenizer):
    torch.manual_seed(0)
    config = tiny_configs(len(tokenizer))[family]
    model = AutoModelForCausalLM.from_config(config).eval()
    lm = wrap_model(f"tiny-{family}", model, tokenizer)
    assert (lm.head.softcap is not None) == (family == "gemma2")
    cfg = RunConfig(method="esamp", sampling=SamplingConfig(n=2, max_new_tokens=5, ignore_eos=True),
                    chat=False)
    trace = generate(lm, ["Hello there", "A longer prompt with more words"], cfg)
    assert [len(s.tokens) for s in trace.samples] == [5] * 4
    assert all(t.novelty is not None for s in trace.samples for t in s.tokens)
    assert len(trace.prompts[1].loss) == 5


def test_unsupported_model_type_is_named(tmp_path, tokenizer):
    from transformers import BloomConfig

    model = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=100, hidden_size=16, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedArchitectureError, match="'bloom'"):
        wrap_model("tiny-bloom", model, tokenizer)


def test_a_local_checkpoint_directory_loads_by_path(tmp_path, tokenizer):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_configs(len(tokenizer))["llama"]).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    assert lm.model.config.model_type == "llama" and lm.dtype == default_dtype(torch.device("cpu"))
    assert load_model(str(tmp_path), dtype="float32").dtype == torch.float32


def test_unknown_model_gives_a_clear_error(tmp_path):
    from core import ModelLoadError

    with pytest.raises(ModelLoadError, match="Cannot load model .*neither a local directory"):
        load_model(str(tmp_path / "no-such-model"))
