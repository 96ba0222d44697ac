"""Shared fixtures: the embedded model is loaded once per test session."""

import os

import pytest

# One OpenMP thread in this process and in every app, server and benchmark it starts (they inherit the
# environment; vLLM's CPU workers set their own). The suite runs several torch processes at once on
# two cores, and OpenMP's waiting threads spin: two processes of two threads each generated 6x slower
# than one alone, two of one thread each as fast as alone, and alone one thread is as fast as two
# (decoding is memory-bound here). `python -m bench.threads`; docs/development.md ("one thread a process").
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS: torch reads it when it starts its thread pool)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The files whose tests start processes of their own (servers, the app, chromium, vLLM engines, the
# benchmarks' runs): marked ``slow``, so that ``./run test -m "not slow"`` runs the fast core of the
# suite while changing code. ``./run test`` (and CI) runs everything.
SLOW_FILES = {"test_browser.py", "test_vllm_server.py", "test_vllm.py", "test_bench.py"}


def pytest_configure(config):
    """One in-process vLLM engine per (model, dtype) for the whole session: the test files and the
    benchmarks' quick runs called in this process share it instead of starting their own (a start is
    20-60 s on 2 cores). An engine in vLLM's own process, or with engine options, starts as asked."""
    import core.backends as backends

    real_get, engines = backends.get_backend, {}

    class Shared:
        def __init__(self, backend):
            self._backend = backend

        def __getattr__(self, name):
            return getattr(self._backend, name)

        def load(self, name, *, dtype=None, placement=None, **options):
            from core.backends.hardware import default_dtype
            from core.backends.vllm.model import DEFAULT_PLACEMENT, PLACEMENT_ENV

            where = placement or os.environ.get(PLACEMENT_ENV) or DEFAULT_PLACEMENT
            if where != "inline" or any(v not in (None, False) for v in options.values()):
                return self._backend.load(name, dtype=dtype, placement=placement, **options)
            key = (name, str(dtype or default_dtype(torch.device("cpu"))).removeprefix("torch."))
            if key not in engines:
                # half a GiB of KV cache (11k tokens of the embedded model in float32) instead of 2: the
                # session's engines stay loaded beside the servers and apps that tests/ahead.py starts
                engines[key] = self._backend.load(name, dtype=dtype, placement="inline", kv_cache_gib=0.5)
                engines[key].close = lambda: None  # a caller's close (a benchmark's) leaves it to the others
            return engines[key]

    def get_backend(name):
        backend = real_get(name)
        return Shared(backend) if name == "vllm" else backend

    backends.get_backend = get_backend


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


def pytest_runtest_logstart(nodeid, location):
    from ahead import AHEAD

    AHEAD.reached(nodeid)


@pytest.fixture(scope="session", autouse=True)
def _started_ahead(request, tmp_path_factory):
    """The servers and apps the selected tests use, each started one after another while the slow
    file before its own runs (tests/ahead.py); what nobody took is stopped at the end. Not on an xdist
    worker: it does not know which files it will be dealt, and the other worker keeps the second core busy."""
    from ahead import AHEAD, used_by

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        AHEAD.schedule(used_by(request.session.items), tmp_path_factory)
    yield
    AHEAD.close()


@pytest.fixture(scope="session")
def lm():
    """The embedded SmolLM2-135M-Instruct in this machine's default dtype: bfloat16 on CPUs with
    native bfloat16, float32 on the others, or what ``ESAMP_DTYPE`` forces. The suite passes either way."""
    from core import load_model

    return load_model()


def _pinned(lm, dtype):
    import torch

    from core import load_model

    return lm if lm.dtype == getattr(torch, dtype) else load_model(dtype=dtype)


@pytest.fixture(scope="session")
def lm32(lm):
    """The embedded model in float32, for tests of float32 numerics (exact agreement of two computations)."""
    return _pinned(lm, "float32")


@pytest.fixture(scope="session")
def lm16(lm):
    """The embedded model in bfloat16, on every machine (emulated, and slower, where the CPU lacks it)."""
    return _pinned(lm, "bfloat16")


@pytest.fixture(scope="session")
def tokenizer(lm):
    return lm.tokenizer


@pytest.fixture(scope="session")
def recorded_and_scored():
    """compare(trace, lm) -> (recorded, scored, corpus): the perplexities a trace recorded while
    generating and those of scoring its texts again with the transformers model ``lm`` (give it
    the trace's dtype), for the samples whose text tokenizes back to their own tokens (only those
    are the same sequence); corpus: recorded over scored perplexity of those samples as one text
    (exp of the mean log-prob difference per token)."""
    import math

    from core.scoring import perplexities, recorded_perplexities

    def compare(trace, lm):
        same = [i for i, s in enumerate(trace.samples) if s.tokens and
                lm.tokenizer(s.text, add_special_tokens=False)["input_ids"] == [t.id for t in s.tokens]]
        assert same, "no sample tokenizes back to its own tokens"
        recorded = recorded_perplexities(trace)
        scored = perplexities(lm, [trace.prompts[trace.samples[i].prompt_index].text for i in same],
                              [trace.samples[i].text for i in same])
        recorded = [recorded[i] for i in same]
        lengths = [len(trace.samples[i].tokens) for i in same]
        corpus = math.exp(sum(k * math.log(r / s) for r, s, k in zip(recorded, scored, lengths)) / sum(lengths))
        return recorded, scored, corpus

    return compare



@pytest.fixture(scope="session")
def check_warm_up():
    """check(lm, held): on ``lm``, ESamp with a warm-up of 4 steps samples the first ``held`` tokens of
    every answer unguided, with plain sampling's tokens under the same seed, and is guided after them; a
    novelty threshold no distiller reaches keeps the whole run plain, and one every distiller is below
    from the start changes nothing against no warm-up."""
    from core import EsampConfig, RunConfig, SamplingConfig, generate

    def check(lm, held):
        prompts = ["Name a colour.", "Write one sentence about the sea and the sky at night."]
        sampling = SamplingConfig(n=2, max_new_tokens=10, seed=3, ignore_eos=True)

        def ids(**esamp):
            method = "esamp" if esamp.get("beta", 0) > 0 else "plain"
            trace = generate(lm, prompts, RunConfig(method=method, sampling=sampling, esamp=EsampConfig(**esamp)))
            return trace, [[t.id for t in s.tokens] for s in trace.samples]

        plain, plain_ids = ids()
        warm, warm_ids = ids(beta=1.0, warmup_steps=4)
        assert [w[:held] for w in warm_ids] == [p[:held] for p in plain_ids]
        assert all(t.logp_new == t.logp_ref for s in warm.samples for t in s.tokens[:held])
        assert any(abs(t.logp_new - t.logp_ref) > 1e-4 for s in warm.samples for t in s.tokens[held:])
        assert ids(beta=1.0, warmup_novelty=1e-6)[1] == plain_ids  # never below it: never guided
        assert ids(beta=1.0, warmup_novelty=10.0)[1] == ids(beta=1.0)[1]  # below it from the first step

    return check


@pytest.fixture(scope="session")
def check_between_words():
    """check(lm): on ``lm``, ESamp that pushes between words (``EsampConfig.between_words``) leaves every
    piece that continues a word where the model had it, chosen or not, and moves the word starts."""
    from core import EsampConfig, RunConfig, SamplingConfig, generate
    from core.esamp.words import word_starts

    def check(lm):
        sampling = SamplingConfig(n=4, max_new_tokens=12, seed=2, ignore_eos=True, top_k=0, top_p=0.9)
        config = RunConfig(method="esamp", sampling=sampling, esamp=EsampConfig(beta=1.5, between_words=True))
        trace = generate(lm, ["Invent a name for a new colour and describe it."], config)
        starts = word_starts(lm.tokenizer, len(lm.tokenizer))
        chosen = [t for s in trace.samples for t in s.tokens[1:]]
        shown = [c for t in chosen for c in t.top]
        assert any(not starts[t.id] for t in chosen) and any(not starts[c.id] for c in shown)
        assert all(abs(t.logp_new - t.logp_ref) < 1e-4 for t in chosen if not starts[t.id])
        assert all(abs(c.p_new - c.p_ref) < 1e-5 for c in shown if not starts[c.id])
        assert any(abs(t.logp_new - t.logp_ref) > 1e-3 for t in chosen if starts[t.id])
        assert all(-1e-6 <= t.kl <= config.esamp.max_kl + 1e-5 for t in chosen)  # the bound holds (to rounding)

    return check


@pytest.fixture(scope="session")
def check_forks():
    """check(lm, held): on a real ladder with a 3-step warm-up, answers at β = 1.5 part from plain
    sampling's, none within the first ``held`` tokens, and every fork falls on a token whose
    distribution fusion moved: the same random draw met two distributions (viz.fork)."""
    from core import EsampConfig, RunConfig, SamplingConfig, beta_ladder, generate_runs
    from viz.fork import forks

    def check(lm, held):
        config = RunConfig(sampling=SamplingConfig(n=4, max_new_tokens=16, seed=2, top_k=0, top_p=0.9,
                                                   ignore_eos=True), esamp=EsampConfig(warmup_steps=3))
        plain, esamp = generate_runs(lm, ["Invent a name for a new colour and describe it."],
                                     beta_ladder(config, [0, 1.5]))
        parted = [f for f in forks(plain, esamp) if f.position is not None]
        assert parted, "no answer parted from plain sampling's at β = 1.5"
        for f in parted:
            assert f.position >= held and f.esamp is not None and f.plain is not None
            assert abs(f.esamp.logp_new - f.esamp.logp_ref) > 1e-6 or f.esamp.entropy_new != f.esamp.entropy_ref

    return check


@pytest.fixture(scope="session")
def check_continuation():
    """check(lm): a run continued from the first 4 tokens of an answer takes them as given: its first
    token is drawn from the distribution the answer's fifth was (the same top candidates, the same
    probabilities); the same seed continues the same way twice; a token id outside the vocabulary is
    refused."""
    from dataclasses import replace

    from core import EsampConfig, RunConfig, SamplingConfig, generate

    def check(lm):
        prompt = ["Write one sentence about the sea and the sky at night."]
        plain = RunConfig(method="plain", sampling=SamplingConfig(n=1, max_new_tokens=8, seed=2, ignore_eos=True))
        whole = generate(lm, prompt, plain)
        given = tuple(t.id for t in whole.samples[0].tokens[:4])
        cont = generate(lm, prompt, replace(plain, prefix_ids=given))
        assert cont.config.prefix_ids == given and len(cont.samples[0].tokens) == 8
        assert cont.prompts[0].n_prompt_tokens == whole.prompts[0].n_prompt_tokens + 4
        # the model saw the prompt and the 4 tokens: the same distribution as the answer's fifth token.
        # Its distribution, not its draw: with bfloat16 weights the prefill of 4 tokens and their decoding
        # one by one round differently, and a near tie (two tokens 0.03 apart) may then be drawn either way.
        fifth, first = ({c.id: c.p_ref for c in t.top} for t in (whole.samples[0].tokens[4], cont.samples[0].tokens[0]))
        for a, b in ((fifth, first), (first, fifth)):
            top = max(a, key=a.get)
            assert top in b and abs(a[top] - b[top]) < 0.05, (fifth, first)
        esamp = RunConfig(sampling=SamplingConfig(n=3, max_new_tokens=6, seed=5, top_k=0, top_p=0.9),
                          esamp=EsampConfig(beta=1.0), prefix_ids=given)
        runs = [generate(lm, prompt, esamp) for _ in range(2)]
        assert [[t.id for t in s.tokens] for s in runs[0].samples] == [[t.id for t in s.tokens]
                                                                        for s in runs[1].samples]
        with pytest.raises(ValueError, match="not in the model's vocabulary"):
            generate(lm, prompt, replace(plain, prefix_ids=(len(lm.tokenizer) + 5,)))

    return check


@pytest.fixture(scope="session")
def check_pretrained_start():
    """check(lm): runs whose distillers start from the model's pretrained distiller predict better than
    nothing from their first token (relative novelty below 1), where fresh ones predict worse, and better
    than fresh ones over the whole answer; they still train every step; at β = 0 the tokens are plain
    sampling's."""
    from core import EsampConfig, RunConfig, SamplingConfig, generate

    def check(lm):
        sampling = SamplingConfig(n=8, max_new_tokens=24, seed=5, top_k=0, top_p=0.9, ignore_eos=True)
        prompt = ["Describe a city in the year 3000."]
        fresh, warm = (generate(lm, prompt, RunConfig(method="plain", sampling=sampling, esamp=EsampConfig(start=s)))
                       for s in ("fresh", "pretrained"))
        assert [[t.id for t in s.tokens] for s in warm.samples] == [[t.id for t in s.tokens] for s in fresh.samples]
        assert warm.prompts[0].rel_novelty[0] < 1.0 < fresh.prompts[0].rel_novelty[0]
        assert warm.config.esamp.start == "pretrained"
        mean = [sum(r.prompts[0].rel_novelty) / len(r.prompts[0].rel_novelty) for r in (warm, fresh)]
        assert mean[0] < mean[1], mean
        assert len(warm.prompts[0].loss) >= sampling.max_new_tokens  # an update at every step (vLLM: one more)

    return check


@pytest.fixture(scope="session")
def check_live_answers():
    """check(lm): a run's progress carries each answer so far (``Progress.answers``): before the end they
    are shorter than the finished answers and begin them, and the last report is the whole texts."""
    from core import RunConfig, SamplingConfig, beta_ladder, generate_runs

    def check(lm):
        seen = []
        configs = beta_ladder(RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=12, seed=4, ignore_eos=True)),
                              [0, 1.0])
        traces = generate_runs(lm, ["Name a colour."], configs, progress=seen.append)
        for i, trace in enumerate(traces):
            texts = [s.text for s in trace.samples]
            mine = [p for p in seen if p.run == i and p.answers]
            early = next(p for p in mine if p.tokens < p.max_tokens)
            assert all(texts[r].startswith("".join(a)) and len("".join(a)) < len(texts[r])
                       for r, a in enumerate(early.answers)), (early.answers, texts)
            assert ["".join(a) for a in mine[-1].answers] == texts

    return check
