"""SQL of the churn model: activity for the survival dataset, fitted models, scores, ``weekly_kpi.s``, alerts.

The activity the churn model needs comes from ``features_topic_daily`` (build-kpi's per student, topic and local
day aggregates of the attempts): summed over topics inside the database it is one row per student and active day,
far smaller than the attempts. Days travel as integer day numbers (days since 1970-01-01) so that no date strings
are parsed in Python. Writes are delete-and-replace by as-of date, so a re-run gives the same rows, not duplicates.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, and_, delete, desc, insert, or_, select, text

from learnpulse.store import runs
from learnpulse.store.buckets import date_param, week_start
from learnpulse.store.bulk import date_literal, day_number_sql, insert_frame, numeric_frame, users_sql
from learnpulse.store.kpi import KpiState
from learnpulse.store.reads import Slice
from learnpulse.store.tables import (
    attempt,
    inactivity_alert,
    survival_fit_meta,
    survival_score,
    user_goal,
    weekly_kpi,
)

BUILD_KPI = "build-kpi"
_IN_CHUNK = 500  # ids per IN (...) list
EPOCH = date(1970, 1, 1)


def kpi_built_through(conn: Connection) -> date | None:
    """The as-of date of the last successful build-kpi (None: never built)."""
    stored = runs.get_state(conn, BUILD_KPI)
    return KpiState.from_json(stored).as_of if stored else None


# --- activity --------------------------------------------------------------------------------------------------


def load_daily_activity(
    conn: Connection, *, start: date, end: date, user_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """One row per student and active local day in ``start .. end``: ``user_id, day`` (day number), ``attempts,
    correct, time_spent_s`` (summed over topics). ``user_ids``: only those students (None: all)."""
    dialect = conn.dialect.name
    return numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "day")} AS day,
               SUM(attempts) AS attempts, SUM(correct) AS correct, SUM(time_spent_s) AS time_spent_s
        FROM features_topic_daily
        WHERE day BETWEEN {date_literal(dialect, start)} AND {date_literal(dialect, end)}{users_sql(user_ids)}
        GROUP BY user_id, day
        """,
        {"user_id": np.int64, "day": np.int64, "attempts": np.int64, "correct": np.int64, "time_spent_s": np.float64},
    )


def load_first_days(conn: Connection, *, end: date, user_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """Every student's first active local day on or before ``end``: ``user_id, first_day`` (day number).
    ``user_ids``: only those students (None: all)."""
    dialect = conn.dialect.name
    return numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "MIN(day)")} AS first_day
        FROM features_topic_daily WHERE day <= {date_literal(dialect, end)}{users_sql(user_ids)} GROUP BY user_id
        """,
        {"user_id": np.int64, "first_day": np.int64},
    )


def load_last_active_days(conn: Connection, *, start: date, end: date) -> pd.DataFrame:
    """Students with an active day in ``start .. end`` and their last one: ``user_id, last_day`` (day number)."""
    dialect = conn.dialect.name
    return numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "MAX(day)")} AS last_day
        FROM features_topic_daily
        WHERE day BETWEEN {date_literal(dialect, start)} AND {date_literal(dialect, end)}
        GROUP BY user_id
        """,
        {"user_id": np.int64, "last_day": np.int64},
    )


def load_last_days_of(conn: Connection, user_ids: Sequence[int], *, end: date) -> dict[int, date]:
    """The last active local day on or before ``end`` of each of ``user_ids`` that has one."""
    dialect = conn.dialect.name
    frame = numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "MAX(day)")} AS last_day
        FROM features_topic_daily WHERE day <= {date_literal(dialect, end)}{users_sql(user_ids)} GROUP BY user_id
        """,
        {"user_id": np.int64, "last_day": np.int64},
    )
    return {
        int(u): EPOCH + timedelta(days=int(d))
        for u, d in zip(frame["user_id"].to_numpy(), frame["last_day"].to_numpy(), strict=True)
    }


def known_students(conn: Connection, user_ids: Sequence[int]) -> set[int]:
    """Those of ``user_ids`` the store knows: with an attempt (at any time), a goal or a ``weekly_kpi`` row."""
    wanted = sorted({int(u) for u in user_ids})
    found: set[int] = set()
    for table in (attempt, user_goal, weekly_kpi):
        for chunk in range(0, len(wanted), _IN_CHUNK):
            part = wanted[chunk : chunk + _IN_CHUNK]
            found.update(
                int(u) for u in conn.execute(select(table.c.user_id).where(table.c.user_id.in_(part))).scalars()
            )
    return found


# --- fitted models ---------------------------------------------------------------------------------------------


def replace_fit(conn: Connection, row: dict[str, Any]) -> None:
    """Store one fitted model (a ``survival_fit_meta`` row), replacing any earlier fit for the same as-of date."""
    conn.execute(delete(survival_fit_meta).where(survival_fit_meta.c.as_of == row["as_of"]))
    conn.execute(insert(survival_fit_meta).values(**row))


def latest_fit(conn: Connection) -> dict[str, Any] | None:
    """The latest stored model (highest as-of date; every stored fit succeeded: a failed run writes nothing)."""
    found = conn.execute(
        select(survival_fit_meta).order_by(desc(survival_fit_meta.c.as_of), desc(survival_fit_meta.c.run_id)).limit(1)
    ).first()
    return dict(found._mapping) if found else None


# --- scores and weekly_kpi.s -----------------------------------------------------------------------------------


def replace_scores(conn: Connection, as_of: date, scores: pd.DataFrame) -> int:
    """Store the scores of ``as_of`` (``user_id, run_id, s, linear_predictor, days_since_last_attempt,
    top_factors`` (lists)), replacing that date's earlier scores."""
    conn.execute(delete(survival_score).where(survival_score.c.as_of == as_of))
    frame = scores.assign(as_of=as_of, top_factors=[_json(v) for v in scores["top_factors"]])
    return insert_frame(conn, survival_score, frame, columns=[c.name for c in survival_score.columns])


def write_weekly_s(conn: Connection, as_of: date) -> int:
    """Set ``weekly_kpi.s`` of the week containing ``as_of`` from that date's scores; returns the rows updated.

    Only the ``s`` column of rows build-kpi created is touched: a row of the week whose student is not scored
    (already in a churn gap, or only active after ``as_of``) gets NULL rather than a stale value. No row is
    inserted for a scored student without activity that week (see the README).
    """
    dialect = conn.dialect.name
    result = conn.execute(
        text("""
        UPDATE weekly_kpi SET s = (
            SELECT sc.s FROM survival_score sc WHERE sc.as_of = :as_of AND sc.user_id = weekly_kpi.user_id
        )
        WHERE week_start = :week
        """),
        {"as_of": date_param(dialect, as_of), "week": date_param(dialect, week_start(as_of))},
    )
    return int(result.rowcount)


def latest_scores(conn: Connection, *, on_or_before: date) -> tuple[date | None, pd.DataFrame]:
    """The most recent scores on or before a date: (their as-of date, ``user_id, s, top_factors``)."""
    newest = conn.execute(
        select(survival_score.c.as_of)
        .where(survival_score.c.as_of <= on_or_before)
        .order_by(desc(survival_score.c.as_of))
        .limit(1)
    ).scalar()
    if newest is None:
        return None, pd.DataFrame({"user_id": np.zeros(0, np.int64), "s": np.zeros(0), "top_factors": []})
    result = conn.execute(
        select(survival_score.c.user_id, survival_score.c.s, survival_score.c.top_factors).where(
            survival_score.c.as_of == newest
        )
    )
    rows = result.fetchall()
    frame = pd.DataFrame(
        {
            "user_id": np.array([r[0] for r in rows], dtype=np.int64),
            "s": np.array([r[1] for r in rows], dtype=np.float64),
            "top_factors": [r[2] for r in rows],
        }
    )
    return newest, frame


# --- inactivity alerts -----------------------------------------------------------------------------------------


def replace_alerts(conn: Connection, alert_date: date, alerts: pd.DataFrame) -> int:
    """Store the alerts of ``alert_date`` (``user_id, run_id, last_active_day, days_inactive, s, s_as_of, tier,
    reasons, top_factors``; JSON columns as Python lists), replacing that day's earlier alerts."""
    conn.execute(delete(inactivity_alert).where(inactivity_alert.c.alert_date == alert_date))
    factors: list[str | None] = [None if v is None else _json(v) for v in alerts["top_factors"]]
    frame = alerts.assign(alert_date=alert_date, reasons=[_json(v) for v in alerts["reasons"]])
    frame["top_factors"] = pd.Series(factors, index=frame.index, dtype=object)
    return insert_frame(conn, inactivity_alert, frame, columns=[c.name for c in inactivity_alert.columns])


def latest_alert_date(conn: Connection) -> date | None:
    """The latest day with alerts (None: no alerts yet)."""
    value = conn.execute(select(inactivity_alert.c.alert_date).order_by(desc(inactivity_alert.c.alert_date)).limit(1))
    return value.scalar()


def alerts_page(
    conn: Connection,
    *,
    alert_date: date,
    tier: str | None,
    after: tuple[float | None, int] | None,
    limit: int,
) -> Slice:
    """One page of the alerts of ``alert_date`` (optionally of one tier), riskiest first: ``s`` descending with
    unscored students (``s`` NULL) last, then ``user_id`` ascending. ``after`` is the ``(s, user_id)`` of the
    previous page's last row (keyset pagination)."""
    a = inactivity_alert.c
    query = select(inactivity_alert).where(a.alert_date == alert_date)
    if tier is not None:
        query = query.where(a.tier == tier)
    if after is not None:
        s, user_id = after
        if s is None:
            query = query.where(a.s.is_(None), a.user_id > user_id)
        else:
            query = query.where(or_(a.s < s, and_(a.s == s, a.user_id > user_id), a.s.is_(None)))
    query = query.order_by(a.s.desc().nulls_last(), a.user_id).limit(limit + 1)
    rows = conn.execute(query).mappings().all()
    return Slice(rows[:limit], len(rows) > limit)


def highest_risk(conn: Connection, as_of: date, limit: int = 10) -> list[dict[str, Any]]:
    """The ``limit`` students with the highest S of ``as_of`` (``survival_score``), with that day's alert tier
    (None: not flagged): ``user_id, s, days_since_last_attempt, top_factors, tier``."""
    sc, al = survival_score.c, inactivity_alert.c
    query = (
        select(sc.user_id, sc.s, sc.days_since_last_attempt, sc.top_factors, al.tier)
        .select_from(
            survival_score.outerjoin(inactivity_alert, and_(al.alert_date == sc.as_of, al.user_id == sc.user_id))
        )
        .where(sc.as_of == as_of)
        .order_by(sc.s.desc(), sc.user_id)
        .limit(limit)
    )
    return [dict(row) for row in conn.execute(query).mappings()]


def _json(value: Any) -> str:
    """JSON text for a JSON column written by ``insert_frame`` (which passes values through as they are)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
