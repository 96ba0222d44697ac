"""Run history on a real SQLite file: save, filter, reload after reopening, delete, migrate."""

import math
import sqlite3

import pytest

from app.history import MIGRATIONS, SCHEMA_VERSION, History
from core.config import RunConfig, SamplingConfig
from core.trace import PromptTrace, RunTrace, Sample, Timings, Token


def trace(prompt="Describe a city.", method="esamp", created="2026-11-28T10:00:00+00:00", model="m"):
    tok = Token(id=1, text="Hi", logp_ref=-1.0, logp_new=-0.5, entropy_ref=1.0, entropy_new=1.2, novelty=3.0,
                rel_novelty=0.1)
    return RunTrace(config=RunConfig(method=method, sampling=SamplingConfig(n=1)), model=model,
                    backend="transformers", device="cpu", dtype="float32", prompts=[PromptTrace(prompt, 4, [2.0])],
                    samples=[Sample(0, 0, "Hi", "eos", [tok])], timings=Timings(1.0, 1, 1.0), created=created)


def test_a_saved_run_survives_reopening_the_database(tmp_path):
    path = tmp_path / "h.sqlite3"
    runs = [trace(), trace(method="plain")]
    run_id = History(path).save(runs, [[4.5], [math.nan]])
    again = History(path)  # a restart
    traces, ppl = again.load(run_id)
    assert traces == runs
    assert ppl[0] == [4.5] and math.isnan(ppl[1][0])
    assert again.list()[0].methods == ["esamp", "plain"]


def test_filters_by_prompt_model_method_and_date(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    a = h.save([trace("Cats 100% _fun_", created="2026-11-01T00:00:00+00:00")])
    b = h.save([trace("Dogs", method="plain", model="gpt2", created="2026-11-20T00:00:00+00:00")])
    assert [r.id for r in h.list()] == [b, a]  # newest first
    assert [r.id for r in h.list(text="cats")] == [a]
    assert [r.id for r in h.list(text="100%")] == [a] and h.list(text="0%_x") == []  # LIKE wildcards escaped
    assert [r.id for r in h.list(model="gpt")] == [b]
    assert [r.id for r in h.list(method="plain")] == [b]
    assert [r.id for r in h.list(since="2026-11-10")] == [b]
    assert [r.id for r in h.list(until="2026-11-10")] == [a]


def test_delete_removes_the_run_and_its_traces(tmp_path):
    h = History(tmp_path / "h.sqlite3")
    run_id = h.save([trace()])
    h.delete(run_id)
    assert h.list() == []
    with pytest.raises(KeyError):
        h.load(run_id)
    with sqlite3.connect(h.path) as db:
        assert db.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 0


def test_a_version_1_database_migrates_and_keeps_its_runs(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # what the first release wrote
        db.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
        db.execute("INSERT INTO runs(id, created, prompt, model, methods, settings) VALUES (1, 'x', 'p', 'm', 'esamp', '{}')")
        db.execute("INSERT INTO traces(run_id, position, method, trace) VALUES (1, 0, 'esamp', ?)", (trace().to_json(),))
    h = History(path)
    assert h.version == SCHEMA_VERSION == 2
    traces, ppl = h.load(1)
    assert traces == [trace()] and ppl == [[]]


def test_a_newer_schema_is_refused_rather_than_damaged(tmp_path):
    path = tmp_path / "new.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(RuntimeError, match="newer than this app"):
        History(path)
