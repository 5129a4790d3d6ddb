"""Churn events and landmark covariates from daily activity: the pure part of ``fit-survival-churn``.

No SQL and no engine here: :mod:`learnpulse.store.survival` returns per-student, per-day activity and this module
turns it into survival rows (and the small helpers the job needs to evaluate a fit), so every rule below can be
checked by hand on tiny frames. Days are local calendar days (``LEARNPULSE_TIMEZONE``, as build-kpi buckets them).

**Definitions** (``T`` = ``SURVIVAL_EVENT_THRESHOLD_DAYS``, ``A`` = the as-of date):

- *Active day*: a day with at least one attempt.
- *Churn gap*: a run of at least ``T`` consecutive days without an attempt. It *begins* on the day after the last
  attempt before it. It can only be recognised once ``T`` days have passed: a gap beginning on day ``g`` is known
  to be a churn gap when ``g + T - 1 <= A``; a shorter run of empty days at ``A`` is not (yet) churn.
- *Landmark* ``L``: a date, read like an as-of date: at the end of day ``L``, knowing only days ``<= L``.
  A student is *at risk* ("active so far") at ``L`` when they have an attempt on some day ``<= L`` and the run of
  empty days since their last active day ``l`` is shorter than ``T``: ``L - l <= T - 1``.
- *Outcome* at ``L``: the first churn gap beginning after ``l``. The current run of empty days (beginning on
  ``l + 1 <= L``) counts if it reaches ``T`` days: the student who has been away 12 days is close to churning, and
  that is exactly what S must say. Time ``t = max(g - L, 1)`` days: a gap already under way at ``L`` or beginning
  on ``L + 1`` is at ``t = 1``; a gap beginning on ``L + k`` at ``t = k``.
- *Censoring*: the last gap start that can be judged is ``A - T + 1``, so a row with no recognised churn gap is
  censored at ``A - T + 1 - L`` days; every row is also censored at the horizon ``H = T`` (sliding-window
  landmarking, van Houwelingen 2007): the model only has to describe the next ``T`` days, which is all S asks.
  A landmark needs at least one day of follow-up: ``L <= A - T``.
- *S* at the as-of date: the landmark is ``A`` itself and ``S = P(t <= T | x)``: the probability that a churn gap
  begins on or before ``A + T`` (the current run of empty days included), given the student is active so far.

**No look-ahead**: every covariate at ``L`` is computed from days ``<= L`` only (the tests move attempts to
``L + 1`` and check that nothing changes), and the outcome only from days ``> l``.

**Covariates** (``COVARIATES``, units in each entry): recency, frequency, regularity, intensity, accuracy and its
trend, study time and tenure, over the ``W = max(28, T)`` days ending at ``L`` (the *recent window*) and the four
7-day blocks ending at ``L``. Windows that reach back before a student's first attempt count only the days since
it (a new student is not "inactive" before they arrived). The frames the store returns are per student and day, so
everything is a cumulative sum over a dense (students x days) matrix: no per-row Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

EPOCH = date(1970, 1, 1)
RECENT_DAYS = 28  # the recent window is max(RECENT_DAYS, T) days
BLOCKS = 4  # 7-day blocks for the weekly regularity and the accuracy trend
LANDMARK_SPACING_DAYS = 7
_NEVER = np.iinfo(np.int32).max


@dataclass(frozen=True)
class Covariate:
    name: str
    unit: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "unit": self.unit, "description": self.description}


COVARIATES: tuple[Covariate, ...] = (
    Covariate("days_since_last_attempt", "days", "days from the last active day to L (0: attempted on day L)"),
    Covariate("active_days_last_7", "days", "active days among the 7 days ending at L"),
    Covariate(
        "active_share_recent",
        "fraction",
        "share of active days in the recent window (only days since the first attempt count)",
    ),
    Covariate("log_attempts_recent", "log(1 + attempts)", "natural log of 1 + attempts in the recent window"),
    Covariate("attempts_per_active_day", "attempts/day", "attempts per active day in the recent window"),
    Covariate("accuracy_recent", "fraction", "correct / attempts in the recent window"),
    Covariate(
        "accuracy_trend",
        "fraction/week",
        "attempt-weighted least-squares slope of weekly accuracy over the four 7-day blocks ending at L "
        "(0 with fewer than two blocks with attempts)",
    ),
    Covariate("minutes_per_active_day", "minutes/day", "recorded time spent / 60 per active day in the recent window"),
    Covariate(
        "weekly_active_days_sd",
        "days",
        "standard deviation of active days across the four 7-day blocks ending at L (blocks since the first "
        "attempt; 0 with one block): bursty students score high",
    ),
    Covariate(
        "longest_gap_recent",
        "days",
        "longest run of days without an attempt in the recent window, the current run included",
    ),
    Covariate(
        "tenure_days_capped",
        "days",
        "days from the first attempt ever to L, capped at the recent window's length W (new students differ; "
        "longer tenures are not extrapolated)",
    ),
)
COVARIATE_NAMES: tuple[str, ...] = tuple(c.name for c in COVARIATES)


def day_number(value: date) -> int:
    """Days since 1970-01-01 (the store's integer form of a local date)."""
    return (value - EPOCH).days


def day_of(number: int) -> date:
    return EPOCH + timedelta(days=int(number))


def recent_days(threshold_days: int) -> int:
    """Length W of the recent window: 28 days, or T when T is longer (an at-risk student then still has an
    attempt in it)."""
    return max(RECENT_DAYS, int(threshold_days))


def landmark_dates(as_of: date, *, lookback_days: int, threshold_days: int) -> list[date]:
    """Training landmarks, newest first: ``A - T``, ``A - T - 7``, ... down to the first day of the lookback
    window ``A - lookback_days + 1``. Each has at least one day of follow-up; all fall on the as-of date's
    weekday, like the scoring landmark (``A`` itself)."""
    first = as_of - timedelta(days=lookback_days - 1)
    out = []
    landmark = as_of - timedelta(days=threshold_days)
    while landmark >= first:
        out.append(landmark)
        landmark -= timedelta(days=LANDMARK_SPACING_DAYS)
    return out


def history_start(landmarks: Sequence[date], threshold_days: int) -> date:
    """First day of data the covariates of ``landmarks`` (and the at-risk rule) need."""
    return min(landmarks) - timedelta(days=recent_days(threshold_days) - 1)


def _to_day_numbers(values: pd.Series) -> IntArray:
    if pd.api.types.is_integer_dtype(values):
        return values.to_numpy(dtype=np.int64)
    days = pd.to_datetime(values).to_numpy(dtype="datetime64[D]")
    return days.astype(np.int64)


def _cumsum0(matrix: npt.NDArray[Any], dtype: Any) -> npt.NDArray[Any]:
    """Cumulative sums along days with a leading zero column: window [a, b] = c[:, b + 1] - c[:, a]."""
    out = np.zeros((matrix.shape[0], matrix.shape[1] + 1), dtype=dtype)
    np.cumsum(matrix, axis=1, dtype=dtype, out=out[:, 1:])
    return out


@dataclass(frozen=True)
class DailyActivity:
    """Per-student activity over the days ``start .. end`` (inclusive; ``end`` is the as-of date) as dense matrices.

    Build it with :meth:`from_frames`. Column ``j`` is day ``start + j``.
    """

    user_ids: IntArray  # (n,), ascending
    first_day: IntArray  # (n,) day number of the student's first attempt ever (may precede start)
    start: int  # day number of column 0
    end: int  # day number of the last column (the as-of date)
    attempts: npt.NDArray[np.int32]  # (n, days)
    correct: npt.NDArray[np.int32]
    seconds: FloatArray  # recorded time spent

    @classmethod
    def from_frames(
        cls, daily: pd.DataFrame, first_days: pd.DataFrame | None, *, start: date, end: date
    ) -> DailyActivity:
        """``daily``: ``user_id, day, attempts, correct, time_spent_s`` (one row per student and active day; ``day``
        a date or a day number); rows outside ``start .. end`` are ignored. ``first_days``: ``user_id, first_day``
        (each student's first active day ever); None = the first active day within the frame."""
        s, e = day_number(start), day_number(end)
        if e < s:
            raise ValueError(f"end {end} is before start {start}")
        days = _to_day_numbers(daily["day"]) if len(daily) else np.zeros(0, dtype=np.int64)
        keep = (days >= s) & (days <= e)
        users_col = daily["user_id"].to_numpy(dtype=np.int64)[keep]
        days = days[keep]
        user_ids = np.unique(users_col)
        n, width = len(user_ids), e - s + 1
        row = np.searchsorted(user_ids, users_col)
        col = days - s
        attempts = np.zeros((n, width), dtype=np.int32)
        correct = np.zeros((n, width), dtype=np.int32)
        seconds = np.zeros((n, width), dtype=np.float64)
        np.add.at(attempts, (row, col), daily["attempts"].to_numpy(dtype=np.int64)[keep].astype(np.int32))
        np.add.at(correct, (row, col), daily["correct"].to_numpy(dtype=np.int64)[keep].astype(np.int32))
        secs = daily["time_spent_s"].to_numpy(dtype=np.float64, na_value=0.0)[keep]
        np.add.at(seconds, (row, col), np.nan_to_num(secs))
        first_in_frame = np.where((attempts > 0).any(axis=1), s + (attempts > 0).argmax(axis=1), _NEVER).astype(
            np.int64
        )
        first = first_in_frame
        if first_days is not None and len(first_days):
            known = pd.Series(
                _to_day_numbers(first_days["first_day"]), index=first_days["user_id"].to_numpy(dtype=np.int64)
            )
            looked_up = known.reindex(user_ids).to_numpy(dtype=np.float64)
            first = np.where(np.isnan(looked_up), first_in_frame, np.minimum(looked_up, first_in_frame)).astype(
                np.int64
            )
        return cls(user_ids, first, s, e, attempts, correct, seconds)

    @property
    def days(self) -> int:
        return self.end - self.start + 1


class _Sums:
    """Cumulative sums and recency indexes of one ``DailyActivity`` (computed once for all landmarks)."""

    def __init__(self, act: DailyActivity, threshold_days: int) -> None:
        active = act.attempts > 0
        self.act = act
        self.active_cum = _cumsum0(active, np.int32)
        self.attempts_cum = _cumsum0(act.attempts, np.int64)
        self.correct_cum = _cumsum0(act.correct, np.int64)
        self.seconds_cum = _cumsum0(act.seconds, np.float64)
        cols = np.arange(act.days, dtype=np.int32)
        # last active column <= j (-1: none)
        self.last_active = np.maximum.accumulate(np.where(active, cols, np.int32(-1)), axis=1)
        # columns where an observable churn gap begins: the day before is active and the T days from it are
        # empty, all within the data (g + T - 1 <= end)
        t = int(threshold_days)
        starts = np.zeros(active.shape, dtype=bool)
        if act.days - t >= 1:
            g = np.arange(1, act.days - t + 1)
            empty = (self.active_cum[:, g + t] - self.active_cum[:, g]) == 0
            starts[:, g] = active[:, g - 1] & empty
        # first churn-gap start at or after column j (_NEVER: none observable)
        nxt = np.where(starts, cols, np.int32(_NEVER))
        self.next_gap_start = np.minimum.accumulate(nxt[:, ::-1], axis=1)[:, ::-1]

    def window(self, cum: npt.NDArray[Any], lo: int, hi: int) -> npt.NDArray[Any]:
        """Per-student sum over columns ``lo .. hi`` (``lo`` clipped at 0)."""
        result: npt.NDArray[Any] = cum[:, hi + 1] - cum[:, max(lo, 0)]
        return result


def _covariates_at(sums: _Sums, landmark: int, threshold_days: int) -> tuple[BoolArray, dict[str, FloatArray]]:
    """At-risk mask and every covariate (for all students; callers keep the at-risk rows) at day ``landmark``."""
    act = sums.act
    j = landmark - act.start
    if not 0 <= j < act.days:
        raise ValueError(f"landmark {day_of(landmark)} is outside the activity data")
    t = int(threshold_days)
    w = recent_days(t)
    last = sums.last_active[:, j].astype(np.int64)
    at_risk = (last >= 0) & (j - last <= t - 1)
    tenure = (landmark - act.first_day).astype(np.float64)
    first_col = act.first_day - act.start  # may be negative
    lo = j - w + 1
    observed = np.clip(np.minimum(w, tenure + 1), 1, None)
    active_recent = sums.window(sums.active_cum, lo, j).astype(np.float64)
    attempts = sums.window(sums.attempts_cum, lo, j).astype(np.float64)
    correct = sums.window(sums.correct_cum, lo, j).astype(np.float64)
    seconds = sums.window(sums.seconds_cum, lo, j)
    per_active = np.maximum(active_recent, 1.0)

    # four 7-day blocks ending at L: block k covers columns j-7k-6 .. j-7k
    block_att = np.empty((act.user_ids.size, BLOCKS))
    block_cor = np.empty_like(block_att)
    block_act = np.empty_like(block_att)
    for k in range(BLOCKS):
        hi = j - 7 * k
        if hi < 0:
            block_att[:, k] = block_cor[:, k] = block_act[:, k] = 0.0
            continue
        block_att[:, k] = sums.window(sums.attempts_cum, hi - 6, hi)
        block_cor[:, k] = sums.window(sums.correct_cum, hi - 6, hi)
        block_act[:, k] = sums.window(sums.active_cum, hi - 6, hi)
    started = (j - 7 * np.arange(BLOCKS))[None, :] >= first_col[:, None]  # block ends on/after the first attempt
    n_blocks = started.sum(axis=1)
    mean_act = (block_act * started).sum(axis=1) / np.maximum(n_blocks, 1)
    sd_act = np.sqrt(((block_act - mean_act[:, None]) ** 2 * started).sum(axis=1) / np.maximum(n_blocks, 1))

    x = -np.arange(BLOCKS, dtype=np.float64)[None, :]  # weeks relative to L
    wgt = block_att
    acc = np.divide(block_cor, wgt, out=np.zeros_like(wgt), where=wgt > 0)
    sw = wgt.sum(axis=1)
    safe_sw = np.maximum(sw, 1e-12)
    xm = (wgt * x).sum(axis=1) / safe_sw
    ym = (wgt * acc).sum(axis=1) / safe_sw
    num = (wgt * (x - xm[:, None]) * (acc - ym[:, None])).sum(axis=1)
    den = (wgt * (x - xm[:, None]) ** 2).sum(axis=1)
    trend = np.where(((wgt > 0).sum(axis=1) >= 2) & (den > 1e-12), num / np.maximum(den, 1e-12), 0.0)

    # longest run of empty days in the recent window (only days since the first attempt)
    window_start = np.maximum(lo, first_col)
    longest = np.zeros(act.user_ids.size)
    for col in range(max(lo, 0), j + 1):
        run = col - np.maximum(sums.last_active[:, col], window_start - 1)
        longest = np.maximum(longest, np.where(col >= window_start, run, 0))

    values = {
        "days_since_last_attempt": (j - last).astype(np.float64),
        "active_days_last_7": sums.window(sums.active_cum, j - 6, j).astype(np.float64),
        "active_share_recent": active_recent / observed,
        "log_attempts_recent": np.log1p(attempts),
        "attempts_per_active_day": attempts / per_active,
        "accuracy_recent": np.divide(correct, attempts, out=np.full_like(attempts, 0.5), where=attempts > 0),
        "accuracy_trend": trend,
        "minutes_per_active_day": seconds / 60.0 / per_active,
        "weekly_active_days_sd": sd_act,
        "longest_gap_recent": longest.astype(np.float64),
        "tenure_days_capped": np.clip(tenure, 0, w),
    }
    return at_risk, values


def landmark_rows(
    activity: DailyActivity, landmarks: Sequence[date], *, threshold_days: int, horizon_days: int | None = None
) -> pd.DataFrame:
    """One row per landmark and student at risk there: ``user_id, landmark, duration, event`` and the covariates.

    ``duration`` (days, >= 1) and ``event`` (1 = a churn gap began at ``duration``; 0 = censored there) follow the
    module's definitions, with ``activity.end`` as the as-of date and the horizon ``horizon_days`` (default T).
    """
    t = int(threshold_days)
    horizon = int(horizon_days) if horizon_days is not None else t
    sums = _Sums(activity, t)
    last_start = activity.end - t + 1  # the last gap start that can be judged
    frames = []
    for landmark_date in landmarks:
        landmark = day_number(landmark_date)
        follow = min(last_start - landmark, horizon)
        if follow < 1:
            raise ValueError(f"landmark {landmark_date} has no follow-up: it must be on or before as-of - T")
        at_risk, values = _covariates_at(sums, landmark, t)
        rows = np.flatnonzero(at_risk)
        j = landmark - activity.start
        last = sums.last_active[rows, j].astype(np.int64)
        gap = sums.next_gap_start[rows, last + 1].astype(np.int64)  # column of the first churn gap after l
        time = np.maximum(gap - j, 1)
        event = (gap != _NEVER) & (time <= follow)
        frame = pd.DataFrame(
            {
                "user_id": activity.user_ids[rows],
                "landmark": landmark_date,
                "duration": np.where(event, time, follow).astype(np.int64),
                "event": event.astype(np.int64),
            }
        )
        for name in COVARIATE_NAMES:
            frame[name] = values[name][rows]
        frames.append(frame)
    if not frames:
        return _empty_rows()
    return pd.concat(frames, ignore_index=True)


def _empty_rows() -> pd.DataFrame:
    columns: dict[str, Any] = {
        "user_id": np.zeros(0, np.int64),
        "landmark": np.zeros(0, object),
        "duration": np.zeros(0, np.int64),
        "event": np.zeros(0, np.int64),
    }
    columns.update({name: np.zeros(0) for name in COVARIATE_NAMES})
    return pd.DataFrame(columns)


def at_risk_covariates(activity: DailyActivity, landmark: date, *, threshold_days: int) -> pd.DataFrame:
    """``user_id`` and the covariates of every student at risk at ``landmark`` (scoring: the as-of date)."""
    sums = _Sums(activity, threshold_days)
    at_risk, values = _covariates_at(sums, day_number(landmark), threshold_days)
    rows = np.flatnonzero(at_risk)
    frame = pd.DataFrame({"user_id": activity.user_ids[rows]})
    for name in COVARIATE_NAMES:
        frame[name] = values[name][rows]
    return frame


# --- evaluation helpers ------------------------------------------------------------------------------------------


def heldout_students(user_ids: npt.ArrayLike, fraction: float) -> BoolArray:
    """Deterministic split by student: True for the ``fraction`` of students whose splitmix64 hash of ``user_id``
    falls lowest. Every row of a student lands on the same side, so held-out figures are on unseen students."""
    z = np.asarray(user_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    unit = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return unit < fraction


def calibration_table(predicted: npt.ArrayLike, observed: npt.ArrayLike, groups: int = 10) -> list[dict[str, Any]]:
    """Predicted vs observed event fraction in ``groups`` equal-sized groups of rows ordered by prediction
    (deciles by default; ties in rank are broken by row order)."""
    p = np.asarray(predicted, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    out = []
    for k, idx in enumerate(np.array_split(order, min(groups, len(p)))):
        if len(idx) == 0:
            continue
        out.append(
            {
                "group": k + 1,
                "n": len(idx),
                "predicted": float(p[idx].mean()),
                "observed": float(o[idx].mean()),
                "predicted_min": float(p[idx].min()),
                "predicted_max": float(p[idx].max()),
            }
        )
    return out


def mean_calibration_gap(table: Sequence[dict[str, Any]]) -> float | None:
    """Mean absolute difference between predicted and observed across the groups of :func:`calibration_table`."""
    if not table:
        return None
    return float(np.mean([abs(g["predicted"] - g["observed"]) for g in table]))


def top_factors(contributions: pd.DataFrame, values: pd.DataFrame, k: int = 3) -> list[list[dict[str, Any]]]:
    """Per row, the (up to) ``k`` covariates that raise the hazard most: positive ``beta_j * (x_j - mean_j)``,
    largest first, each with the covariate's value and ``hazard_ratio = exp(contribution)`` (how much it multiplies
    the hazard compared with a student at the training means)."""
    names = list(contributions.columns)
    c = contributions.to_numpy(dtype=np.float64)
    v = values[names].to_numpy(dtype=np.float64)
    if c.size == 0:
        return [[] for _ in range(len(contributions))]
    order = np.argsort(-c, axis=1, kind="stable")[:, :k]
    top_c = np.take_along_axis(c, order, axis=1)
    top_v = np.take_along_axis(v, order, axis=1)
    out: list[list[dict[str, Any]]] = []
    for r in range(c.shape[0]):
        row = []
        for m in range(order.shape[1]):
            contribution = float(top_c[r, m])
            if not contribution > 0:
                break
            row.append(
                {
                    "covariate": names[int(order[r, m])],
                    "value": _round(float(top_v[r, m])),
                    "contribution": _round(contribution),
                    "hazard_ratio": _round(math.exp(contribution)),
                }
            )
        out.append(row)
    return out


def _round(value: float, digits: int = 4) -> float:
    return float(round(value, digits))
