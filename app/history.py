"""Run history in SQLite: every finished run (a comparison of methods) with its traces.

Location: ``$ESAMP_HISTORY_DB``, else ``$XDG_DATA_HOME/esamp-explorer/history.sqlite3``
(``~/.local/share/...``). Each run is written in one transaction, so a crash loses at most
the run in flight. The schema is versioned with ``PRAGMA user_version`` and migrates forward.
A file that is not a readable database raises HistoryError; ``move_aside`` keeps it for
inspection and lets a fresh history start in its place.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

from core.config import RunConfig
from core.trace import RunTrace

# Migration i takes the schema from version i to i + 1. Never edit one that has shipped.
MIGRATIONS = [
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        created TEXT NOT NULL,
        prompt TEXT NOT NULL,
        model TEXT NOT NULL,
        methods TEXT NOT NULL,          -- comma-separated, e.g. 'esamp,plain'
        settings TEXT NOT NULL          -- JSON of the first run's config
    );
    CREATE TABLE traces (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        method TEXT NOT NULL,
        trace TEXT NOT NULL             -- RunTrace JSON
    );
    CREATE INDEX traces_run ON traces(run_id);
    """,
    # v2: a title, and each trace's per-sample perplexities so a reopened run needs no model.
    """
    ALTER TABLE runs ADD COLUMN title TEXT NOT NULL DEFAULT '';
    ALTER TABLE traces ADD COLUMN perplexities TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX runs_created ON runs(created);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class HistoryError(RuntimeError):
    """The history database cannot be used; the message names the file and what to do."""


def default_path() -> Path:
    if os.environ.get("ESAMP_HISTORY_DB"):
        return Path(os.environ["ESAMP_HISTORY_DB"])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "esamp-explorer" / "history.sqlite3"


@dataclass
class RunRecord:
    id: int
    created: str
    prompt: str
    model: str
    methods: list[str]
    title: str


class History:
    """A small store over one SQLite file; safe to share between threads (one connection per call).
    ``keep``: the most runs kept; saving one more deletes the oldest (None: keep all)."""

    def __init__(self, path: str | Path | None = None, keep: int | None = None):
        self.path = Path(path) if path else default_path()
        self.keep = keep
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"Cannot create the folder of the run history {self.path}: {exc}.") from exc
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            self._migrate(db)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call; SQLite's errors become HistoryError naming the file."""
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as db:
                db.execute("PRAGMA foreign_keys=ON")
                yield db
        except sqlite3.DatabaseError as exc:
            hint = (" It is damaged or not a history database: move it aside (History page, or rename it) "
                    "and a fresh history starts." if not isinstance(exc, sqlite3.OperationalError) else "")
            raise HistoryError(f"The run history {self.path} cannot be used: {exc}.{hint}") from exc

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{self.path} has schema version {version}, newer than this app's "
                               f"{SCHEMA_VERSION}; upgrade ESamp Explorer or use another ESAMP_HISTORY_DB.")
        for v in range(version, SCHEMA_VERSION):
            with db:  # each migration commits on its own, with its version bump
                db.executescript("BEGIN;" + MIGRATIONS[v] + f"PRAGMA user_version={v + 1};COMMIT;")

    @property
    def version(self) -> int:
        with self._db() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def save(self, traces: Sequence[RunTrace], perplexities: Sequence[Sequence[float]] = (), title: str = "") -> int:
        """Store one run (its traces in order, with their per-sample perplexities if known) atomically;
        returns its id."""
        if not traces:
            raise ValueError("save() needs at least one trace.")
        first = traces[0]
        prompt = "\n".join(p.text for p in first.prompts)
        created = first.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._db() as db, db:
            cur = db.execute(
                "INSERT INTO runs(created, prompt, model, methods, settings, title) VALUES (?,?,?,?,?,?)",
                (created, prompt, first.model, ",".join(t.method for t in traces),
                 json.dumps(first.config.to_dict()), title))
            run_id = cur.lastrowid
            ppl = list(perplexities) + [[]] * (len(traces) - len(perplexities))
            db.executemany("INSERT INTO traces(run_id, position, method, trace, perplexities) VALUES (?,?,?,?,?)",
                           [(run_id, i, t.method, t.to_json(), json.dumps(_json_floats(p)))
                            for i, (t, p) in enumerate(zip(traces, ppl))])
            if self.keep is not None:
                db.execute("DELETE FROM runs WHERE id NOT IN (SELECT id FROM runs ORDER BY created DESC, id DESC "
                           "LIMIT ?)", (self.keep,))
        return run_id

    def list(self, text: str = "", model: str = "", method: str = "", since: str = "", until: str = "",
             limit: int = 200) -> list[RunRecord]:
        """Newest first, filtered by prompt text, model and method substrings and an ISO date range."""
        where, args = [], []
        for column, value in (("prompt", text), ("model", model), ("methods", method)):
            if value:
                where.append(f"{column} LIKE ? ESCAPE '\\'")
                args.append("%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if since:
            where.append("created >= ?")
            args.append(since)
        if until:
            where.append("created <= ?")
            args.append(until)
        sql = "SELECT id, created, prompt, model, methods, title FROM runs"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC, id DESC LIMIT ?"
        with self._db() as db:
            rows = db.execute(sql, (*args, limit)).fetchall()
        return [RunRecord(r[0], r[1], r[2], r[3], r[4].split(","), r[5]) for r in rows]

    def find(self, prompt: str, model: str, backend: str, configs: Sequence[RunConfig],
             look_at: int = 20) -> int | None:
        """The newest run of exactly these runs (configs, in order) on this prompt, model and backend, or None:
        what a reloaded page's URL describes. Looks at the newest ``look_at`` runs on the prompt."""
        for record in self.list(text=prompt, model=model, limit=look_at):
            if record.prompt != prompt or record.model != model or len(record.methods) != len(configs):
                continue
            try:
                traces, _ = self.load(record.id)
            except (KeyError, HistoryError):
                continue
            if [t.config for t in traces] == list(configs) and traces[0].backend == backend:
                return record.id
        return None

    def load(self, run_id: int) -> tuple[list[RunTrace], list[list[float]]]:
        """A run's traces and their per-sample perplexities (empty lists where unknown)."""
        with self._db() as db:
            rows = db.execute("SELECT trace, perplexities FROM traces WHERE run_id=? ORDER BY position",
                              (run_id,)).fetchall()
        if not rows:
            raise KeyError(f"No run with id {run_id} in {self.path}.")
        try:
            return [RunTrace.from_json(r[0]) for r in rows], [_floats(json.loads(r[1])) for r in rows]
        except ValueError as exc:
            raise HistoryError(f"Run {run_id} in {self.path} cannot be read: {exc}") from exc

    def delete(self, run_id: int) -> None:
        with self._db() as db, db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))


def move_aside(path: str | Path) -> Path:
    """Rename a damaged history file (and its WAL and shared-memory files) to ``NAME.damaged-STAMP``,
    never deleting it; the next History(path) starts a fresh one. Returns the new name."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


def _json_floats(values) -> list:
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def _floats(values) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]
