"""Reads for the HTTP API: the only SQL the API runs (SQLAlchemy Core on the tables of ``store.tables``).

Lists are keyset-paginated: each function fetches ``limit + 1`` rows so the caller knows whether another page
follows, and takes the key of the last row it returned (never an offset, so a page costs the same however deep
it is). Turning keys into opaque cursor strings is the API layer's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Connection, Date, Integer, RowMapping, Select, Table, bindparam, func, literal, select

from learnpulse.store.tables import attempt, job_run, user_goal, weekly_kpi


@dataclass(frozen=True)
class Slice:
    """One page of rows (at most ``limit``) and whether more rows follow it."""

    rows: Sequence[RowMapping]
    more: bool


@dataclass(frozen=True)
class JobRunCount:
    job: str
    status: str
    runs: int
    last_finished_at: datetime | None  # latest finished_at among those runs (None while all are running)


def _slice(rows: Sequence[RowMapping], limit: int) -> Slice:
    return Slice(rows[:limit], len(rows) > limit)


# The statements are built once per combination of filters, with bound parameters: the API's hot path then skips
# building the query and SQLAlchemy's cache-key computation on every request.


@cache
def _user_kpi_statement(has_from: bool, has_to: bool, has_after: bool) -> Select[Any]:
    query = select(weekly_kpi).where(weekly_kpi.c.user_id == bindparam("user_id"))
    if has_from:
        query = query.where(weekly_kpi.c.week_start > bindparam("monday_after", type_=Date))
    if has_to:
        query = query.where(weekly_kpi.c.week_start <= bindparam("date_to", type_=Date))
    if has_after:
        query = query.where(weekly_kpi.c.week_start > bindparam("after_week", type_=Date))
    return query.order_by(weekly_kpi.c.week_start).limit(bindparam("limit", type_=Integer))


@cache
def _job_runs_statement(has_job: bool, has_status: bool, has_before: bool) -> Select[Any]:
    query = select(job_run)
    if has_job:
        query = query.where(job_run.c.job == bindparam("job"))
    if has_status:
        query = query.where(job_run.c.status == bindparam("status"))
    if has_before:
        query = query.where(job_run.c.run_id < bindparam("before_run_id"))
    return query.order_by(job_run.c.run_id.desc()).limit(bindparam("limit", type_=Integer))


@cache
def _known_statement(table: Table) -> Select[Any]:
    return select(literal(1)).where(table.c.user_id == bindparam("user_id")).limit(1)


def user_known(conn: Connection, user_id: int) -> bool:
    """True when the student has any row in weekly_kpi, user_goal or attempt (each probe is an index lookup)."""
    return any(
        conn.execute(_known_statement(table), {"user_id": user_id}).first() is not None
        for table in (weekly_kpi, user_goal, attempt)
    )


def user_kpi(
    conn: Connection,
    user_id: int,
    *,
    date_from: date | None,
    date_to: date | None,
    after_week: date | None,
    limit: int,
) -> Slice:
    """The student's ``weekly_kpi`` rows by ``week_start`` ascending.

    A week is included when it overlaps ``[date_from, date_to]`` (both inclusive, either open): its Monday is at
    most ``date_to`` and its Sunday at least ``date_from``. ``after_week`` is the last ``week_start`` of the previous
    page.
    """
    statement = _user_kpi_statement(date_from is not None, date_to is not None, after_week is not None)
    params: dict[str, Any] = {"user_id": user_id, "limit": limit + 1}
    if date_from is not None:
        params["monday_after"] = date_from - timedelta(days=7)
    if date_to is not None:
        params["date_to"] = date_to
    if after_week is not None:
        params["after_week"] = after_week
    return _slice(conn.execute(statement, params).mappings().all(), limit)


def job_runs(
    conn: Connection,
    *,
    job: str | None,
    status: str | None,
    before_run_id: int | None,
    limit: int,
) -> Slice:
    """``job_run`` rows, newest first (``run_id`` descending), optionally of one job and/or one status."""
    statement = _job_runs_statement(job is not None, status is not None, before_run_id is not None)
    params: dict[str, Any] = {"job": job, "status": status, "before_run_id": before_run_id, "limit": limit + 1}
    params = {k: v for k, v in params.items() if v is not None}
    return _slice(conn.execute(statement, params).mappings().all(), limit)


def job_run_counts(conn: Connection) -> list[JobRunCount]:
    """How many runs each job has in each status, and when the latest of them finished (for /metrics)."""
    query = (
        select(job_run.c.job, job_run.c.status, func.count().label("runs"), func.max(job_run.c.finished_at))
        .group_by(job_run.c.job, job_run.c.status)
        .order_by(job_run.c.job, job_run.c.status)
    )
    return [JobRunCount(str(j), str(s), int(n), last) for j, s, n, last in conn.execute(query)]
