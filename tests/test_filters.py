"""Our filters against transformers' own warpers (the oracle), on hand-made and random logits."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from core.esamp.filters import MinP, Temperature, TopK, TopP, apply_filters, build_filters

INF = float("inf")


def hf_chain(temperature, top_k, top_p, min_p):
    chain = []
    if temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    if min_p:
        chain.append(MinPLogitsWarper(min_p))
    return chain


def test_top_k_on_a_four_token_distribution():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    # the two largest (4 and 3) survive
    assert TopK(2)(logits).tolist() == [[-INF, 4.0, 3.0, -INF]]


def test_top_k_keeps_ties_with_the_kth_value_like_transformers():
    logits = torch.tensor([[3.0, 3.0, 1.0, 3.0]])
    assert TopK(2)(logits).tolist() == [[3.0, 3.0, -INF, 3.0]]


def test_top_p_on_a_four_token_distribution():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps 0.5 and 0.3 (0.5 alone is not enough)
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    out = TopP(0.7)(logits)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]


def test_min_p_on_a_four_token_distribution():
    # top token 0.5; min_p=0.4 keeps tokens with p >= 0.2: 0.5 and 0.3
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(MinP(0.4)(logits)).tolist() == [[True, True, False, False]]


def test_temperature_divides():
    assert Temperature(2.0)(torch.tensor([[2.0, -4.0]])).tolist() == [[1.0, -2.0]]


def test_filters_do_not_modify_their_input():
    logits = torch.randn(3, 50)
    before = logits.clone()
    for f in (Temperature(0.7), TopK(5), TopP(0.8), MinP(0.1)):
        f(logits)
    assert torch.equal(logits, before)


def test_at_least_one_token_survives_extreme_settings():
    logits = torch.randn(4, 100)
    out = apply_filters(build_filters(0.01, 1, 0.01, 1.0), logits)
    assert (torch.isfinite(out).sum(-1) >= 1).all()


@pytest.mark.parametrize("temperature,top_k,top_p,min_p", [
    (1.0, 50, 1.0, 0.0), (0.7, 0, 0.9, 0.0), (1.3, 20, 0.95, 0.05), (1.0, 0, 1.0, 0.1),
    (0.5, 3, 0.5, 0.2), (2.0, 1000, 0.99, 0.0),
])
def test_filter_chain_matches_transformers_on_random_logits(temperature, top_k, top_p, min_p):
    g = torch.Generator().manual_seed(top_k + int(100 * top_p))
    logits = torch.randn(8, 2000, generator=g) * 3
    ours = apply_filters(build_filters(temperature, top_k, top_p, min_p), logits)
    theirs = logits
    for w in hf_chain(temperature, top_k, top_p, min_p):
        theirs = w(None, theirs)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.equal(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)])


def test_build_filters_leaves_neutral_values_out_in_transformers_order():
    fs = build_filters(0.8, 10, 0.9, 0.05)
    assert [type(f).__name__ for f in fs] == ["Temperature", "TopK", "TopP", "MinP"]
    assert build_filters(1.0, 0, 1.0, 0.0) == []


@pytest.mark.parametrize("make,bad", [(TopK, 0), (TopP, 1.5), (MinP, -0.1), (Temperature, 0.0)])
def test_filters_reject_bad_values_naming_the_parameter(make, bad):
    with pytest.raises(ValueError, match=r"`(top_k|top_p|min_p|temperature)`"):
        make(bad)


def test_min_p_applies_after_temperature():
    # at T=1: p = [0.6, 0.3, 0.1]; min_p 0.25 keeps p >= 0.15: two tokens.
    # at T=0.25, p is proportional to [0.6^4, 0.3^4, 0.1^4] = [0.94, 0.06, 0.0007]: threshold 0.235
    # keeps only the first.
    logits = torch.tensor([[math.log(0.6), math.log(0.3), math.log(0.1)]])
    assert torch.isfinite(apply_filters(build_filters(1.0, 0, 1.0, 0.25), logits)).sum() == 2
    assert torch.isfinite(apply_filters(build_filters(0.25, 0, 1.0, 0.25), logits)).sum() == 1


def test_top_p_looks_at_the_likeliest_tokens_first_and_sorts_a_row_only_when_its_nucleus_is_wider():
    """The nucleus of a peaked row lies inside the first ``guess`` tokens; a flat row's does not
    (then the whole row is sorted, as transformers does). Either way transformers' tokens stay."""
    g = torch.Generator().manual_seed(5)
    peaked = torch.randn(3, 5000, generator=g) * 4
    flat = torch.randn(3, 5000, generator=g) * 0.1
    for logits in (peaked, flat, torch.cat([peaked, flat])):
        ours = TopP(0.9, guess=256)(logits)
        theirs = TopPLogitsWarper(0.9)(None, logits)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        assert torch.equal(ours[torch.isfinite(ours)], logits[torch.isfinite(theirs)])
    assert int(torch.isfinite(TopP(0.9, guess=256)(peaked)).sum(-1).max()) < 256 < int(
        torch.isfinite(TopP(0.9, guess=256)(flat)).sum(-1).min())  # both paths were taken
    half = peaked.bfloat16()
    assert TopP(0.9, guess=256)(half).dtype == torch.bfloat16  # the logits' own dtype comes back
