"""SQL of the learner segments: the window's ``weekly_kpi`` / ``features_topic_daily`` rows in, ``segment_meta`` and
``user_segment`` out, the fitted models in ``job_state``, and the reads of the segment routes.

**Runs.** A run is identified by its ``run_id`` and dated by its ``as_of``. Storing a run replaces every stored run
with the same as-of date (both tables), so re-running a date leaves one run for it. The *latest* run is the one
with the latest as-of date (ties, impossible after replacement, go to the larger ``run_id``); the *previous* run
of an as-of date ``A`` is the latest run with an as-of date before ``A``.

**Models.** ``segment_meta`` holds what a reader needs (ids, names, sizes, centroids in the features' units, quality
figures) but not the fitted :class:`~learnpulse.engines.segments.SegmentModel` (scaling, centres in the scaled
space, GMM covariances), which the next run needs for matching and ``POST /cluster/predict`` for scoring feature
rows. It is kept in ``job_state`` under the job's name as ``{"models": [{"as_of", "run_id", "model"}, ...]}`` (newest
as-of date last), not copied into every segment row's ``quality``: a GMM with full covariances is tens of
kilobytes, and one copy per run is enough. The entry of an as-of date is replaced with the date's rows, in the same
transaction. Only the newest :data:`MODEL_HISTORY` dates are kept (a year at the twice-monthly schedule), which
bounds the state's size; re-running a date older than that finds no previous model and starts a new lineage of
ids (see :mod:`learnpulse.jobs.cluster_segments`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, and_, delete, desc, func, insert, select

from learnpulse.store.bulk import date_literal, day_number_sql, insert_frame, numeric_frame
from learnpulse.store.runs import get_state, put_state
from learnpulse.store.tables import segment_meta, user_segment

MODEL_HISTORY = 24

_EPOCH = np.datetime64("1970-01-01", "D")


def _as_dates(day_numbers: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Day numbers (days since 1970-01-01) as ``datetime64[D]``, which the feature builder reads as dates."""
    return _EPOCH + day_numbers.astype("timedelta64[D]")


def load_window(conn: Connection, *, first_day: date, last_day: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``weekly_kpi`` rows of the weeks starting in ``first_day .. last_day`` and the ``features_topic_daily``
    rows of the days ``first_day .. last_day``, in the columns :func:`learnpulse.segment_features.build_features`
    takes (dates as ``datetime64[D]``; a NULL ``i_t`` is NaN)."""
    dialect = conn.dialect.name
    between = f"BETWEEN {date_literal(dialect, first_day)} AND {date_literal(dialect, last_day)}"
    weekly = numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "week_start")} AS week_start, attempts, correct, accuracy,
               active_days, study_minutes, i_t
        FROM weekly_kpi
        WHERE week_start {between}
        """,
        {
            "user_id": np.int64,
            "week_start": np.int64,
            "attempts": np.int64,
            "correct": np.int64,
            "accuracy": np.float64,
            "active_days": np.int64,
            "study_minutes": np.float64,
            "i_t": np.float64,
        },
    )
    daily = numeric_frame(
        conn,
        f"""
        SELECT user_id, {day_number_sql(dialect, "day")} AS day, topic_id, attempts, correct
        FROM features_topic_daily
        WHERE day {between}
        """,
        {"user_id": np.int64, "day": np.int64, "topic_id": np.int64, "attempts": np.int64, "correct": np.int64},
    )
    weekly["week_start"] = _as_dates(weekly["week_start"].to_numpy())
    daily["day"] = _as_dates(daily["day"].to_numpy())
    return weekly, daily


# --- runs ----------------------------------------------------------------------------------------------------


def _run_of(conn: Connection, condition: Any | None) -> dict[str, Any] | None:
    query = select(segment_meta.c.run_id, segment_meta.c.as_of).distinct()
    if condition is not None:
        query = query.where(condition)
    row = conn.execute(query.order_by(desc(segment_meta.c.as_of), desc(segment_meta.c.run_id)).limit(1)).first()
    return {"run_id": int(row[0]), "as_of": row[1]} if row else None


def latest_run(conn: Connection) -> dict[str, Any] | None:
    """``{"run_id", "as_of"}`` of the latest stored run (None before the first)."""
    return _run_of(conn, None)


def previous_run(conn: Connection, as_of: date) -> dict[str, Any] | None:
    """``{"run_id", "as_of"}`` of the latest stored run dated before ``as_of`` (None: there is none)."""
    return _run_of(conn, segment_meta.c.as_of < as_of)


def max_segment_id(conn: Connection, *, other_than: date) -> int:
    """The largest segment id stored by runs of as-of dates other than ``other_than`` (0: none). Every id a lineage
    issued appears in some run's rows (a vanished one in the run after its last), so new ids above it are unused."""
    value = conn.execute(select(func.max(segment_meta.c.segment_id)).where(segment_meta.c.as_of != other_than)).scalar()
    return int(value or 0)


def segments_of(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """The ``segment_meta`` rows of a run: current segments by size (largest first), then vanished ones; ties by id."""
    rows = conn.execute(select(segment_meta).where(segment_meta.c.run_id == run_id)).fetchall()
    found = [dict(r._mapping) for r in rows]
    return sorted(found, key=lambda r: (r["status"] == "vanished", -int(r["size"]), int(r["segment_id"])))


# --- models --------------------------------------------------------------------------------------------------


def _models(conn: Connection, job: str) -> list[dict[str, Any]]:
    state = get_state(conn, job) or {}
    return [dict(m) for m in state.get("models", [])]


def stored_model(conn: Connection, job: str, run_id: int) -> dict[str, Any] | None:
    """The fitted model (``SegmentModel.to_json()``) that run ``run_id`` stored, None when it is not kept."""
    for entry in _models(conn, job):
        if int(entry["run_id"]) == run_id:
            model: dict[str, Any] = entry["model"]
            return model
    return None


# --- writing -------------------------------------------------------------------------------------------------


def record_run(
    conn: Connection,
    *,
    job: str,
    run_id: int,
    as_of: date,
    segments: Sequence[dict[str, Any]],
    assignments: pd.DataFrame,
    model: dict[str, Any],
) -> int:
    """Store one run: its ``segment_meta`` rows (``segments``: every column but ``run_id`` and ``as_of``), its
    ``user_segment`` rows (``assignments``: ``user_id, segment_id, distance, probability``) and its model, replacing
    the rows and model of any run with the same as-of date. Returns the rows written to the two tables."""
    same_date = select(segment_meta.c.run_id).where(segment_meta.c.as_of == as_of).distinct()
    old = [int(r) for r in conn.execute(same_date).scalars()]
    if old:
        conn.execute(delete(user_segment).where(user_segment.c.run_id.in_(old)))
        conn.execute(delete(segment_meta).where(segment_meta.c.run_id.in_(old)))
    conn.execute(insert(segment_meta), [{**row, "run_id": run_id, "as_of": as_of} for row in segments])
    written = len(segments) + insert_frame(
        conn,
        user_segment,
        assignments.assign(run_id=run_id),
        columns=["run_id", "user_id", "segment_id", "distance", "probability"],
    )
    models = [m for m in _models(conn, job) if m["as_of"] != as_of.isoformat()]
    models.append({"as_of": as_of.isoformat(), "run_id": run_id, "model": model})
    models.sort(key=lambda m: (str(m["as_of"]), int(m["run_id"])))
    put_state(conn, job, {"models": models[-MODEL_HISTORY:]})
    return written


# --- reads for the API ---------------------------------------------------------------------------------------


def student_segments(conn: Connection, run_id: int, user_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The ``user_segment`` rows of ``user_ids`` in run ``run_id`` with their segment's name, by user id (students
    without a row are absent)."""
    ids = sorted({int(u) for u in user_ids})
    if not ids:
        return {}
    rows = conn.execute(
        select(
            user_segment.c.user_id,
            user_segment.c.segment_id,
            user_segment.c.distance,
            user_segment.c.probability,
            segment_meta.c.name,
        )
        .join(
            segment_meta,
            and_(
                segment_meta.c.run_id == user_segment.c.run_id, segment_meta.c.segment_id == user_segment.c.segment_id
            ),
        )
        .where(user_segment.c.run_id == run_id, user_segment.c.user_id.in_(ids))
    ).fetchall()
    return {int(r.user_id): dict(r._mapping) for r in rows}
