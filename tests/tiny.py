"""Tiny random models for the tests."""

import torch


def peaked(model) -> None:
    """A random model's head drawn wide enough that its next-token distributions are peaked, as a trained
    model's are (logits of standard deviation about 4: top-p 0.9 keeps hundreds of tokens, not 87 % of the
    vocabulary). A flat one sends every top-p step the long way (sorting the whole vocabulary), and the
    pretrained distiller that ``python -m core serve --dtype`` builds as it starts (plain answers at top-p
    0.9) took 33 s instead of 5 on the servers' tiny Llama."""
    torch.nn.init.normal_(model.lm_head.weight, std=4 / model.config.hidden_size ** 0.5)
