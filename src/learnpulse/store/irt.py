"""SQL of the IRT calibration: responses of a window in, calibrations (``irt_calibration_meta``), item parameters
per run (``irt_item``) and ``weekly_kpi.i_t`` / ``i_t_sd`` / ``i_t_source = 'irt'`` out."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Connection, delete, desc, func, insert, select

from learnpulse.store.buckets import local_day_number_sql, local_day_start_utc
from learnpulse.store.bulk import drop_stage, insert_frame, numeric_frame, stage_frame
from learnpulse.store.tables import irt_calibration_meta, irt_item, weekly_kpi
from learnpulse.store.types import to_epoch_us


def _instant_literal(dialect: str, value: datetime) -> str:
    """A literal for comparing with ``answered_at`` (built from a ``datetime``, nothing foreign in the SQL)."""
    if dialect == "postgresql":
        return f"TIMESTAMPTZ '{value.isoformat()}'"
    return str(to_epoch_us(value))


def load_responses(conn: Connection, *, first_day: date, last_day: date, tz: ZoneInfo) -> pd.DataFrame:
    """Every attempt answered on local days ``first_day .. last_day``: ``user_id, item_id, correct`` (0/1) and
    ``day`` (local day number, days since 1970-01-01)."""
    dialect = conn.dialect.name
    start, end = local_day_start_utc(first_day, tz), local_day_start_utc(last_day + timedelta(days=1), tz)
    if dialect == "postgresql":
        day = f"(CAST((answered_at AT TIME ZONE '{tz.key}') AS DATE) - DATE '1970-01-01')"
    else:
        day = local_day_number_sql("answered_at", tz, start, end)
    return numeric_frame(
        conn,
        f"""
        SELECT user_id, item_id, CASE WHEN is_correct THEN 1 ELSE 0 END AS correct, {day} AS day
        FROM attempt
        WHERE answered_at >= {_instant_literal(dialect, start)} AND answered_at < {_instant_literal(dialect, end)}
        """,
        {"user_id": np.int64, "item_id": np.int64, "correct": np.int64, "day": np.int64},
    )


def latest_calibration(conn: Connection, as_of: date | None = None) -> dict[str, Any] | None:
    """The newest stored calibration (its ``irt_calibration_meta`` row), or the newest as of ``as_of`` (its as-of
    date on or before it); None if there is none."""
    query = select(irt_calibration_meta)
    if as_of is not None:
        query = query.where(irt_calibration_meta.c.as_of <= as_of)
    found = conn.execute(
        query.order_by(desc(irt_calibration_meta.c.as_of), desc(irt_calibration_meta.c.run_id)).limit(1)
    ).first()
    return dict(found._mapping) if found else None


def calibrated_items(conn: Connection, run_id: int) -> pd.DataFrame:
    """``item_id, a, b`` of the items calibration ``run_id`` gave parameters (flagged items left out)."""
    return numeric_frame(
        conn,
        f"SELECT item_id, a, b FROM irt_item WHERE run_id = {int(run_id)} AND a IS NOT NULL AND b IS NOT NULL",
        {"item_id": np.int64, "a": np.float64, "b": np.float64},
    )


def record_calibration(conn: Connection, meta: dict[str, Any], items: pd.DataFrame) -> int:
    """Store one calibration and its item rows (replacing a calibration with the same as-of date); returns rows."""
    old = conn.execute(
        select(irt_calibration_meta.c.run_id).where(irt_calibration_meta.c.as_of == meta["as_of"])
    ).scalars()
    old_ids = list(old)
    if old_ids:
        conn.execute(delete(irt_item).where(irt_item.c.run_id.in_(old_ids)))
        conn.execute(delete(irt_calibration_meta).where(irt_calibration_meta.c.run_id.in_(old_ids)))
    conn.execute(insert(irt_calibration_meta).values(**meta))
    return 1 + insert_frame(
        conn, irt_item, items.assign(run_id=meta["run_id"]), columns=[c.name for c in irt_item.columns]
    )


def write_learning_index(conn: Connection, scores: pd.DataFrame) -> int:
    """Set ``i_t``, ``i_t_sd`` and ``i_t_source = 'irt'`` of the ``weekly_kpi`` rows in ``scores`` (``user_id,
    week_start, i_t, i_t_sd``) through a staging table; returns the rows updated."""
    if scores.empty:
        return 0
    stage = stage_frame(
        conn,
        "lp_stage_irt",
        like=weekly_kpi,
        columns=["user_id", "week_start", "i_t", "i_t_sd"],
        frame=scores,
        progress=None,
    )
    result = conn.exec_driver_sql(f"""
        UPDATE weekly_kpi SET i_t = s.i_t, i_t_sd = s.i_t_sd, i_t_source = 'irt'
        FROM {stage.name} AS s
        WHERE weekly_kpi.user_id = s.user_id AND weekly_kpi.week_start = s.week_start
    """)
    drop_stage(conn, stage)
    return int(result.rowcount)


def first_placeholder_week(conn: Connection, before: date) -> date | None:
    """The earliest week before ``before`` whose ``I_t`` is still build-kpi's accuracy placeholder (None: none)."""
    value = conn.execute(
        select(func.min(weekly_kpi.c.week_start)).where(
            weekly_kpi.c.week_start < before, weekly_kpi.c.i_t_source == "accuracy"
        )
    ).scalar()
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def item_history(conn: Connection, item_id: int, limit: int = 10) -> list[dict[str, Any]]:
    """The item's parameters in the newest ``limit`` calibrations, newest first, with each run's as-of date."""
    rows = conn.execute(
        select(irt_item, irt_calibration_meta.c.as_of)
        .join(irt_calibration_meta, irt_calibration_meta.c.run_id == irt_item.c.run_id)
        .where(irt_item.c.item_id == item_id)
        .order_by(desc(irt_calibration_meta.c.as_of), desc(irt_item.c.run_id))
        .limit(limit)
    ).fetchall()
    return [dict(r._mapping) for r in rows]


def known_items(conn: Connection, item_ids: Sequence[int]) -> set[int]:
    rows = conn.execute(select(irt_item.c.item_id).where(irt_item.c.item_id.in_(sorted(set(item_ids)))).distinct())
    return {int(r[0]) for r in rows}
