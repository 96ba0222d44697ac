import torch

from core.esamp.words import starts_word, word_starts


def test_a_word_starts_with_a_space_or_a_line():
    for piece in (" The", " ☉", "\n", "\n\n", " ", " 12"):
        assert starts_word(piece), piece
    # inside a word, a character's bytes, punctuation and symbols attached to a word: the model's
    for piece in ("phan", "ESSE", "✨", "☉", "", "\ufffd", "é", ".", ",", "!", "'s", "3", "..."):
        assert not starts_word(piece), piece


def test_word_starts_of_the_embedded_models_tokenizer(lm):
    tok = lm.tokenizer
    starts = word_starts(tok, len(tok) + 5)
    ids = {piece: tok.encode(piece, add_special_tokens=False) for piece in (" colour", " 12", "\n")}
    assert all(starts[ids[p][0]] for p in ids)
    glued = tok.encode("ESSEESSEESSEES", add_special_tokens=False)
    assert not any(starts[i] for i in glued[1:])  # its pieces after the first continue it
    assert not starts[len(tok):].any() and 0.3 < starts.float().mean() < 0.9
    assert torch.equal(lm.head.starts, word_starts(tok, lm.head.weight.shape[0]))  # the backend's head has them


def test_pushing_between_words_leaves_a_words_continuations_to_the_model(lm, check_between_words):
    check_between_words(lm)


def test_learn_says_when_a_token_was_left_to_the_model():
    from core import EsampConfig, RunConfig
    from core.trace import Token
    from viz.summary import left_to_the_model

    def token(text):
        return Token(id=0, text=text, logp_ref=-1.0, logp_new=-1.0, entropy_ref=1.0, entropy_new=1.0)

    between, every = RunConfig(esamp=EsampConfig(beta=1.0)), RunConfig(esamp=EsampConfig(beta=1.0, between_words=False))
    assert left_to_the_model(token("phan"), between) and left_to_the_model(token(""), between)
    assert not left_to_the_model(token(" colour"), between) and not left_to_the_model(token("phan"), every)
    assert not left_to_the_model(token("phan"), RunConfig(method="plain"))  # plain sampling pushes nothing at all


def test_a_head_without_word_starts_refuses_only_a_push_between_words():
    import pytest

    from core import EsampConfig
    from core.esamp.head import LMHead
    from core.esamp.steerer import Steerer

    head = LMHead(torch.randn(50, 8))  # a backend that read no tokenizer
    Steerer(1, 2, head, EsampConfig(beta=0.0), 1.0)  # plain sampling (shadow): nothing to push
    Steerer(1, 2, head, EsampConfig(beta=1.0, between_words=False), 1.0)  # every token: no table needed
    with pytest.raises(ValueError, match="--inside-words"):
        Steerer(1, 2, head, EsampConfig(beta=1.0), 1.0)
