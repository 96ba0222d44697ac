"""Bad settings fail at construction with the parameter, its value and the valid range."""

import math

import pytest

from core import EsampConfig, FireConfig, RunConfig, SamplingConfig, beta_ladder
from core.config import ladder_key


@pytest.mark.parametrize("field,value", [
    ("n", 0), ("n", 513), ("n", 2.5), ("max_new_tokens", 0), ("max_new_tokens", 10**6),
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.nan), ("top_k", -1),
    ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 1.1), ("seed", -1),
])
def test_bad_sampling_values_name_the_parameter_and_value(field, value):
    with pytest.raises(ValueError) as err:
        SamplingConfig(**{field: value})
    assert f"`{field}`" in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, 11.0])
def test_bad_beta_names_the_range(value):
    with pytest.raises(ValueError, match=r"`beta` must be between 0.0 and 10.0"):
        EsampConfig(beta=value)


def test_bad_method_scope_and_fire_settings():
    with pytest.raises(ValueError, match="`method`"):
        RunConfig(method="beam")
    with pytest.raises(ValueError, match="`scope`"):
        EsampConfig(scope="global")
    with pytest.raises(ValueError, match="`fire.top_k`"):
        FireConfig(top_k=0)
    with pytest.raises(ValueError, match="`warmup_steps` must be an integer from 0 to 8192, but is -1"):
        EsampConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match="`warmup_novelty` must be between 0.0 and 10.0, but is nan"):
        EsampConfig(warmup_novelty=math.nan)
    with pytest.raises(ValueError, match="`prefix_ids` must be at most 8192 token ids"):
        RunConfig(prefix_ids=(3, -1))
    assert RunConfig(prefix_ids=[3, 4]).prefix_ids == (3, 4)  # a JSON list becomes the tuple


def test_config_round_trips_through_a_dict():
    cfg = RunConfig(method="fire", sampling=SamplingConfig(n=3, top_p=0.9), esamp=EsampConfig(beta=0.5))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_beta_applies_only_to_esamp():
    assert RunConfig(method="esamp").beta == 0.25
    assert RunConfig(method="plain").beta == 0.0


def test_min_p_means_the_same_setting_in_the_app_and_the_benchmarks():
    """One definition of the compared methods (core.methods): min-p 0.1 turns top-k off everywhere."""
    from bench import quality
    from core import SamplingConfig, methods

    sampling = SamplingConfig(n=4, max_new_tokens=8)
    bench_min_p = quality.methods(sampling)["min-p 0.1"].sampling
    app_min_p = methods.compared(sampling, betas=(0.25,), temperatures=(1.0,))["min-p 0.1"].sampling
    assert bench_min_p == app_min_p and (bench_min_p.top_k, bench_min_p.min_p) == (0, 0.1)


def test_a_ladder_can_scale_its_bound_with_beta_so_that_its_rungs_differ():
    from core import EsampConfig, RunConfig, beta_ladder

    config = RunConfig(esamp=EsampConfig(max_kl=0.3))
    scaled = beta_ladder(config, [0, 0.5, 1.5], scale_bound=True)
    assert [c.esamp.max_kl for c in scaled] == [0.0, 0.1, 0.3] and [c.beta for c in scaled] == [0.0, 0.5, 1.5]
    assert [c.esamp.max_kl for c in beta_ladder(config, [0, 0.5, 1.5])] == [0.3, 0.3, 0.3]  # one bound for all
    unbounded = beta_ladder(RunConfig(esamp=EsampConfig(max_kl=None)), [0, 1], scale_bound=True)
    assert [c.esamp.max_kl for c in unbounded] == [None, None]


def test_a_branch_pushes_as_a_rung_of_its_ladder_would_whichever_run_it_leaves():
    """A branch by hand at β gets the bound a rung at β of the same ladder gets, also from plain
    sampling's tree (whose own bound, scaled to β = 0, is 0: copying it would be a branch that never moves)."""
    from core.config import beta_ladder, continuation

    ladder = beta_ladder(RunConfig(esamp=EsampConfig(max_kl=0.2)), [0, 0.5, 1.0], scale_bound=True)
    for leaving in ladder:
        branch = continuation(leaving, ladder, beta=0.5,
                              prefix_ids=(1, 2), n=3, max_new_tokens=7, prime=True)
        assert (branch.method, branch.esamp.beta, branch.esamp.max_kl) == ("esamp", 0.5, ladder[1].esamp.max_kl)
        assert (branch.prefix_ids, branch.sampling.n, branch.sampling.max_new_tokens, branch.esamp.prime) == \
            ((1, 2), 3, 7, True)
    assert continuation(ladder[0], ladder, beta=2.0, prefix_ids=(1,), n=1, max_new_tokens=1).esamp.max_kl == 0.4
    assert continuation(ladder[2], ladder, beta=0, prefix_ids=(1,), n=1, max_new_tokens=1).method == "plain"
    unbounded = beta_ladder(RunConfig(esamp=EsampConfig(max_kl=None)), [0, 1.0], scale_bound=True)
    assert continuation(unbounded[0], unbounded, beta=1, prefix_ids=(1,), n=1, max_new_tokens=1).esamp.max_kl is None
    plain_only = beta_ladder(RunConfig(esamp=EsampConfig(max_kl=0.2)), [0], scale_bound=True)
    assert continuation(plain_only[0], plain_only, beta=1, prefix_ids=(1,), n=1, max_new_tokens=1).esamp.max_kl == 0.2


def test_a_ladders_rungs_share_a_key_and_what_steps_alone_has_none():
    """``ladder_key``: what runs share to be stepped as one with a β per row (vLLM's backend does)."""
    base = RunConfig(sampling=SamplingConfig(n=4, seed=3), esamp=EsampConfig(max_kl=0.5))
    rungs = beta_ladder(base, (0.0, 0.25, 1.0), scale_bound=True)
    assert len({ladder_key(c) for c in rungs}) == 1 and ladder_key(rungs[0]) is not None
    assert ladder_key(RunConfig(method="plain", esamp=EsampConfig(shadow=False))) != ladder_key(RunConfig(
        method="plain"))  # no distiller at all: not with the runs that have one
    for apart in (RunConfig(sampling=SamplingConfig(n=4, seed=4)), RunConfig(sampling=SamplingConfig(n=2, seed=3)),
                  RunConfig(sampling=SamplingConfig(n=4, seed=3), esamp=EsampConfig(warmup_steps=2))):
        assert ladder_key(apart) != ladder_key(rungs[1])
    assert ladder_key(RunConfig(method="fire")) is None
    assert ladder_key(RunConfig(esamp=EsampConfig(noise=True))) is None
