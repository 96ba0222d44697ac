"""Served mode: which models a visitor may load, and the limits, all set by the server."""

from pathlib import Path

import pytest

from app.serving import Limits, Policy, from_environment
from core import DEFAULT_MODEL, load_model
from core.backends.base import ModelLoadError


def models_dir(tmp_path: Path) -> Path:
    for name in ("llama-a", "llama-b"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text("{}")
    (tmp_path / "models" / "no-config").mkdir()
    (tmp_path / "secret.bin").write_text("x")
    return tmp_path / "models"


def test_the_environment_sets_the_policy(tmp_path):
    p = from_environment({"ESAMP_SERVED": "1", "ESAMP_MODELS": "org/one, org/two", "ESAMP_MODELS_DIR": str(tmp_path),
                          "ESAMP_MAX_N": "4", "ESAMP_MAX_UPLOAD_MB": "0.5", "ESAMP_MAX_RUNS": "100"})
    assert p.served and p.models == ("org/one", "org/two") and p.models_dir == tmp_path
    assert p.limits == Limits(max_n=4, max_new_tokens=256, max_prompt_chars=4000, max_upload_mb=0.5, max_runs=100)
    assert from_environment({}) == Policy()
    for bad in ("lots", "0", "-3"):
        with pytest.raises(ValueError, match="ESAMP_MAX_N"):
            from_environment({"ESAMP_MAX_N": bad})
    # the backend a session starts on: vLLM where it is installed, else transformers; and preloading
    import importlib.util

    assert Policy().backend == ("vllm" if importlib.util.find_spec("vllm") else "transformers") and Policy().preload
    assert from_environment({"ESAMP_BACKEND": "transformers", "ESAMP_PRELOAD": "0"}) == Policy(
        backend="transformers", preload=False)
    for env, message in (({"ESAMP_BACKEND": "tensorrt"}, "is not a backend"), ({"ESAMP_PRELOAD": "maybe"}, "1 or 0")):
        with pytest.raises(ValueError, match=message):
            from_environment(env)


def test_a_served_app_loads_only_what_it_offers(tmp_path):
    p = Policy(served=True, models=("org/trusted",), models_dir=models_dir(tmp_path))
    assert p.allowed_models() == ["", "org/trusted", "llama-a", "llama-b"]  # no folder without a config.json
    assert p.check_model("") == "" and p.check_model(DEFAULT_MODEL) == DEFAULT_MODEL
    assert p.check_model("org/trusted") == "org/trusted"
    assert p.check_model("llama-a") == str(tmp_path / "models" / "llama-a")
    for hostile in ("org/other", "/etc", str(tmp_path / "models" / "llama-a"), "../secret.bin", "llama-a/..",
                    "no-config", "llama-a/../llama-b"):
        with pytest.raises(ValueError, match="not offered by this server"):
            p.check_model(hostile)


def test_an_app_that_is_not_served_loads_what_its_owner_types(tmp_path):
    assert Policy().check_model("/any/path") == "/any/path"


def test_safetensors_only_refuses_pickled_weights(tmp_path, tokenizer):
    """A checkpoint with only pytorch_model.bin (a pickle, which can run code) does not load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    path = tmp_path / "pickled"
    path.mkdir()
    cfg.save_pretrained(path)
    torch.save(LlamaForCausalLM(cfg).state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(path)
    assert (path / "pytorch_model.bin").exists() and not list(path.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(path), safetensors_only=True)
    assert load_model(str(path), dtype=torch.float32).hidden_size == 32  # the owner's own app still may
