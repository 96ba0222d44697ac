"""A tiny random llama with a byte-level tokenizer, saved to a folder: a model for machines that
have torch and transformers but not the embedded one (a GPU image with no network).

    python -m bench.tiny /tmp/esamp-tiny && python -m core generate "Hi" --model /tmp/esamp-tiny
    python -m bench.tiny /tmp/esamp-shaped --shape embedded   # the embedded model's shape, random weights

``--shape embedded`` has SmolLM2-135M-Instruct's layers, widths, heads and vocabulary (its byte-level
tokenizer names 257 of the 49,152 ids; the others decode to nothing): for timing on such a machine,
where speed depends on the shape, not on the weights (``./run gpu-check`` times it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

EOS = "<|endoftext|>"

# SmolLM2-135M-Instruct's shape (tests/test_bench.py checks it against the embedded model's config)
EMBEDDED_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192)


def tiny_config(vocab: int, eos: int, hidden: int = 64, layers: int = 2, shape: str | None = None):
    """The model's LlamaConfig: ``hidden`` and ``layers`` with two heads, or ``shape`` "embedded"."""
    from transformers import LlamaConfig

    if shape not in (None, "embedded"):
        raise ValueError(f"Unknown shape {shape!r}: embedded, or none for the tiny one.")
    dims = EMBEDDED_SHAPE if shape == "embedded" else dict(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=vocab, max_position_embeddings=1024)
    return LlamaConfig(**dims, bos_token_id=None, eos_token_id=eos, pad_token_id=eos)


def save_tiny_model(folder: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0,
                    shape: str | None = None) -> Path:
    """Write the model and its tokenizer (256 byte tokens and an end token) to ``folder``; ``shape``
    "embedded": the embedded model's shape instead of ``hidden`` and ``layers``, saved in bfloat16."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(len(vocab), vocab[EOS], hidden, layers, shape))
    (model if shape is None else model.to(torch.bfloat16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.tiny", description=__doc__.split("\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--shape", choices=["embedded"], help="the embedded model's shape (random weights)")
    a = ap.parse_args()
    print(save_tiny_model(a.folder, shape=a.shape))
