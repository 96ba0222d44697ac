"""Generation jobs that run in a background thread, so the page stays live: it shows progress,
can stop a run (keeping what was generated) and never loses a finished run.

A job only orchestrates calls into core (generate, perplexities) and viz (embeddings);
the model logic lives there. Streamlit is not imported here: the page polls the job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Sequence

from core import LanguageModel, Progress, RunConfig, RunTrace, generate_runs

# A job whose page stopped asking about it (its tab was closed) for this long stops, keeping what it
# made, so that it does not hold the model (or its share of the engine) for other sessions. Above a
# minute: browsers slow the timers of a hidden tab to one a minute.
ABANDON_AFTER_S = float(os.environ.get("ESAMP_ABANDON_AFTER_S", 150))

_running: dict[int, "Job"] = {}  # id(model) -> the job generating on it now
_started: dict[object, "Job"] = {}  # a job's key (start_job's ``key``) -> the job, until it has finished
log = logging.getLogger(__name__)


def running(key: object) -> "Job | None":
    """The unfinished job started with ``key``, if any: a page reloaded during its Generate finds its run here
    (its session, and with it the job, is new; the run goes on in this process)."""
    job = _started.get(key)
    return job if job is not None and not job.finished else None


@dataclass
class Job:
    """State shared between the worker thread and the page (read-only for the page)."""

    labels: list[str]
    n: int = 1  # answers per prompt of each run (a progress's answers are rows prompt * n + sample)
    phase: str = "waiting"  # waiting -> running -> scoring -> done | stopped | error
    current: int = 0  # index of the latest run to report its progress
    progresses: dict[int, Progress] = field(default_factory=dict)  # run index -> its latest progress
    traces: list[RunTrace] = field(default_factory=list)
    perplexities: list[list[float]] = field(default_factory=list)
    result: object = None  # whatever the finishing step returns (e.g. a history id)
    error: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    model: int = 0  # id() of the model it runs on
    watched: float | None = None  # when a page last asked about it (None: nobody watches, never abandoned)
    abandoned: bool = False

    @property
    def progress(self) -> Progress | None:
        """The progress of all the runs: the backends generate them at once (transformers in batches of
        runs, ``core.backends.hf.loop.MAX_ROWS`` rows each; vLLM every session's at once)."""
        ps = list(self.progresses.values())
        if not ps:
            return None
        return Progress(max(p.step for p in ps), max(p.max_steps for p in ps), sum(p.tokens for p in ps),
                        max(p.max_tokens for p in ps) * len(self.labels), max(p.seconds for p in ps),
                        waiting=all(p.waiting for p in ps))

    def going(self) -> list[int]:
        """The runs generating now: those that reported and have steps left."""
        return [i for i, p in sorted(self.progresses.items()) if p.step < p.max_steps]

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "stopped", "error")

    def watch(self) -> None:
        """A page shows this job now (its polling calls this)."""
        self.watched = time.monotonic()

    def check_abandoned(self) -> None:
        if self.watched is not None and time.monotonic() - self.watched > ABANDON_AFTER_S:
            self.abandoned = True
            self.cancel.set()

    def waiting_for(self) -> str:
        """What a waiting job waits for: the job of another session that holds the model."""
        other = _running.get(self.model)
        if other is None or other is self:
            return "another generation on this model"
        p = other.progress
        done = f", {p.tokens} of {p.max_tokens} tokens" if p else ""
        return f"another session's run ({other.labels[other.current]}{done})"

    def live(self) -> list[tuple[str, tuple]]:
        """(label, answers so far) of the runs worth watching now: the first (plain sampling, in a ladder)
        beside the latest one generating; none before any."""
        shown = [0, max(self.progresses, default=0)]
        return [(self.labels[i], self.progresses[i].answers) for i in dict.fromkeys(shown)
                if i in self.progresses and self.progresses[i].answers]

    def fraction(self) -> float:
        """Overall progress 0..1 across the runs."""
        if self.finished:
            return 1.0
        done = sum(p.step / p.max_steps for p in self.progresses.values() if p.max_steps)
        return min(done / max(len(self.labels), 1), 1.0)


def start_job(lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig], labels: Sequence[str],
              score: Callable[[LanguageModel, RunTrace], list[float]] | None = None,
              finish: Callable[[Job], object] | None = None, key: object = None) -> Job:
    """Run the configs on the prompts in a daemon thread (at once, as the backend batches them); then
    score and finish.

    ``score(lm, trace)`` gives per-sample perplexities; ``finish(job)`` runs last (saving to history)
    and its return value lands in ``job.result``. Stopping keeps what every run made.
    ``key``: what ``running`` finds the job by while it runs (hashable; None: not findable).
    """
    # vLLM (no lock): nothing to wait for, the runs join the engine's next step
    job = Job(labels=list(labels), n=configs[0].sampling.n, phase="running" if lm.lock is None else "waiting",
              model=id(lm))

    def on_progress(p: Progress) -> None:
        if lm.lock is not None:
            _running[id(lm)] = job
        job.phase = "running"
        job.current = p.run
        job.progresses[job.current] = p
        job.check_abandoned()

    def work() -> None:
        try:
            _generate(job, lm, prompts, configs, on_progress)
            if score is not None:
                job.phase = "scoring"
                job.perplexities = [score(lm, t) for t in job.traces]
            final = "stopped" if job.cancel.is_set() else "done"
            if finish is not None:
                job.result = finish(job)
            job.phase = final
        except Exception as exc:  # shown on the page; the traces finished so far are kept
            job.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            if job.traces and finish is not None:
                try:
                    job.result = finish(job)
                except Exception:
                    traceback.print_exc()
            job.phase = "error"
        finally:
            if _running.get(id(lm)) is job:
                del _running[id(lm)]
            if key is not None and _started.get(key) is job:
                del _started[key]

    if key is not None:
        _started[key] = job
    job.thread = threading.Thread(target=work, name="esamp-job", daemon=True)
    job.thread.start()
    return job


def _generate(job: Job, lm: LanguageModel, prompts: Sequence[str], configs: Sequence[RunConfig],
              on_progress: Callable[[Progress], None]) -> None:
    """The job's runs into ``job.traces``, generated at once as the backend batches them."""
    s = configs[0].sampling
    if lm.lock is not None and lm.lock.locked():
        job.phase = "waiting"  # another session is generating on this model
    log.info("generating %d run(s) (%s) on %s: %d prompt(s) x %d samples x %d tokens", len(configs),
             ", ".join(job.labels), lm.name, len(prompts), s.n, s.max_new_tokens)
    job.traces += generate_runs(lm, prompts, configs, cancel=job.cancel, progress=on_progress)
