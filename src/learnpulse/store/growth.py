"""SQL of the growth model: weekly accuracy and goals in, fits (``growth_brms_meta``), per-student posteriors and
goal probabilities (``growth_unit``) and ``weekly_kpi.p`` / ``weekly_kpi.sigma`` out.

A failed run (diagnostics) keeps its ``growth_brms_meta`` row with ``status = 'failed'``; the model in use is the
latest succeeded row, and ``growth_unit`` holds the rows of that run only (a new succeeded run replaces them).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, delete, desc, insert, select, text

from learnpulse.store.buckets import date_param, week_start
from learnpulse.store.bulk import date_literal, day_number_sql, insert_frame, numeric_frame, users_sql
from learnpulse.store.tables import growth_brms_meta, growth_unit, user_goal

EPOCH = date(1970, 1, 1)


def load_weekly_accuracy(
    conn: Connection, *, first_week: date, last_week: date, user_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """Student-weeks with attempts whose week starts in ``first_week .. last_week``: ``user_id, week`` (day number
    of the Monday), ``attempts, correct``. ``user_ids``: only those students (None: all)."""
    dialect = conn.dialect.name
    return numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "week_start")} AS week, attempts, correct
        FROM weekly_kpi
        WHERE attempts > 0
          AND week_start BETWEEN {date_literal(dialect, first_week)} AND {date_literal(dialect, last_week)}
          {users_sql(user_ids)}
        """,
        {"user_id": np.int64, "week": np.int64, "attempts": np.int64, "correct": np.int64},
    )


def load_goals(conn: Connection, user_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """``user_id, target, deadline`` (a ``date``) of every student with a goal (or of ``user_ids``)."""
    query = select(user_goal.c.user_id, user_goal.c.target, user_goal.c.deadline)
    if user_ids is not None:
        query = query.where(user_goal.c.user_id.in_(sorted({int(u) for u in user_ids})))
    rows = conn.execute(query).fetchall()
    return pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], dtype=np.int64),
            "target": np.array([r[1] for r in rows], dtype=np.float64),
            "deadline": [r[2] for r in rows],
        }
    )


def record_fit(conn: Connection, row: dict[str, Any]) -> None:
    """Store one ``growth_brms_meta`` row (succeeded or failed)."""
    conn.execute(insert(growth_brms_meta).values(**row))


def replace_units(conn: Connection, run_id: int, units: pd.DataFrame) -> int:
    """Store the per-student rows of run ``run_id`` and drop those of earlier runs (no longer in use)."""
    conn.execute(delete(growth_unit))
    frame = units.assign(run_id=run_id)
    return insert_frame(conn, growth_unit, frame, columns=[c.name for c in growth_unit.columns])


def write_weekly_p(conn: Connection, run_id: int, as_of: date) -> int:
    """Set ``weekly_kpi.p`` and ``.sigma`` of the week containing ``as_of`` from run ``run_id``'s rows; returns the
    rows updated. Like ``s``: only rows build-kpi created are touched, and a student of that week without a goal
    probability gets NULL rather than a stale value."""
    dialect = conn.dialect.name
    result = conn.execute(
        text("""
        UPDATE weekly_kpi SET
          p = (SELECT g.p FROM growth_unit g WHERE g.run_id = :run AND g.user_id = weekly_kpi.user_id),
          sigma = (SELECT g.sigma FROM growth_unit g WHERE g.run_id = :run AND g.user_id = weekly_kpi.user_id)
        WHERE week_start = :week
        """),
        {"run": run_id, "week": date_param(dialect, week_start(as_of))},
    )
    return int(result.rowcount)


def latest_fit(conn: Connection) -> dict[str, Any] | None:
    """The model in use: the latest succeeded ``growth_brms_meta`` row (None: never fitted successfully)."""
    found = conn.execute(
        select(growth_brms_meta)
        .where(growth_brms_meta.c.status == "succeeded")
        .order_by(desc(growth_brms_meta.c.as_of), desc(growth_brms_meta.c.run_id))
        .limit(1)
    ).first()
    return dict(found._mapping) if found else None


def latest_run(conn: Connection) -> dict[str, Any] | None:
    """The newest ``growth_brms_meta`` row, succeeded or failed (for status displays)."""
    found = conn.execute(select(growth_brms_meta).order_by(desc(growth_brms_meta.c.run_id)).limit(1)).first()
    return dict(found._mapping) if found else None


def unit_rows(conn: Connection, run_id: int, user_ids: Sequence[int]) -> pd.DataFrame:
    """``growth_unit`` rows of run ``run_id`` for ``user_ids`` (students not in it are simply absent)."""
    ids = sorted({int(u) for u in user_ids})
    columns = [c.name for c in growth_unit.columns]
    if not ids:
        return pd.DataFrame(columns=columns)
    rows = conn.execute(
        select(growth_unit).where(growth_unit.c.run_id == run_id, growth_unit.c.user_id.in_(ids))
    ).fetchall()
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def top_goal_probabilities(conn: Connection, run_id: int, *, lowest: bool, limit: int = 10) -> list[dict[str, Any]]:
    """Students with a goal probability, lowest (or highest) ``p`` first: for the demo and reports."""
    order = growth_unit.c.p.asc() if lowest else growth_unit.c.p.desc()
    rows = conn.execute(
        select(growth_unit)
        .where(growth_unit.c.run_id == run_id, growth_unit.c.p.is_not(None))
        .order_by(order, growth_unit.c.user_id)
        .limit(limit)
    ).fetchall()
    return [dict(r._mapping) for r in rows]


def day_number(value: date) -> int:
    return (value - EPOCH).days
