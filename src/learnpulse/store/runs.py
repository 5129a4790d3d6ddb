"""``job_run`` and ``job_state``: the record of every job run and each job's small persistent state."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, desc, insert, select, update

from learnpulse.store.tables import job_run, job_state


def now_utc() -> datetime:
    return datetime.now(UTC)


def start_run(conn: Connection, job: str, parameters: dict[str, Any], as_of: date | None) -> int:
    result = conn.execute(
        insert(job_run)
        .values(job=job, parameters=_jsonable(parameters), as_of=as_of, started_at=now_utc(), status="running")
        .returning(job_run.c.run_id)
    )
    return int(result.scalar_one())


def finish_run(conn: Connection, run_id: int, *, rows_written: int | None, error: str | None = None) -> None:
    conn.execute(
        update(job_run)
        .where(job_run.c.run_id == run_id)
        .values(
            finished_at=now_utc(),
            status="failed" if error is not None else "succeeded",
            rows_written=rows_written,
            error=error,
        )
    )


def close_interrupted_runs(conn: Connection, job: str) -> int:
    """Mark runs left 'running' by a process that died as failed; call only while holding the job's lock."""
    result = conn.execute(
        update(job_run)
        .where(job_run.c.job == job, job_run.c.status == "running")
        .values(status="failed", finished_at=now_utc(), error="interrupted: the process running it stopped")
    )
    return int(result.rowcount)


def recent_runs(conn: Connection, job: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    query = select(job_run).order_by(desc(job_run.c.run_id)).limit(limit)
    if job is not None:
        query = query.where(job_run.c.job == job)
    return [dict(row._mapping) for row in conn.execute(query)]


def get_state(conn: Connection, job: str) -> dict[str, Any] | None:
    row = conn.execute(select(job_state.c.state).where(job_state.c.job == job)).first()
    return dict(row[0]) if row else None


def put_state(conn: Connection, job: str, state: dict[str, Any]) -> None:
    if conn.execute(select(job_state.c.job).where(job_state.c.job == job)).first():
        conn.execute(update(job_state).where(job_state.c.job == job).values(state=state, updated_at=now_utc()))
    else:
        conn.execute(insert(job_state).values(job=job, state=state, updated_at=now_utc()))


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(value, default=str)))
