"""Metrics on literal inputs, with the arithmetic worked out in comments."""

import math

import numpy as np
import pytest
from scipy.special import comb

from viz.metrics import (DEGENERATE_SEQ_REP_4, GLUED_TOKENS, degenerate_share, distinct_n, glued_run, is_degenerate,
                          mean_and_stderr, mean_pairwise_cosine_distance, pass_at_k, self_bleu, seq_rep, vendi_score)


def test_cosine_distance_of_orthogonal_and_identical_vectors():
    # pairs: (x, y) orthogonal -> 1; (x, x) identical -> 0; (y, x) -> 1: mean 2/3
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    assert mean_pairwise_cosine_distance(emb) == pytest.approx(2 / 3)
    assert mean_pairwise_cosine_distance(emb[:1]) == 0.0


def test_vendi_score_counts_effectively_distinct_answers():
    # three orthogonal answers: K = I, eigenvalues of K/3 are 1/3 each, exp(entropy) = 3
    assert vendi_score(np.eye(3)) == pytest.approx(3.0)
    # two identical answers: K = all ones, eigenvalues 1 and 0: exp(0) = 1
    assert vendi_score(np.array([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(1.0)


def test_seq_rep_counts_the_n_grams_that_repeat_an_earlier_one_of_the_same_answer():
    # 1 2 3 4 1 2 3 4 1: 4-grams 1234 2341 3412 4123 1234 2341 -> the last two repeat: 2/6
    assert seq_rep([1, 2, 3, 4, 1, 2, 3, 4, 1], 4) == pytest.approx(2 / 6)
    assert seq_rep([1, 2, 3, 4, 5, 6], 4) == 0.0  # no 4-gram twice
    assert seq_rep([7, 7, 7, 7, 7, 7], 4) == pytest.approx(2 / 3)  # 3 4-grams, all 7777: 2 repeat
    assert seq_rep([1, 2, 3], 4) == 0.0  # too short for one 4-gram


def test_an_answer_that_loops_is_degenerate_and_ordinary_text_is_not():
    loop = [5, 9, 13] * 10  # "ESSEESSEESSEES": 30 tokens, 27 4-grams of 3 kinds, 24 of them repeats
    text = list(range(40))
    assert is_degenerate(loop) and not is_degenerate(text)
    assert seq_rep(loop, 4) == pytest.approx(24 / 27) and 24 / 27 > DEGENERATE_SEQ_REP_4
    assert degenerate_share([loop, text, text, text]) == pytest.approx(0.25) and degenerate_share([]) == 0.0


def test_a_glued_run_counts_tokens_joined_into_one_word_of_letters_or_symbols():
    # " The| space|space|space|name|," -> The: 1; space+space+space+name: 4; the comma ends it
    assert glued_run([" The", " space", "space", "space", "name", ","]) == 4
    assert glued_run([" RED", "EF", "IT", "TO", "RED", " PUR", "PLE"]) == 5  # a space starts a new word
    assert glued_run([" 2", "0", "2", "6", "-", "12", "-", "05"]) == 0  # digits and punctuation glue nothing
    assert glued_run([" well", "-", "known", " don", "'t"]) == 1  # punctuation ends a run; letters after it start one
    assert glued_run(["ab", "cd,", "ef"]) == 2  # "cd," joins "ab", its comma ends the run; "ef" starts anew
    # emoji of three byte tokens each: two empty pieces, then the one that completes the character
    assert glued_run([" A", "", "", " ✨", "", "", "✨", "", "", "✨", "."]) == 9
    assert glued_run([]) == 0


def test_an_answer_that_glues_a_non_word_is_degenerate_given_its_pieces():
    glued = [" The", " col", "our", " is", " RED", "EF", "IT", "TO", "RED", "PUR", "PLE", "SPR", "."]
    ids = list(range(len(glued)))  # no 4-gram twice: it does not loop
    assert glued_run(glued) == 8 == GLUED_TOKENS
    assert is_degenerate(ids, glued) and not is_degenerate(ids)  # without its pieces, only loops are seen
    words = [" The", " col", "our", " is", " a", " deep", " red", "."]
    assert not is_degenerate(ids[:8], words)
    assert degenerate_share([ids, ids[:8]], [glued, words]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        degenerate_share([ids], [glued, words])  # pieces for every answer or none


def test_distinct_2():
    # "a b c" has bigrams (a b), (b c); "a b d": (a b), (b d). 3 distinct of 4.
    assert distinct_n(["a b c", "A b d"], 2) == pytest.approx(3 / 4)
    assert distinct_n([""], 2) == 0.0


def test_self_bleu_is_one_for_identical_answers_and_low_for_disjoint_ones():
    assert self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)
    assert self_bleu(["the cat sat on the mat", "quantum fields bend light sharply"]) < 0.1


@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 5), (16, 1, 16), (16, 0, 4), (5, 5, 2), (20, 7, 3)])
def test_pass_at_k_matches_the_closed_form(n, c, k):
    expected = 1 - comb(n - c, k, exact=True) / comb(n, k, exact=True)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_1_is_the_fraction_correct():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # 1 - C(7,1)/C(10,1) = 1 - 7/10


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=4, c=5"):
        pass_at_k(4, 5, 1)


def test_mean_and_stderr():
    # values 1, 2, 3: mean 2, sample sd 1, stderr 1/sqrt(3)
    m, se = mean_and_stderr([1.0, 2.0, 3.0])
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))
