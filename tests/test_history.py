"""Run history on a real SQLite file: save, filter, reload after reopening, delete, migrate."""

import math
import sqlite3

import pytest

from app.history import MIGRATIONS, SCHEMA_VERSION, History, HistoryError, move_aside
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
        db.execute("INSERT INTO runs(id, created, prompt, model, methods, settings) "
                   "VALUES (1, 'x', 'p', 'm', 'esamp', '{}')")
        db.execute("INSERT INTO traces(run_id, position, method, trace) VALUES (1, 0, 'esamp', ?)",
                   (trace().to_json(),))
    h = History(path)
    assert h.version == SCHEMA_VERSION == 2
    traces, ppl = h.load(1)
    assert traces == [trace()] and ppl == [[]]


def test_a_newer_schema_is_refused_rather_than_damaged(tmp_path):
    path = tmp_path / "new.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(HistoryError, match="newer than this app"):
        History(path)


def test_a_damaged_file_is_named_and_moved_aside_never_deleted(tmp_path):
    path = tmp_path / "h.sqlite3"
    path.write_bytes(b"this is not a database, " * 200)  # a partial copy, a disk error
    with pytest.raises(HistoryError, match=f"{path.name}.*(not a database|damaged)"):
        History(path)
    kept = move_aside(path)
    assert kept.read_bytes().startswith(b"this is not a database") and not path.exists()
    h = History(path)  # a fresh one in its place
    assert h.list() == [] and h.save([trace()]) == 1


def test_damage_after_opening_is_a_history_error_too(tmp_path):
    path = tmp_path / "h.sqlite3"
    h = History(path)
    h.save([trace()])
    for side in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        side.unlink(missing_ok=True)
    path.write_bytes(b"\0" * 100 + b"garbage" * 1000)
    with pytest.raises(HistoryError, match="cannot be used"):
        h.list()
    with pytest.raises(HistoryError):
        h.save([trace()])


def test_keep_deletes_the_oldest_runs_beyond_the_limit(tmp_path):
    h = History(tmp_path / "h.sqlite3", keep=2)
    ids = [h.save([trace(created=f"2026-11-2{i}T10:00:00+00:00")]) for i in range(1, 5)]
    assert [r.id for r in h.list()] == ids[:1:-1]


WRITER = """
import os, sys
from app.history import History
from core.trace import RunTrace
t = RunTrace.load(sys.argv[2])
for acks in sys.stdin:  # a writer for each line: a child forked from here (imported once), killed by the test
    pid = os.fork()
    if pid == 0:
        h, out = History(sys.argv[1]), open(acks.strip(), "w")
        print(os.getpid(), flush=True)
        while True:
            out.write(f"{h.save([t, t, t])}\\n")  # after the commit: a run this process saw saved
            out.flush()
    os.waitpid(pid, 0)
"""


def test_a_process_killed_mid_save_loses_at_most_the_run_in_flight(tmp_path):
    """SIGKILL a real process that saves runs of three large traces back to back, at random moments,
    many times: the database stays readable, every earlier run is whole, the one in flight whole or absent."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    big = trace()
    big = RunTrace(**{**big.__dict__, "samples": big.samples * 1000})  # ~250 kB of JSON a trace
    big.save(tmp_path / "big.json")
    path, rng = tmp_path / "h.sqlite3", random.Random(0)
    before = 0
    writers = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(tmp_path / "big.json")],
                               cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    for i in range(12):
        acks = tmp_path / f"acks{i}"
        writers.stdin.write(f"{acks}\n")
        writers.stdin.flush()
        pid = int(writers.stdout.readline())
        time.sleep(rng.uniform(0.2, 1.5))  # a save takes ~0.2 s here, most of it encoding JSON
        os.kill(pid, signal.SIGKILL)
        while _alive(pid) and writers.poll() is None:  # gone: it writes nothing more
            time.sleep(0.01)
        acknowledged = len(acks.read_text().split())  # runs the writer saw committed (it made acks first)
        h = History(path)
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            counts = db.execute("SELECT run_id, COUNT(*) FROM traces GROUP BY run_id").fetchall()
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        assert all(n == 3 for _, n in counts) and len(counts) == runs  # no half-written run
        assert before + acknowledged <= runs <= before + acknowledged + 1  # nothing acknowledged was lost
        before = runs
        assert all(len(h.load(r.id)[0]) == 3 for r in h.list(limit=2))  # the newest ones read back whole
    writers.stdin.close()
    writers.wait(60)
    assert runs >= 12  # it did save between the kills


def _alive(pid: int) -> bool:
    """Whether ``pid`` (a writer's forked child) is not yet reaped by the process that forked it."""
    import os

    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
