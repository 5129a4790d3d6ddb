"""Run a job: take its lock, record a ``job_run`` row, run it in one transaction, record the outcome.

If the job fails, its transaction rolls back (the database is as it was) and the run is recorded as failed with
the error's message (and whatever the job's ``on_failure`` hook records in that same transaction).
A run left 'running' by a process that died is closed as failed by the next run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine

from learnpulse.errors import LearnpulseError
from learnpulse.jobs.base import Job, JobContext
from learnpulse.settings import Settings
from learnpulse.store import runs
from learnpulse.store.db import transaction
from learnpulse.store.locks import job_lock


@dataclass
class RunResult:
    job: str
    run_id: int
    as_of: date
    rows_written: int
    summary: dict[str, Any] = field(default_factory=dict)


def today(settings: Settings) -> date:
    return datetime.now(settings.timezone).date()


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, LearnpulseError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"[:2000]


def run_job(
    job: Job,
    settings: Settings,
    engine: Engine,
    *,
    as_of: date | None = None,
    options: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    as_of = as_of or today(settings)
    options = options or {}
    parameters = {
        "as_of": as_of.isoformat(),
        **options,
        **{k.lower(): getattr(settings, k.lower()) for k in job.settings},
    }
    with job_lock(engine, job.name, settings.learnpulse_lock_wait_seconds):
        with transaction(engine) as conn:
            runs.close_interrupted_runs(conn, job.name)
            run_id = runs.start_run(conn, job.name, parameters, as_of)
        try:
            with transaction(engine) as conn:
                ctx = JobContext(settings, engine, conn, run_id, as_of, options, progress)
                outcome = job.run(ctx)
                runs.finish_run(conn, run_id, rows_written=outcome.rows_written)
        except BaseException as exc:
            with transaction(engine) as conn:
                runs.finish_run(conn, run_id, rows_written=None, error=describe_error(exc))
                if job.on_failure is not None:
                    job.on_failure(conn, run_id, as_of, exc)
            raise
    return RunResult(job.name, run_id, as_of, outcome.rows_written, outcome.summary)
