"""Checkable tasks for pass@k, and background jobs (progress, stop keeps results)."""

import time

import pytest

from app.jobs import start_job
from core import RunConfig, SamplingConfig
from core.tasks import arithmetic_tasks, final_number, is_correct, tasks_from_jsonl


def test_arithmetic_tasks_are_deterministic_and_their_answers_are_right():
    tasks = arithmetic_tasks(8, seed=1)
    assert tasks == arithmetic_tasks(8, seed=1) and tasks != arithmetic_tasks(8, seed=2)
    # task 0: "has a apples and buys b more" (a + b); task 3: "... then gives away c" (a + b - c);
    # task 6: "had a cups, sold b and c" (a - b - c)
    import re

    a, b = map(int, re.findall(r"\d+", tasks[0].question))
    assert tasks[0].answer == str(a + b)
    a, b, c = map(int, re.findall(r"\d+", tasks[3].question))
    assert tasks[3].answer == str(a + b - c)
    a, b, c = map(int, re.findall(r"\d+", tasks[6].question))
    assert tasks[6].answer == str(a - b - c)
    assert all(int(t.answer) >= 0 for t in arithmetic_tasks(200, seed=3))


def test_answers_are_checked_by_their_last_number():
    assert final_number("First 12, then 1,200.") == "1200"
    assert is_correct("So the answer is 42.", "42") and not is_correct("42 then 43", "42")
    assert is_correct("It is Paris.", "paris") and not is_correct("no number here", "7")


def test_jsonl_tasks_and_their_errors():
    assert tasks_from_jsonl('{"question": "1+1?", "answer": 2}\n\n')[0].answer == "2"
    with pytest.raises(ValueError, match="line 2"):
        tasks_from_jsonl('{"question": "q", "answer": 1}\n{"q": 1}')


def wait(job, timeout=300):
    end = time.time() + timeout
    while not job.finished and time.time() < end:
        time.sleep(0.1)
    return job


def test_a_job_runs_its_configs_scores_and_finishes(lm):
    cfg = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=4))
    finished = []
    job = wait(start_job(lm, ["Hi"], [cfg, RunConfig(method="plain", sampling=cfg.sampling)], ["a", "b"],
                         score=lambda lm, t: [1.0] * len(t.samples), finish=lambda j: finished.append(j) or 7))
    assert job.phase == "done" and job.result == 7 and finished == [job]
    assert [t.method for t in job.traces] == ["esamp", "plain"] and job.perplexities == [[1.0, 1.0]] * 2
    assert job.fraction() == 1.0


def test_stopping_a_job_keeps_what_was_generated(lm):
    cfg = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=200, ignore_eos=True))
    job = start_job(lm, ["Hi"], [cfg, cfg], ["a", "b"], finish=lambda j: len(j.traces))
    while job.progress is None or job.progress.step < 2:
        time.sleep(0.05)
    job.cancel.set()
    wait(job)
    assert job.phase == "stopped" and job.result == 2  # the two runs decode in one batch: both stop
    assert all(t.stopped and 2 <= len(t.samples[0].tokens) < 200 for t in job.traces)


def test_a_failing_job_reports_the_error(lm):
    job = wait(start_job(lm, [""], [RunConfig()], ["a"]))
    assert job.phase == "error" and "empty" in job.error


def test_a_job_whose_page_stopped_watching_stops_and_keeps_what_it_made(lm, monkeypatch):
    """A closed tab stops polling its job; the job then stops (keeping its tokens) instead of holding
    the model for nobody."""
    import app.jobs

    monkeypatch.setattr(app.jobs, "ABANDON_AFTER_S", 0.5)
    cfg = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=200, ignore_eos=True))
    job = start_job(lm, ["Hi"], [cfg], ["a"], finish=lambda j: len(j.traces))
    job.watch()  # a page showed it once, then its tab closed
    wait(job)
    assert job.abandoned and job.phase == "stopped" and job.result == 1
    assert job.traces[0].stopped and 0 < len(job.traces[0].samples[0].tokens) < 200


def test_a_second_job_on_the_same_model_says_whose_run_it_waits_for(lm):
    long = RunConfig(sampling=SamplingConfig(n=2, max_new_tokens=120, ignore_eos=True))
    first = start_job(lm, ["Hi"], [long], ["the first run"])
    while first.progress is None:
        time.sleep(0.05)
    second = start_job(lm, ["Hello"], [RunConfig(sampling=SamplingConfig(n=1, max_new_tokens=2))], ["second"])
    time.sleep(0.3)
    assert second.phase == "waiting" and "another session's run (the first run" in second.waiting_for()
    first.cancel.set()
    wait(first), wait(second)
    assert second.phase == "done" and second.traces[0].prompts[0].text == "Hello"
