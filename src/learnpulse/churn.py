"""Churn events, landmark covariates and the churn model: the pure part of ``fit-survival-churn``.

No SQL here: :mod:`learnpulse.store.survival` returns per-student, per-day activity and this module turns it into
survival rows (and the small helpers the job needs to evaluate a fit), so every rule below can be checked by hand
on tiny frames; :class:`ChurnModel` (at the end, with the maths) is the model fitted to those rows: a logistic
regression for the first day of the landmark clock and a Cox model (:mod:`learnpulse.engines.survival`) for the
days after it. Days are local calendar days (``LEARNPULSE_TIMEZONE``, as build-kpi buckets them).

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
  More than half of the events are at ``t = 1`` (a gap under way at ``L`` or beginning on ``L + 1``), which is why
  :class:`ChurnModel` gives the first day a model of its own.

**No look-ahead**: every covariate at ``L`` is computed from days ``<= L`` only (the tests move attempts to
``L + 1`` and check that nothing changes), and the outcome only from days ``> l``.

**Covariates** (``COVARIATES``, units in each entry): recency, frequency, regularity, intensity, accuracy and its
trend, study time and tenure, over the ``W = max(28, T)`` days ending at ``L`` (the *recent window*) and the four
7-day blocks ending at ``L``. Windows that reach back before a student's first attempt count only the days since
it (a new student is not "inactive" before they arrived). The frames the store returns are per student and day, so
everything is a cumulative sum over a dense (students x days) matrix: no per-row Python loops. The model adds
``DERIVED`` features computed from a row's covariates alone (:func:`model_features`), so they inherit both rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from learnpulse.engines.base import envelope, open_envelope
from learnpulse.engines.logistic import Logit, finite_array, softplus
from learnpulse.engines.survival import CoxPH
from learnpulse.errors import InsufficientDataError, InvalidInputError
from learnpulse.variables import Variable

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

EPOCH = date(1970, 1, 1)
RECENT_DAYS = 28  # the recent window is max(RECENT_DAYS, T) days
BLOCKS = 4  # 7-day blocks for the weekly regularity and the accuracy trend
LANDMARK_SPACING_DAYS = 7
_NEVER = np.iinfo(np.int32).max


Covariate = Variable  # name, unit, description


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
    """Per row, the (up to) ``k`` covariates that raise the risk most: the largest positive ``contributions``
    (:meth:`ChurnModel.contributions`: how much the covariate raises the log of the student's ``T``-day cumulative
    hazard over what it would be with that covariate at its training mean), largest first, each with the
    covariate's value and ``hazard_ratio = exp(contribution)`` (how many times the covariate multiplies that
    cumulative hazard). Values are rounded to 4 decimals; a contribution that rounds to 0 is no reason."""
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
            if not _round(contribution) > 0:
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


# --- the churn model: a first-day logistic part and a Cox part for the later days -------------------------------

FIRST_DAY = "first_day"
LATER_DAYS = "later_days"
MODEL_ENGINE = "churn-two-part"
MODEL_FORMAT_VERSION = 1

DERIVED: tuple[Covariate, ...] = (
    Covariate(
        "log_p_idle_day",
        "ln(probability)",
        "ln(1 - v): v = (a + 1) / (n + 2) is the share of active days in the recent window smoothed by Laplace's "
        "rule of succession (a active days among the n observed since the first attempt, n <= W), so that a short "
        "history is not read as certainty",
    ),
    Covariate(
        "log_p_idle_to_threshold",
        "ln(probability)",
        "(T - d) * ln(1 - v), d = days_since_last_attempt: ln of the chance of no attempt on any of the T - d days "
        "the current run of empty days still needs to become a churn gap, were days independent at rate v",
    ),
    Covariate(
        "log_p_idle_to_threshold_7d",
        "ln(probability)",
        "(T - d) * ln(1 - v7), v7 = (a7 + 1) / (n7 + 2) from the 7 days ending at L (a7 = active_days_last_7, "
        "n7 = min(7, n)): the same with the latest week's rate",
    ),
    Covariate("log_days_to_threshold", "ln(days)", "ln(T - d): days the current run still needs to reach T"),
    Covariate("active_on_landmark", "0/1", "1 when d = 0 (attempted on day L: a gap can only begin on L + 1)"),
    Covariate(
        "short_window_x_log_p_idle_day",
        "ln(probability)",
        "(1 - n / W) * ln(1 - v): lets v count for less when it comes from fewer than W observed days",
    ),
    Covariate(
        "short_window_x_log_p_idle_to_threshold",
        "ln(probability)",
        "(1 - n / W) * (T - d) * ln(1 - v): the same for the chance that the current run reaches T",
    ),
)
DERIVED_NAMES: tuple[str, ...] = tuple(c.name for c in DERIVED)
# The first day is about the current run of empty days: every derived feature describes it. After day 1 the
# student has come back, so the later-days part needs only the (smoothed) visit rate and how reliable it is.
FEATURES: dict[str, tuple[str, ...]] = {
    FIRST_DAY: COVARIATE_NAMES + DERIVED_NAMES,
    LATER_DAYS: (*COVARIATE_NAMES, "log_p_idle_day", "short_window_x_log_p_idle_day"),
}
UNITS: dict[str, str] = {c.name: c.unit for c in (*COVARIATES, *DERIVED)}


def covariate_matrix(covariates: pd.DataFrame, names: Sequence[str] = COVARIATE_NAMES) -> FloatArray:
    """The columns ``names`` of ``covariates`` as a finite float matrix; a missing column or a non-finite value is
    an :class:`InvalidInputError` naming it."""
    missing = [n for n in names if n not in covariates.columns]
    if missing:
        raise InvalidInputError(
            f"missing covariate(s): {', '.join(missing)}",
            {"problems": [{"column": n, "reason": "missing"} for n in missing]},
        )
    try:
        x = covariates[list(names)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            "covariates must be numeric", {"problems": [{"column": ", ".join(names), "reason": "not numeric"}]}
        ) from exc
    bad = ~np.isfinite(x)
    if bad.any():
        cols = sorted({names[int(j)] for j in np.flatnonzero(bad.any(axis=0))})
        raise InvalidInputError(
            f"covariate(s) {', '.join(cols)} have missing or non-finite values",
            {"problems": [{"column": c, "reason": "missing or non-finite"} for c in cols]},
        )
    return x


def model_features(covariates: pd.DataFrame, *, threshold_days: int, recent_window_days: int) -> pd.DataFrame:
    """The model's features: the covariates (``COVARIATE_NAMES``) and the ``DERIVED`` ones computed from them.

    A pure function of each row's covariates, ``T`` and ``W`` (nothing is learned from data, so a student's
    features depend on their own days alone and use only days up to the landmark, like the covariates). With
    ``d = clip(days_since_last_attempt, 0, T - 1)`` (an at-risk student has ``d <= T - 1``), ``n = clip(min(W,
    tenure_days_capped + 1), 1, W)`` observed days in the recent window, ``a = active_share_recent * n`` active days
    among them, ``v = (a + 1) / (n + 2)`` and ``v7 = (a7 + 1) / (n7 + 2)`` (``a7 = active_days_last_7``,
    ``n7 = min(7, n)``): see ``DERIVED`` for each feature. ``v`` and ``v7`` lie strictly inside (0, 1), so every
    logarithm is finite.
    """
    t, w = int(threshold_days), int(recent_window_days)
    x = covariate_matrix(covariates)
    col = {name: x[:, j] for j, name in enumerate(COVARIATE_NAMES)}
    d = np.clip(col["days_since_last_attempt"], 0.0, t - 1.0)
    n = np.clip(np.minimum(w, col["tenure_days_capped"] + 1.0), 1.0, w)
    a = np.clip(col["active_share_recent"], 0.0, 1.0) * n
    n7 = np.minimum(7.0, n)
    a7 = np.clip(col["active_days_last_7"], 0.0, n7)
    log_idle = np.log1p(-(a + 1.0) / (n + 2.0))
    log_idle_7 = np.log1p(-(a7 + 1.0) / (n7 + 2.0))
    short = 1.0 - n / w
    derived = {
        "log_p_idle_day": log_idle,
        "log_p_idle_to_threshold": (t - d) * log_idle,
        "log_p_idle_to_threshold_7d": (t - d) * log_idle_7,
        "log_days_to_threshold": np.log(t - d),
        "active_on_landmark": (d <= 0.0).astype(np.float64),
        "short_window_x_log_p_idle_day": short * log_idle,
        "short_window_x_log_p_idle_to_threshold": short * (t - d) * log_idle,
    }
    out = pd.DataFrame(x, columns=list(COVARIATE_NAMES), index=covariates.index)
    for name in DERIVED_NAMES:
        out[name] = derived[name]
    return out


@dataclass(frozen=True, eq=False)  # numpy fields: compare to_json() instead
class ChurnModel:
    """The churn model: ``P(churn gap begins within h days of the landmark | x)`` on the landmark clock.

    **Why two parts.** More than half of the churn events are at ``t = 1``: a gap already under way at the landmark
    (or beginning the next day). Whether the current run of empty days reaches ``T`` depends on the covariates in a
    way the later days do not share (``days_since_last_attempt`` and the visit rate dominate it), so a single
    proportional-hazards fit cannot give the first day its own covariate effects, and S was miscalibrated. The
    first day has its own model; the days after it keep a Cox model:

    - *first day*: ``p1(x) = P(t = 1 | x) = expit(b0 + (f1(x) - m1) . c1)``, a logistic regression on every landmark
      row (each row's day-1 outcome is known: every row has at least one day of follow-up);
    - *later days*: among rows that survived day 1 and are followed beyond it (``duration >= 2``), a Cox model
      ``h(t | x) = h02(t) exp((f2(x) - m2) . b2)`` for ``t >= 2`` (:class:`~learnpulse.engines.survival.CoxPH`,
      Efron ties). All its rows are at risk from ``t = 1``, so this is the Cox model of ``t`` given ``t > 1``.

    ``f1`` and ``f2`` are :func:`model_features` (``FEATURES``; any feature constant in the training rows is left
    out and listed in ``dropped``). The derived features put the first day's mechanism on the linear-predictor
    scale: the current run of empty days becomes churn when the student stays away ``T - d`` more days, which has
    log-probability ``(T - d) ln(1 - v)`` for a visit rate ``v``. ``v`` is smoothed (Laplace) and may count for less
    when it comes from a short window, because about half of the training rows are of students with less than
    ``W`` days of history while most scored students have a full window: without that, the rate's effect fitted
    on the mixture is too weak for the scored students (regression dilution) and S too flat across deciles.
    (Also tried on simulated schools: a single Cox model with the same derived features, which stays
    miscalibrated; and isotonic recalibration of S on out-of-fold rows, which helped about as much as the
    short-window terms but costs five extra fits and explains nothing. Not tried: covariate x log(t) terms in one
    Cox model.) The survival function is ``S(t | x) = 1`` for ``t < 1`` and
    ``(1 - p1(x)) exp(-H02(t) exp(lp2(x)))`` for ``t >= 1`` (``H02 = 0`` before the first later event, ``t >= 2``),
    i.e. the cumulative hazard ``L(t | x) = [t >= 1] ln(1 + e^eta1(x)) + H02(t) exp(lp2(x))``. Then
    ``P(t <= at + h | t > at, x) = 1 - exp(-(L(at + h) - L(at)))``, and S at a landmark is that with ``at = 0``,
    ``h = T``: ``S = p1 + (1 - p1) (1 - exp(-H02(T) exp(lp2)))``.

    **Explanations.** ``linear_predictor(x) = ln L(T | x) - ln L(T | xbar)``, ``xbar`` the training means of the
    covariates (``reference``): the log of how many times the student's ``T``-day cumulative hazard is that of a
    student at the means. A covariate's ``contribution`` is ``ln L(T | x) - ln L(T | x with that covariate at its
    training mean)``; ``exp(contribution)`` is how much that covariate multiplies the student's cumulative hazard.
    With a single Cox model both reduce to the usual ``lp`` and ``beta_j (x_j - mean_j)``; here a covariate acts
    through its derived features too, and the contributions need not add up to the linear predictor.
    """

    threshold_days: int
    recent_window_days: int
    reference: FloatArray  # training means of COVARIATE_NAMES
    covariate_scales: FloatArray  # training SDs of COVARIATE_NAMES
    first_day: Logit
    later_days: CoxPH
    dropped: tuple[tuple[str, str], ...] = ()  # (component, feature) constant in the training rows

    covariates: tuple[str, ...] = COVARIATE_NAMES

    @classmethod
    def fit(cls, rows: pd.DataFrame, *, threshold_days: int) -> ChurnModel:
        """Fit both parts on landmark rows (``duration, event`` and the covariates, as :func:`landmark_rows`
        makes them). Too few events for a part is an :class:`InsufficientDataError`."""
        t = int(threshold_days)
        w = recent_days(t)
        features = model_features(rows, threshold_days=t, recent_window_days=w)
        duration = rows["duration"].to_numpy(dtype=np.float64)
        event = rows["event"].to_numpy(dtype=np.float64)
        later = duration >= 2
        if not (event[later] > 0).any():
            raise InsufficientDataError(
                f"no churn gap begins after the first day in {int(later.sum())} rows followed beyond it: the "
                "later-days model has no event",
                {"rows": int(later.sum()), "events": 0},
            )
        dropped: list[tuple[str, str]] = []

        def varying(component: str, mask: BoolArray) -> list[str]:
            keep = []
            for name in FEATURES[component]:
                if np.ptp(features[name].to_numpy()[mask]) > 0:
                    keep.append(name)
                else:
                    dropped.append((component, name))
            return keep

        everyone = np.ones(len(rows), dtype=bool)
        first_names = varying(FIRST_DAY, everyone)
        later_names = varying(LATER_DAYS, later)
        first = Logit.fit(features[first_names].to_numpy(), (event > 0) & (duration <= 1), first_names)
        cox = CoxPH().fit(duration[later], event[later], features.loc[later, later_names])
        x = covariate_matrix(rows)
        return cls(
            threshold_days=t,
            recent_window_days=w,
            reference=x.mean(axis=0),
            covariate_scales=x.std(axis=0, ddof=1) if len(x) > 1 else np.zeros(x.shape[1]),
            first_day=first,
            later_days=cox,
            dropped=tuple(dropped),
        )

    # --- prediction -------------------------------------------------------------------------------------------

    def _parts(self, covariates: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
        """Per row: ``-ln(1 - p1) = ln(1 + e^eta1)`` and the later-days relative hazard ``exp(lp2)``."""
        f = model_features(covariates, threshold_days=self.threshold_days, recent_window_days=self.recent_window_days)
        first = softplus(self.first_day.log_odds(f[list(self.first_day.features)].to_numpy()))
        relative = np.exp(self.later_days.linear_predictor(f[self.later_days.feature_names_ or []]))
        return first, cast(FloatArray, relative)

    def cumulative_hazard(self, covariates: pd.DataFrame, times: npt.ArrayLike) -> FloatArray:
        """``L(t | x)`` per row for one time per row (or one time for all rows): see the class docstring."""
        first, relative = self._parts(covariates)
        tt = np.broadcast_to(np.asarray(times, dtype=np.float64), first.shape)
        return cast(
            FloatArray, np.where(tt >= 1.0, first, 0.0) + self.later_days.baseline_cumulative_hazard(tt) * relative
        )

    def event_probability(
        self, covariates: pd.DataFrame, *, at: float | npt.ArrayLike = 0.0, horizon: float | npt.ArrayLike | None = None
    ) -> FloatArray:
        """``P(t <= at + horizon | t > at, x) = 1 - exp(-(L(at + horizon) - L(at)))`` per row (``horizon``
        default ``T``); ``at = 0``, ``horizon = T`` is S."""
        h = float(self.threshold_days) if horizon is None else horizon
        n = len(covariates)
        start = np.broadcast_to(np.asarray(at, dtype=np.float64), (n,))
        span = np.broadcast_to(np.asarray(h, dtype=np.float64), (n,))
        if (start < 0).any() or (span < 0).any():
            raise InvalidInputError("at and horizon must be >= 0", {"problems": [{"column": "at/horizon"}]})
        first, relative = self._parts(covariates)
        base = self.later_days.baseline_cumulative_hazard

        def cumulative(tt: FloatArray) -> FloatArray:
            return cast(FloatArray, np.where(tt >= 1.0, first, 0.0) + base(tt) * relative)

        return cast(FloatArray, -np.expm1(-(cumulative(start + span) - cumulative(start))))

    def _log_cumulative_hazard(self, covariates: pd.DataFrame) -> FloatArray:
        first, relative = self._parts(covariates)
        h02 = float(self.later_days.baseline_cumulative_hazard([float(self.threshold_days)])[0])
        return cast(FloatArray, np.log(first + h02 * relative))

    def _reference_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.reference[None, :], columns=list(self.covariates))

    def linear_predictor(self, covariates: pd.DataFrame) -> FloatArray:
        """``ln L(T | x) - ln L(T | reference)`` per row (see the class docstring)."""
        reference = float(self._log_cumulative_hazard(self._reference_frame())[0])
        return self._log_cumulative_hazard(covariates) - reference

    def contributions(self, covariates: pd.DataFrame) -> pd.DataFrame:
        """Per row and covariate: ``ln L(T | x) - ln L(T | x with the covariate at its training mean)``."""
        x = pd.DataFrame(covariate_matrix(covariates), columns=list(self.covariates), index=covariates.index)
        full = self._log_cumulative_hazard(x)
        out = {}
        for j, name in enumerate(self.covariates):
            moved = x.copy()
            moved[name] = self.reference[j]
            out[name] = full - self._log_cumulative_hazard(moved)
        return pd.DataFrame(out, index=covariates.index)

    # --- results ----------------------------------------------------------------------------------------------

    @property
    def log_likelihood(self) -> float:
        """First-day Bernoulli log-likelihood + later-days Cox partial log-likelihood (the two parts' likelihoods
        multiply: the first depends on the day-1 outcomes, the second on the later days given survival)."""
        return self.first_day.log_likelihood + float(self.later_days.log_likelihood_ or 0.0)

    @property
    def n_events(self) -> dict[str, int]:
        return {FIRST_DAY: self.first_day.events, LATER_DAYS: int(self.later_days.events_ or 0)}

    def formula(self) -> str:
        later = self.later_days.feature_names_ or []
        return f"logit P(t = 1) ~ {' + '.join(self.first_day.features)}; Surv(t, churn) | t > 1 ~ {' + '.join(later)}"

    def coefficients(self) -> list[dict[str, Any]]:
        """One row per part and feature: the first day's log odds ratios (``odds_ratio`` with its 95% interval),
        then the later days' log hazard ratios (``hazard_ratio`` with its interval); se, z, p, training mean, sd."""
        rows: list[dict[str, Any]] = []
        for component, table in ((FIRST_DAY, self.first_day.summary()), (LATER_DAYS, self.later_days.summary())):
            for name, values in table.iterrows():
                rows.append(
                    {
                        "component": component,
                        "covariate": str(name),
                        "unit": UNITS.get(str(name), ""),
                        **{str(k): float(v) for k, v in values.items()},
                    }
                )
        return rows

    # --- serialisation ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The fitted model as plain JSON types (exact round trip through :meth:`from_json`)."""
        return envelope(
            MODEL_ENGINE,
            MODEL_FORMAT_VERSION,
            {
                "threshold_days": self.threshold_days,
                "recent_window_days": self.recent_window_days,
                "covariates": list(self.covariates),
                "reference": [float(v) for v in self.reference],
                "covariate_scales": [float(v) for v in self.covariate_scales],
                "dropped": [{"component": c, "feature": f} for c, f in self.dropped],
                FIRST_DAY: self.first_day.to_json(),
                LATER_DAYS: self.later_days.to_json(),
            },
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChurnModel:
        """Rebuild a fitted model from :meth:`to_json` output (another engine's or version's JSON, e.g. a plain
        ``CoxPH`` stored by an earlier version of the job, is an :class:`InvalidInputError`)."""
        body = open_envelope(data, MODEL_ENGINE, {MODEL_FORMAT_VERSION})
        try:
            covariates = tuple(str(v) for v in body["covariates"])
            if covariates != COVARIATE_NAMES:
                raise ValueError(f"covariates {covariates} are not this version's {COVARIATE_NAMES}")
            p = len(covariates)
            first = Logit.from_json(body[FIRST_DAY])
            unknown = set(first.features) - set(FEATURES[FIRST_DAY])
            if unknown:
                raise ValueError(f"unknown first-day features {sorted(unknown)}")
            model = cls(
                threshold_days=int(body["threshold_days"]),
                recent_window_days=int(body["recent_window_days"]),
                reference=finite_array(body["reference"], (p,), "reference"),
                covariate_scales=finite_array(body["covariate_scales"], (p,), "covariate_scales"),
                first_day=first,
                later_days=CoxPH.from_json(body[LATER_DAYS]),
                dropped=tuple((str(d["component"]), str(d["feature"])) for d in body["dropped"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"malformed serialised {MODEL_ENGINE} model: {exc}", {"engine": MODEL_ENGINE}
            ) from exc
        if not set(model.later_days.feature_names_ or []) <= set(FEATURES[LATER_DAYS]):
            raise InvalidInputError(f"malformed serialised {MODEL_ENGINE} model: unknown later-days features", {})
        return model
