"""The job runner: one job_run row per run, all-or-nothing writes, no two runs of one job at once."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import date

import pytest
from sqlalchemy import Engine

from learnpulse.errors import JobLockedError
from learnpulse.jobs.base import Job, JobContext, JobOutcome
from learnpulse.jobs.runner import run_job
from learnpulse.settings import load_settings
from learnpulse.store.db import transaction
from learnpulse.store.runs import put_state, recent_runs
from tests.helpers import count, read_table


def _settings(engine: Engine, wait: float = 0.0) -> object:
    return load_settings(
        database_url=engine.url.render_as_string(hide_password=False), learnpulse_lock_wait_seconds=wait
    )


def _slow_job(intervals: list[tuple[float, float]]) -> Job:
    def run(ctx: JobContext) -> JobOutcome:
        start = time.monotonic()
        put_state(ctx.conn, f"slow-{ctx.run_id}", {})
        time.sleep(0.5)
        intervals.append((start, time.monotonic()))
        return JobOutcome(rows_written=1)

    return Job(name="slow", run=run, schedule="* * * * *", description="test")


def test_concurrent_runs_of_one_job_never_overlap(engine: Engine) -> None:
    intervals: list[tuple[float, float]] = []
    job = _slow_job(intervals)
    settings = _settings(engine, wait=30)
    threads = [
        threading.Thread(target=run_job, args=(job, settings, engine), kwargs={"as_of": date(2026, 3, 1)})
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(intervals) == 3
    ordered = sorted(intervals)
    assert all(prev_end <= next_start for (_, prev_end), (next_start, _) in itertools.pairwise(ordered))
    assert read_table(engine, "job_run")["status"].tolist() == ["succeeded"] * 3


def test_a_second_run_without_waiting_is_refused(engine: Engine) -> None:
    intervals: list[tuple[float, float]] = []
    job = _slow_job(intervals)
    first = threading.Thread(target=run_job, args=(job, _settings(engine), engine))
    first.start()
    time.sleep(0.2)
    with pytest.raises(JobLockedError, match="'slow' is already running"):
        run_job(job, _settings(engine), engine)
    first.join()
    assert len(intervals) == 1


def test_a_failing_job_writes_nothing_and_is_recorded(engine: Engine) -> None:
    def run(ctx: JobContext) -> JobOutcome:
        put_state(ctx.conn, "half", {})
        raise ValueError("model diverged")

    with pytest.raises(ValueError, match="model diverged"):
        run_job(Job("fails", run, "* * * * *", "test"), _settings(engine), engine)
    assert count(engine, "job_state") == 0
    with engine.connect() as conn:
        (last,) = recent_runs(conn, "fails")
    assert last["status"] == "failed" and last["error"] == "ValueError: model diverged"
    assert last["finished_at"] is not None and last["rows_written"] is None


def test_a_run_left_running_by_a_dead_process_is_closed_by_the_next(engine: Engine) -> None:
    from learnpulse.store.runs import start_run

    with transaction(engine) as conn:
        start_run(conn, "slow", {}, None)
    run_job(_slow_job([]), _settings(engine), engine)
    statuses = read_table(engine, "job_run", ["run_id"])[["status", "error"]].values.tolist()
    assert statuses[0] == ["failed", "interrupted: the process running it stopped"]
    assert statuses[1][0] == "succeeded"
