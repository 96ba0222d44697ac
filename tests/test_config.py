"""Bad settings fail at construction with the parameter, its value and the valid range."""

import math

import pytest

from core import EsampConfig, FireConfig, RunConfig, SamplingConfig


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


def test_config_round_trips_through_a_dict():
    cfg = RunConfig(method="fire", sampling=SamplingConfig(n=3, top_p=0.9), esamp=EsampConfig(beta=0.5))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_beta_applies_only_to_esamp():
    assert RunConfig(method="esamp").beta == 0.25
    assert RunConfig(method="plain").beta == 0.0
