"""SQL of forecast-prophet: the weekly ``I_t`` series in; per-student fits (``prophet_fit_meta``), anomalous weeks
(``prophet_anomalies``) and the ``weekly_kpi`` columns ``i_t_next``, ``i_t_next_lower``, ``i_t_next_upper`` and
``anomaly`` out; the reads of the ``/prophet`` and ``/anomalies`` routes.

Writes are delete-and-replace by as-of date: a re-run for the same as-of date removes the rows of the earlier run
(its fits, its anomalies and the forecast columns it set in ``weekly_kpi``) before writing its own, so it replaces
them and never duplicates them. Weeks travel as integer day numbers of their Monday (days since 1970-01-01), so no
date strings are parsed in Python on the bulk paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, and_, delete, desc, func, or_, select

from learnpulse.store.bulk import date_literal, day_number_sql, drop_stage, insert_frame, numeric_frame, stage_frame
from learnpulse.store.reads import Slice
from learnpulse.store.tables import prophet_anomalies, prophet_fit_meta, weekly_kpi

WEEK_DAYS = 7
_IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True)
class RunRef:
    """A stored forecast-prophet run: its ``run_id`` and as-of date."""

    run_id: int
    as_of: date


# --- the series -------------------------------------------------------------------------------------------------


def load_series(conn: Connection, *, first_week: date, last_week: date) -> pd.DataFrame:
    """Every ``weekly_kpi`` row with an ``I_t`` whose week starts in ``first_week .. last_week``: ``user_id``,
    ``week`` (day number of the Monday), ``i_t``, ``i_t_sd`` (NaN where NULL: the accuracy placeholder has none)
    and ``irt`` (1 when ``i_t_source = 'irt'``, else 0)."""
    dialect = conn.dialect.name
    return numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "week_start")} AS week, i_t, i_t_sd,
               CASE WHEN i_t_source = 'irt' THEN 1 ELSE 0 END AS irt
        FROM weekly_kpi
        WHERE i_t IS NOT NULL
          AND week_start BETWEEN {date_literal(dialect, first_week)} AND {date_literal(dialect, last_week)}
        """,
        {"user_id": np.int64, "week": np.int64, "i_t": np.float64, "i_t_sd": np.float64, "irt": np.int64},
    )


# --- writes -----------------------------------------------------------------------------------------------------


def replace_run(conn: Connection, as_of: date) -> list[int]:
    """Remove what earlier runs for ``as_of`` stored: their ``prophet_anomalies`` and ``prophet_fit_meta`` rows and
    the ``i_t_next*`` values they set (on each fitted student's last observed week, the week before the first
    forecast week). Returns the run ids removed. (Their ``anomaly`` flags are reset by :func:`write_kpi_columns`,
    which clears the whole window.)"""
    old = [
        int(r)
        for r in conn.execute(
            select(prophet_fit_meta.c.run_id).where(prophet_fit_meta.c.as_of == as_of).distinct()
        ).scalars()
    ]
    if not old:
        return []
    fitted = conn.execute(
        select(prophet_fit_meta.c.user_id, prophet_fit_meta.c.forecast).where(
            prophet_fit_meta.c.run_id.in_(old), prophet_fit_meta.c.status == "fitted"
        )
    ).fetchall()
    rows = [(int(user_id), week) for user_id, forecast in fitted if (week := last_observed_week(forecast))]
    if rows:
        frame = pd.DataFrame(
            {
                "user_id": np.array([r[0] for r in rows], dtype=np.int64),
                "week_start": [r[1] for r in rows],
                "i_t_next": np.full(len(rows), np.nan),
            }
        )
        stage = stage_frame(
            conn, "lp_stage_prophet_old", like=weekly_kpi, columns=list(frame.columns), frame=frame, progress=None
        )
        conn.exec_driver_sql(f"""
            UPDATE weekly_kpi SET i_t_next = NULL, i_t_next_lower = NULL, i_t_next_upper = NULL
            FROM {stage.name} AS s
            WHERE weekly_kpi.user_id = s.user_id AND weekly_kpi.week_start = s.week_start
        """)
        drop_stage(conn, stage)
    conn.execute(delete(prophet_anomalies).where(prophet_anomalies.c.run_id.in_(old)))
    conn.execute(delete(prophet_fit_meta).where(prophet_fit_meta.c.run_id.in_(old)))
    return old


def last_observed_week(forecast: Sequence[dict[str, Any]] | None) -> date | None:
    """The student's last observed week of a stored forecast (``prophet_fit_meta.forecast``): the week before the
    first forecast week (None: no forecast)."""
    if not forecast:
        return None
    return date.fromisoformat(forecast[0]["week_start"]) - timedelta(days=WEEK_DAYS)


def write_fits(conn: Connection, fits: pd.DataFrame) -> int:
    """Append ``prophet_fit_meta`` rows (every column of the table; JSON columns as JSON text or None)."""
    return insert_frame(conn, prophet_fit_meta, fits, columns=[c.name for c in prophet_fit_meta.columns])


def write_anomalies(conn: Connection, anomalies: pd.DataFrame) -> int:
    """Append ``prophet_anomalies`` rows (every column of the table)."""
    return insert_frame(conn, prophet_anomalies, anomalies, columns=[c.name for c in prophet_anomalies.columns])


def write_kpi_columns(conn: Connection, *, first_week: date, last_week: date, judged: pd.DataFrame) -> int:
    """Set the forecast columns of ``weekly_kpi`` from one run, through a staging table; returns the rows updated.

    ``judged``: ``user_id, week_start, anomaly, i_t_next, i_t_next_lower, i_t_next_upper``, one row per week the
    run judged (every observed week of a fitted student); ``i_t_next*`` set (not NaN) on each student's last
    observed week only. First ``anomaly`` is cleared on every week of the window (a week this run did not judge,
    e.g. of a student now too short to fit, must not keep an older verdict); then ``anomaly`` is written on every
    judged row and ``i_t_next*`` on the rows that carry a forecast. Other rows' ``i_t_next*`` are left alone: they
    hold the forecast made when that week was the student's last (by an earlier as-of date).
    """
    dialect = conn.dialect.name
    conn.exec_driver_sql(f"""
        UPDATE weekly_kpi SET anomaly = NULL
        WHERE anomaly IS NOT NULL
          AND week_start BETWEEN {date_literal(dialect, first_week)} AND {date_literal(dialect, last_week)}
    """)
    if judged.empty:
        return 0
    columns = ["user_id", "week_start", "anomaly", "i_t_next", "i_t_next_lower", "i_t_next_upper"]
    stage = stage_frame(conn, "lp_stage_prophet", like=weekly_kpi, columns=columns, frame=judged, progress=None)
    # A staged NULL i_t_next means "no forecast on this week": keep the stored value (CASE, not COALESCE, so that
    # a forecast whose interval is NULL still replaces the bounds).
    result = conn.exec_driver_sql(f"""
        UPDATE weekly_kpi SET
            anomaly = s.anomaly,
            i_t_next = CASE WHEN s.i_t_next IS NULL THEN weekly_kpi.i_t_next ELSE s.i_t_next END,
            i_t_next_lower = CASE WHEN s.i_t_next IS NULL THEN weekly_kpi.i_t_next_lower ELSE s.i_t_next_lower END,
            i_t_next_upper = CASE WHEN s.i_t_next IS NULL THEN weekly_kpi.i_t_next_upper ELSE s.i_t_next_upper END
        FROM {stage.name} AS s
        WHERE weekly_kpi.user_id = s.user_id AND weekly_kpi.week_start = s.week_start
    """)
    drop_stage(conn, stage)
    return int(result.rowcount)


# --- reads for the API ------------------------------------------------------------------------------------------


def latest_run(conn: Connection) -> RunRef | None:
    """The run whose forecasts are in use: the latest as-of date (then the highest run id). None before the first."""
    row = conn.execute(
        select(prophet_fit_meta.c.run_id, prophet_fit_meta.c.as_of)
        .order_by(desc(prophet_fit_meta.c.as_of), desc(prophet_fit_meta.c.run_id))
        .limit(1)
    ).first()
    return RunRef(int(row[0]), row[1]) if row else None


def run_ref(conn: Connection, run_id: int) -> RunRef | None:
    """The stored run ``run_id`` (None: no such forecast-prophet run is stored, or it was replaced)."""
    row = conn.execute(
        select(prophet_fit_meta.c.run_id, prophet_fit_meta.c.as_of).where(prophet_fit_meta.c.run_id == run_id).limit(1)
    ).first()
    return RunRef(int(row[0]), row[1]) if row else None


def fits_of(conn: Connection, run_id: int, user_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The ``prophet_fit_meta`` rows of ``run_id`` for those of ``user_ids`` it has, by user id."""
    wanted = sorted({int(u) for u in user_ids})
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        part = wanted[start : start + _IN_CHUNK]
        rows = conn.execute(
            select(prophet_fit_meta).where(prophet_fit_meta.c.run_id == run_id, prophet_fit_meta.c.user_id.in_(part))
        ).mappings()
        found.update({int(r["user_id"]): dict(r) for r in rows})
    return found


def anomalies_page(
    conn: Connection,
    *,
    run_id: int,
    week: date | None,
    direction: str | None,
    after: tuple[float, int, date] | None,
    limit: int,
) -> Slice:
    """One page of the anomalies of ``run_id`` (optionally of one week, given by its Monday, and/or one direction),
    strongest first: ``score`` descending, then ``user_id``, then ``week_start`` ascending. ``after`` is the
    ``(score, user_id, week_start)`` of the previous page's last row (keyset pagination)."""
    a = prophet_anomalies.c
    query = select(prophet_anomalies).where(a.run_id == run_id)
    if week is not None:
        query = query.where(a.week_start == week)
    if direction is not None:
        query = query.where(a.direction == direction)
    if after is not None:
        score, user_id, after_week = after
        query = query.where(
            or_(
                a.score < score,
                and_(a.score == score, or_(a.user_id > user_id, and_(a.user_id == user_id, a.week_start > after_week))),
            )
        )
    query = query.order_by(a.score.desc(), a.user_id, a.week_start).limit(limit + 1)
    rows = conn.execute(query).mappings().all()
    return Slice(rows[:limit], len(rows) > limit)


def latest_anomaly_week(conn: Connection, run_id: int) -> date | None:
    """The most recent week with an anomaly in run ``run_id`` (None: the run found none)."""
    value = conn.execute(
        select(func.max(prophet_anomalies.c.week_start)).where(prophet_anomalies.c.run_id == run_id)
    ).scalar()
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))
