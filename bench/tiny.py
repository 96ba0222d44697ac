"""A tiny random llama with a byte-level tokenizer, saved to a folder: a model for machines that
have torch and transformers but not the embedded one (a GPU image with no network).

    python -m bench.tiny /tmp/esamp-tiny && python -m core generate "Hi" --model /tmp/esamp-tiny
"""

from __future__ import annotations

import sys
from pathlib import Path

EOS = "<|endoftext|>"


def save_tiny_model(folder: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write the model and its tokenizer (256 byte tokens and an end token) to ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      bos_token_id=None, eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.tiny FOLDER")
    print(save_tiny_model(sys.argv[1]))
