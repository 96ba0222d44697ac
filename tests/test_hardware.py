"""The model dtype is chosen from what the machine runs fast, and every report says which."""

import os
import subprocess
import sys

import pytest
import torch

from core import openmp
from core.backends import hardware


@pytest.mark.parametrize("flags, expected", [({"avx2", "fma"}, torch.float32),
                                             ({"avx512f", "avx512_bf16"}, torch.bfloat16),
                                             ({"amx_bf16", "amx_tile"}, torch.bfloat16)])
def test_cpus_with_native_bfloat16_get_bfloat16_and_the_others_float32(monkeypatch, flags, expected):
    monkeypatch.delenv(hardware.DTYPE_ENV, raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert hardware.default_dtype(torch.device("cpu")) == expected
    assert hardware.default_dtype(torch.device("cuda")) == torch.bfloat16


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_esamp_dtype_forces_the_default_on_every_cpu(monkeypatch, forced):
    monkeypatch.setenv(hardware.DTYPE_ENV, forced)
    for flags in ({"avx2"}, {"avx512_bf16"}):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        assert hardware.default_dtype(torch.device("cpu")) == getattr(torch, forced)
    assert hardware.resolve_dtype(None, torch.device("cpu")) == getattr(torch, forced)
    assert hardware.resolve_dtype("float32", torch.device("cpu")) == torch.float32  # an explicit dtype wins


def test_a_bad_esamp_dtype_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(hardware.DTYPE_ENV, "float8")
    with pytest.raises(ValueError, match="ESAMP_DTYPE='float8' is not a dtype"):
        hardware.default_dtype(torch.device("cpu"))


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


def test_a_bare_cpu_name_gets_its_family_and_model_a_numbered_one_stays_as_it_is():
    """Two EPYCs a virtual machine names alike ran the model at speeds twofold apart: reports tell them apart."""
    epyc = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\n" \
           "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
    assert hardware.name_in_cpuinfo(epyc) == "AMD EPYC (family 26, model 2)"  # the first processor's
    xeon = "processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
    assert hardware.name_in_cpuinfo(xeon) == "Intel(R) Xeon(R) Platinum 8488C"
    assert hardware.name_in_cpuinfo("flags\t: fpu\n") is None  # no name: the platform's guess instead
    assert hardware.cpu_name()  # this machine's, whatever it is


_REUSE = """
import resource, sys, torch
from core.backends.hardware import keep_freed_memory
kept = keep_freed_memory()
faults = []
for step in range(5):  # a step's tensor of a few MB, freed, and a little larger the next step (a KV cache)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones((4 << 20) + step * 4096, dtype=torch.uint8)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_steps_tensors_unless_turned_off():
    def run(env: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _REUSE], env={**os.environ, hardware.MALLOC_ENV: env},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    kept, kept_faults = run("1")
    default, default_faults = run("0")
    assert (kept, default) == ("True", "False")
    assert kept_faults < 16 < default_faults  # 4 MiB is 1024 fresh pages every time under glibc's own rule


_TEAM = """
import os, time, torch
from core import openmp
torch.set_num_threads(2)
tasks = lambda: len(os.listdir("/proc/self/task"))
before = tasks()
torch.ones(1 << 22).mul_(2)  # a parallel op: this thread's OpenMP team starts its helper
with_team = tasks()
released = openmp.release_team()
deadline = time.monotonic() + 10
while released and tasks() >= with_team and time.monotonic() < deadline:
    time.sleep(0.01)  # the helper leaves on its own
print(before, with_team, released, tasks())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads counted in /proc")
def test_a_thread_that_hands_work_on_lets_its_openmp_threads_go_unless_turned_off():
    def run(env: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", _TEAM], env={**os.environ, openmp.ENV: env},
                              capture_output=True, text=True, check=True).stdout.split()

    before, with_team, released, after = run("1")
    assert int(with_team) > int(before) and released == "True" and int(after) < int(with_team)
    before, with_team, released, after = run("0")
    assert int(with_team) > int(before) and released == "False" and after == with_team


_UPDATE = """
import os, time, torch
from core.esamp.steerer import Background
tasks = lambda: len(os.listdir("/proc/self/task"))
before = tasks()
background = Background(torch.device("cpu"))

def update():
    torch.set_num_threads(2)
    torch.ones(1 << 22).mul_(2)  # a parallel op in the worker thread: its OpenMP team starts a helper
    return tasks()

background.run(update)
during = background.wait()
deadline = time.monotonic() + (10 if os.environ["ESAMP_RELEASE_OMP"] == "1" else 0.5)
while tasks() >= during and time.monotonic() < deadline:
    time.sleep(0.01)  # the helper leaves on its own
print(before, during, tasks())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads counted in /proc")
def test_the_updates_worker_thread_lets_its_openmp_threads_go_after_each_update_unless_turned_off():
    """A distiller update off the critical path on a CPU (``overlap``) runs in a worker thread; a team it
    kept slowed everything the process computed from then on (core.openmp)."""
    def run(env: str) -> list[int]:
        return [int(x) for x in subprocess.run([sys.executable, "-c", _UPDATE], env={**os.environ, openmp.ENV: env},
                                               capture_output=True, text=True, check=True).stdout.split()]

    before, during, after = run("1")
    assert during > after > before  # the worker thread stays, its helper went
    before, during, after = run("0")
    assert during > before + 1 and after == during
