"""The model dtype is chosen from what the machine runs fast, and every report says which."""

import pytest
import torch

from core.backends import hardware


@pytest.mark.parametrize("flags, expected", [({"avx2", "fma"}, torch.float32), ({"avx512f", "avx512_bf16"}, torch.bfloat16),
                                             ({"amx_bf16", "amx_tile"}, torch.bfloat16)])
def test_cpus_with_native_bfloat16_get_bfloat16_and_the_others_float32(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert hardware.default_dtype(torch.device("cpu")) == expected
    assert hardware.default_dtype(torch.device("cuda")) == torch.bfloat16


def test_the_loaded_model_uses_this_machines_choice_and_the_summary_names_it(lm):
    from core import RunConfig, SamplingConfig, generate
    from core.cli import summary

    assert lm.dtype == hardware.default_dtype(torch.device("cpu"))
    trace = generate(lm, ["Hi"], RunConfig(sampling=SamplingConfig(n=1, max_new_tokens=2)))
    assert trace.dtype == str(lm.dtype).removeprefix("torch.")
    assert f"cpu · {trace.dtype}" in summary(trace)


def test_a_report_says_on_which_cpu_it_was_measured():
    info = hardware.describe()
    assert info["cpu"] and info["cpus"] >= 1 and isinstance(info["cpu_bf16"], list)
