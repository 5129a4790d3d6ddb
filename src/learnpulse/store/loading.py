"""Loading validated ingest frames into ``attempt`` and ``user_goal``: bulk staging, merge, one batch per load.

The frames come from :mod:`learnpulse.ingest` (already validated, keys unique). Everything here runs inside the
caller's transaction, so a load is all or nothing:

- attempts are immutable: an ``attempt_id`` already stored with the same content is skipped, one stored with
  different content is a conflict (returned, so the caller can name the rows and roll back). New ids are
  inserted with the ``batch_id`` of a new ``ingest_batch`` row.
- goals are upserts: new ``user_id`` rows are inserted, changed ones updated, identical ones left alone.
- a load that changes nothing leaves no trace: no ``ingest_batch`` row is created.

Speed (10 million attempts is the yardstick):

- the table is locked against concurrent loads first (PostgreSQL ``SHARE ROW EXCLUSIVE``: readers are not
  blocked; SQLite writers already hold the database's write lock), so what is checked stays true until commit.
- when no stored ``attempt_id`` falls within the frame's id range (a first load, or new ids appended), rows are
  bulk-copied (``COPY`` on PostgreSQL) straight into ``attempt``: no staging, no join.
- otherwise the frame is bulk-copied into an unindexed temporary table, compared with ``attempt`` by one join on
  the primary key, and the new rows inserted with ``INSERT ... SELECT ... WHERE NOT EXISTS`` (twice as fast as
  ``ON CONFLICT DO NOTHING`` on PostgreSQL; the lock rules out the race that ``ON CONFLICT`` would cover).
- a big append (at least :data:`REBUILD_MIN_ROWS` new rows, and at least half as many as are stored) drops the
  secondary indexes of ``attempt`` and rebuilds them afterwards, in the same transaction: building an index is
  several times cheaper than maintaining it row by row. On PostgreSQL this takes an ``ACCESS EXCLUSIVE`` lock,
  so readers of ``attempt`` wait for the load to commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from sqlalchemy import (
    Connection,
    Integer,
    Table,
    case,
    exists,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from learnpulse.store.bulk import Progress, drop_stage, insert_frame, stage_frame
from learnpulse.store.db import is_sqlite
from learnpulse.store.tables import attempt, ingest_batch, user_goal

__all__ = [
    "ATTEMPT_DATA_COLUMNS",
    "GOAL_DATA_COLUMNS",
    "MAX_CONFLICTS",
    "MergeResult",
    "finish_batch",
    "merge_attempts",
    "merge_goals",
    "new_batch",
]

ATTEMPT_DATA_COLUMNS = ("attempt_id", "user_id", "item_id", "topic_id", "is_correct", "answered_at", "time_spent_s")
GOAL_DATA_COLUMNS = ("user_id", "target", "deadline")
MAX_CONFLICTS = 100
"""At most this many conflicting rows are returned in detail; all are counted."""
REBUILD_MIN_ROWS = 500_000
"""Appends of at least this many rows (and at least half the stored rows) rebuild secondary indexes."""

BatchKind = Literal["attempts", "goals", "generate"]


@dataclass(frozen=True)
class MergeResult:
    """What a merge did. When ``conflict_count`` > 0 nothing was written and the caller must roll back."""

    rows_in: int
    added: int = 0
    updated: int = 0
    batch_id: int | None = None
    conflict_count: int = 0
    # Up to MAX_CONFLICTS rows: the frame's columns plus ``stored_<column>`` for each data column, by key.
    conflicts: pd.DataFrame = field(default_factory=pd.DataFrame)


def new_batch(conn: Connection, kind: BatchKind, source: str, sha256: str | None, rows_in: int) -> int:
    """Insert an ``ingest_batch`` row (rows_added 0 until :func:`finish_batch`); returns its ``batch_id``."""
    result = conn.execute(
        insert(ingest_batch).values(
            kind=kind, source=source, sha256=sha256, rows_in=rows_in, rows_added=0, loaded_at=datetime.now(UTC)
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def finish_batch(conn: Connection, batch_id: int, rows_added: int) -> None:
    conn.execute(update(ingest_batch).where(ingest_batch.c.batch_id == batch_id).values(rows_added=rows_added))


def merge_attempts(
    conn: Connection,
    frame: pd.DataFrame,
    *,
    source: str,
    sha256: str | None,
    rows_in: int | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Store the attempts of ``frame`` (unique ``attempt_id``) that are not stored yet; see the module doc."""
    rows_in = len(frame) if rows_in is None else rows_in
    if frame.empty:
        return MergeResult(rows_in=rows_in)
    frame = frame.loc[:, list(ATTEMPT_DATA_COLUMNS)]
    _lock(conn, attempt)
    ids = frame["attempt_id"]
    lo, hi = int(ids.min()), int(ids.max())
    overlap = conn.execute(select(exists().where(attempt.c.attempt_id.between(lo, hi)))).scalar()
    if not overlap:
        batch_id = new_batch(conn, "attempts", source, sha256, rows_in)
        with _bulk_append(conn, attempt, len(frame)):
            insert_frame(conn, attempt, frame.assign(batch_id=batch_id), progress=progress)
        finish_batch(conn, batch_id, len(frame))
        return MergeResult(rows_in=rows_in, added=len(frame), batch_id=batch_id)

    stage = stage_frame(
        conn, "lp_stage_attempt", like=attempt, columns=ATTEMPT_DATA_COLUMNS, frame=frame, progress=progress
    )
    s, a = stage.alias("s"), attempt.alias("a")
    differs = or_(
        *(s.c[c] != a.c[c] for c in ATTEMPT_DATA_COLUMNS[1:-1]),
        s.c.time_spent_s.is_distinct_from(a.c.time_spent_s),  # NULL-safe: IS DISTINCT FROM / IS NOT
    )
    joined = s.join(a, a.c.attempt_id == s.c.attempt_id)
    existing, conflicting = conn.execute(
        select(func.count(), func.coalesce(func.sum(case((differs, 1), else_=0)), 0)).select_from(joined)
    ).one()
    if conflicting:
        detail = (
            select(*s.c, *(a.c[c].label(f"stored_{c}") for c in ATTEMPT_DATA_COLUMNS[1:]))
            .select_from(joined)
            .where(differs)
            .order_by(s.c.attempt_id)
            .limit(MAX_CONFLICTS)
        )
        conflicts = _frame(conn.execute(detail))
        return MergeResult(rows_in=rows_in, conflict_count=int(conflicting), conflicts=conflicts)
    new = len(frame) - int(existing)
    if new == 0:
        drop_stage(conn, stage)
        return MergeResult(rows_in=rows_in)
    batch_id = new_batch(conn, "attempts", source, sha256, rows_in)
    selected = select(*s.c, literal(batch_id, Integer))
    if existing:
        stored = select(literal(1)).select_from(a).where(a.c.attempt_id == s.c.attempt_id)
        selected = selected.where(~exists(stored))
    with _bulk_append(conn, attempt, new):
        conn.execute(insert(attempt).from_select([*ATTEMPT_DATA_COLUMNS, "batch_id"], selected))
    drop_stage(conn, stage)
    finish_batch(conn, batch_id, new)
    return MergeResult(rows_in=rows_in, added=new, batch_id=batch_id)


def merge_goals(
    conn: Connection,
    frame: pd.DataFrame,
    *,
    source: str,
    sha256: str | None,
    rows_in: int | None = None,
    progress: Progress | None = None,
) -> MergeResult:
    """Insert new goals and update changed ones (``frame`` has unique ``user_id``); identical goals are left alone."""
    rows_in = len(frame) if rows_in is None else rows_in
    if frame.empty:
        return MergeResult(rows_in=rows_in)
    frame = frame.loc[:, list(GOAL_DATA_COLUMNS)]
    _lock(conn, user_goal)
    stage = stage_frame(
        conn, "lp_stage_user_goal", like=user_goal, columns=GOAL_DATA_COLUMNS, frame=frame, progress=progress
    )
    s, g = stage.alias("s"), user_goal.alias("g")
    missing = g.c.user_id.is_(None)
    changed = or_(g.c.target != s.c.target, g.c.deadline != s.c.deadline)
    joined = s.outerjoin(g, g.c.user_id == s.c.user_id)
    new, updated = conn.execute(
        select(
            func.coalesce(func.sum(case((missing, 1), else_=0)), 0),
            func.coalesce(func.sum(case((~missing & changed, 1), else_=0)), 0),
        ).select_from(joined)
    ).one()
    new, updated = int(new), int(updated)
    if new + updated == 0:
        drop_stage(conn, stage)
        return MergeResult(rows_in=rows_in)
    batch_id = new_batch(conn, "goals", source, sha256, rows_in)
    selected = select(*s.c, literal(batch_id, Integer)).select_from(joined).where(or_(missing, changed))
    stmt = _dialect_insert(conn, user_goal).from_select([*GOAL_DATA_COLUMNS, "batch_id"], selected)
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id"],
        set_={c: stmt.excluded[c] for c in ("target", "deadline", "batch_id")},
    )
    conn.execute(stmt)
    drop_stage(conn, stage)
    finish_batch(conn, batch_id, new + updated)
    return MergeResult(rows_in=rows_in, added=new, updated=updated, batch_id=batch_id)


# --- helpers -------------------------------------------------------------------------------------------------


@contextmanager
def _bulk_append(conn: Connection, table: Table, rows: int) -> Iterator[None]:
    """Around an append of ``rows`` rows: for a big one, drop ``table``'s secondary indexes and rebuild them after."""
    if rows < REBUILD_MIN_ROWS or _has_rows(conn, table, 2 * rows):
        yield
        return
    present = {ix["name"] for ix in inspect(conn).get_indexes(table.name)}
    indexes = [ix for ix in table.indexes if ix.name in present]
    if not is_sqlite(conn):
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
    for ix in indexes:
        ix.drop(conn)
    yield
    for ix in indexes:
        ix.create(conn)
    if not is_sqlite(conn):
        conn.exec_driver_sql(f"ANALYZE {table.name}")  # fresh statistics for the jobs that read it next


def _has_rows(conn: Connection, table: Table, n: int) -> bool:
    """Whether ``table`` holds at least ``n`` rows (reads at most ``n`` rows)."""
    bounded = select(literal(1)).select_from(table).limit(n).subquery()
    return bool(conn.execute(select(func.count()).select_from(bounded)).scalar_one() >= n)


def _lock(conn: Connection, table: Table) -> None:
    """Serialise loads into ``table`` (PostgreSQL); SQLite writers already hold the database's write lock."""
    if not is_sqlite(conn):
        conn.exec_driver_sql(f"LOCK TABLE {table.name} IN SHARE ROW EXCLUSIVE MODE")


def _dialect_insert(conn: Connection, table: Table) -> Any:
    return sqlite.insert(table) if is_sqlite(conn) else postgresql.insert(table)


def _frame(result: Any) -> pd.DataFrame:
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))
