"""Token pieces, the trace's JSON round trip, and the command line end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import EsampConfig, FireConfig, RunConfig, RunTrace, SamplingConfig, beta_ladder, generate, temperature_ladder
from core.trace import TRACE_VERSION
from core.backends.record import token_pieces


@pytest.mark.parametrize("text", ["Café 🙂 naïve 東京タワー", "  leading spaces\n\nand\tnewlines  ", "🧑‍🚀🚀"])
def test_pieces_of_multibyte_text_concatenate_exactly(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)  # no half characters shown anywhere


def test_trace_round_trips_through_json(lm):
    trace = generate(lm, ["Say hi."], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=5)))
    again = RunTrace.from_json(trace.to_json())
    assert again == trace
    d = json.loads(trace.to_json())
    assert {"config", "samples", "prompts", "timings", "version"} <= d.keys()
    assert {"id", "text", "novelty", "logp_ref", "logp_new", "top"} <= d["samples"][0]["tokens"][0].keys()


def test_an_unknown_trace_version_is_refused():
    with pytest.raises(ValueError, match="version 99"):
        RunTrace.from_dict({"version": 99})


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def test_cli_generates_prints_a_summary_and_writes_the_trace(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name a fruit."}\n{"prompt": "Name a tree."}\n')
    out = tmp_path / "run.json"
    r = cli("generate", "--prompt-file", str(prompts), "-n", "2", "--max-new-tokens", "6", "--method", "esamp",
            "--beta", "0.3", "--top-p", "0.9", "--seed", "1", "--json", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stdout and "distiller loss" in r.stdout and "mean novelty" in r.stdout
    trace = RunTrace.load(out)
    assert len(trace.samples) == 4 and trace.config.esamp.beta == 0.3 and trace.config.sampling.top_p == 0.9
    assert trace.prompts[1].text == "Name a tree."


def test_cli_rejects_bad_values_before_loading_a_model():
    r = cli("generate", "hello", "-n", "0")
    assert r.returncode == 2 and "`n` must be an integer from 1 to 512, but is 0" in r.stderr
    r = cli("generate", "   ")
    assert r.returncode == 2 and "empty" in r.stderr


def test_cli_unknown_model_exits_with_a_clear_message(tmp_path):
    r = cli("generate", "hello", "--model", str(tmp_path / "missing"))
    assert r.returncode == 2 and "Cannot load model" in r.stderr


DATA = Path(__file__).parent / "data"


def test_older_traces_load_as_earlier_releases_wrote_them():
    """Version 1 traces without and with logp_base, and traces of versions 2 to 8 (tests/data: `python -m
    core generate "Name a fruit." -n 2 --max-new-tokens 4 --seed 1 --json` at commits d6aff60^, 8f0caa6,
    7fc860b, e59d25d, acb3de6, fefaf2f, 8f1b43b, 591cf48, 632ccac)."""
    v1_before = RunTrace.load(DATA / "trace-v1-no-logp-base.json")
    v1_after = RunTrace.load(DATA / "trace-v1-with-logp-base.json")
    v2 = RunTrace.load(DATA / "trace-v2.json")
    v3 = RunTrace.load(DATA / "trace-v3.json")
    v4 = RunTrace.load(DATA / "trace-v4.json")
    v5 = RunTrace.load(DATA / "trace-v5.json")
    v6 = RunTrace.load(DATA / "trace-v6.json")
    v7 = RunTrace.load(DATA / "trace-v7.json")
    v8 = RunTrace.load(DATA / "trace-v8.json")
    traces = (v1_before, v1_after, v2, v3, v4, v5, v6, v7, v8)
    assert {t.version for t in traces} == {TRACE_VERSION} and TRACE_VERSION == 9  # upgraded on the way in
    assert all(t.logp_base is None for s in v1_before.samples for t in s.tokens)
    assert all(t.logp_base < 0 for trace in (v1_after, v2, v3) for s in trace.samples for t in s.tokens)
    assert [s.text for s in v1_before.samples] == [s.text for s in v1_after.samples]  # same run, same seed
    assert all(p.loss and p.rel_novelty == [] for trace in (v1_before, v2) for p in trace.prompts)
    assert all(len(p.rel_novelty) == 4 for p in v3.prompts)
    assert all(t.config.esamp.warmup_steps == 0 and t.config.esamp.warmup_novelty == 0.0 for t in traces)
    assert all(t.config.prefix_ids == () and not t.config.esamp.prime for t in traces)
    assert all(t.config.esamp.max_kl is None and all(tok.kl is None for s in t.samples for tok in s.tokens)
               for t in traces[:-3])  # no bound then, and the push per token not recorded
    assert v6.config.esamp.max_kl == 0.2 and all(tok.kl is not None for s in v6.samples for tok in s.tokens)
    assert not any(t.config.esamp.keep_entropy for t in traces[:-2])  # the paper's push, not leveled
    assert v7.config.esamp.keep_entropy and v7.config.esamp.max_kl == 0.5
    assert not any(t.config.esamp.between_words for t in traces[:-1])  # every candidate pushed
    assert v8.config.esamp.between_words and v8.config.esamp.max_kl == 1.0
    assert all(t.config.esamp.distiller_dtype == "float32" for t in traces)  # float32 distillers then
    assert json.loads(v2.to_json())["version"] == 9
    assert json.loads(v3.to_json())["config"]["esamp"]["warmup_steps"] == 0
    assert json.loads(v4.to_json())["config"]["prefix_ids"] == []
    assert json.loads(v5.to_json())["config"]["esamp"]["max_kl"] is None
    assert json.loads(v6.to_json())["config"]["esamp"]["keep_entropy"] is False
    assert json.loads(v7.to_json())["config"]["esamp"]["between_words"] is False
    assert json.loads(v8.to_json())["config"]["esamp"]["distiller_dtype"] == "float32"


def test_a_new_trace_records_logp_base_and_the_distillers_curves(lm):
    trace = generate(lm, ["Say hi."], RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=3, ignore_eos=True)))
    d = json.loads(trace.to_json())
    assert d["version"] == 9 and all(t["logp_base"] is not None for t in d["samples"][0]["tokens"])
    kls = [t.kl for s in trace.samples for t in s.tokens]
    assert kls[0] == 0.0 and all(k >= 0 for k in kls) and any(k > 0 for k in kls)  # the first is unguided
    prompt = trace.prompts[0]
    assert len(prompt.loss) == len(prompt.rel_novelty) == 3
    # the per-step mean is the mean over the prompt's rows of each token's relative novelty
    assert prompt.rel_novelty == pytest.approx([sum(s.tokens[t].rel_novelty for s in trace.samples) / 2
                                               for t in range(3)], rel=1e-5)


ROUND_TRIP = [RunConfig(), RunConfig(method="plain"), RunConfig(method="fire"),
              *beta_ladder(RunConfig(sampling=SamplingConfig(n=16, max_new_tokens=32)), [0, 0.25, 1.5]),
              *temperature_ladder(RunConfig(), [0.7, 1.3]),
              RunConfig(method="fire", fire=FireConfig(temperature=3.0, top_k=7), chat=False, trace="light"),
              RunConfig(sampling=SamplingConfig(top_k=0, min_p=0.1, top_p=0.9, seed=9, ignore_eos=True),
                        esamp=EsampConfig(beta=0.8, scope="shared", noise=True, distiller="residual",
                                          intermediate=384)),
              RunConfig(method="plain", esamp=EsampConfig(shadow=False)),
              RunConfig(esamp=EsampConfig(beta=1.0, warmup_steps=8, warmup_novelty=0.9)),
              RunConfig(prefix_ids=(12, 345, 6), esamp=EsampConfig(prime=True)),
              RunConfig(esamp=EsampConfig(beta=1.5, max_kl=0.25)),
              RunConfig(esamp=EsampConfig(beta=1.0, max_kl=None, keep_entropy=True))]


@pytest.mark.parametrize("config", ROUND_TRIP)
def test_the_command_the_app_shows_regenerates_the_same_config(config):
    """Every run setting the CLI has goes through one table: command_for's line parses back to the config."""
    import shlex

    from core.cli import build_parser, command_for, config_from_args

    line = command_for(config, "Name a <colour> 'now'", model="/m", backend="vllm")
    args = build_parser().parse_args(shlex.split(line)[3:])
    assert (args.prompt, args.model, args.backend) == ("Name a <colour> 'now'", "/m", "vllm")
    assert config_from_args(args) == config


@pytest.mark.parametrize("config", ROUND_TRIP)
def test_every_run_setting_reads_back_from_its_own_text(config):
    """core/options.py: a setting's text (a URL's value, a command line's word) reads back as the same
    value; links written before "none" (max_kl=0) still read as no bound."""
    from core.options import BY_FIELD, SETTINGS, config_of, get

    assert config_of({o.field: o.read(o.text(get(config, o.field))) for o in SETTINGS}) == config
    assert BY_FIELD["esamp.max_kl"].read("0") is None and BY_FIELD["esamp.max_kl"].read("none") is None
    assert BY_FIELD["chat"].read("1") is False and BY_FIELD["esamp.keep_entropy"].read("1") is True  # raw=1, level=1
    with pytest.raises(ValueError, match="not one of"):
        BY_FIELD["method"].read("greedy")
    with pytest.raises(ValueError, match="no run setting"):
        config_of({"esamp.bета": 1.0})


def test_a_command_shows_only_what_differs_from_the_defaults_besides_the_sampling():
    from core.cli import command_for

    line = command_for(RunConfig(), "hi")
    assert "--beta 0.25" in line and "--top-k 50" in line
    assert not any(flag in line for flag in ("--scope", "--fire", "--noise", "--raw", "--trace", "--no-shadow"))
    assert "--raw" in command_for(RunConfig(chat=False), "hi") and "--fire-top-k 20" in command_for(
        RunConfig(method="fire"), "hi")


def test_the_command_lines_help_names_each_settings_default_by_its_own_name():
    from core.cli import build_parser

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    text = " ".join(generate.format_help().split())
    defaults = RunConfig()
    assert "-n N, --n N samples per prompt (default: 4)" in text and "SAMPLING__" not in text
    assert f"--beta BETA exploration strength (esamp) (default: {defaults.esamp.beta:g})" in text
    assert f"(default: {defaults.esamp.max_kl:g})" in text and "(default: esamp)" in text
    assert "(default: ())" not in text and "(default: 64)" not in text  # no empty default; none said twice
