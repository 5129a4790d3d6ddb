"""Per-student features for learner segments: the pure part of ``cluster-segments``.

No SQL and no engine here: the job reads ``weekly_kpi`` and ``features_topic_daily`` (columns as in
:mod:`learnpulse.store.tables`) and this module turns them into one row of features per student, so every rule below
can be checked by hand on tiny frames. Weeks are build-kpi's local Monday-start weeks; days are local days.

**Window.** The ``lookback_weeks`` (``CLUSTER_LOOKBACK_WEEKS``, 12) *complete* weeks ending on or before the as-of
date ``A``: the last one ends on the Sunday on or before ``A`` (``A`` itself when it is a Sunday). A week still under
way is left out, because its partial counts would lower every per-week rate. Week ``w = 0 .. W-1`` counts from the
window's first Monday. Rows outside the window are ignored.

**Span.** A student's *span* is the weeks from their first to their last week with activity in the window
(``span = last - first + 1``); *active weeks* are the weeks with a ``weekly_kpi`` row. Rates are per week of the span,
so a student who stopped coming (churn, the survival model's business) is described by how they studied while they
studied, and one who joined late is not diluted by the weeks before they arrived.

**Few weeks.** A student with fewer than ``min_active_weeks`` (3) active weeks in the window is not given features:
they are listed in :attr:`SegmentFeatures.skipped` with the reason ``too_few_active_weeks`` (trend and regularity
need several weeks; two points always lie on a line). Above that, trends are shrunk towards the population by their
uncertainty (below), so a student with three thin weeks gets a trend close to the population's, not a wild one.

**Trends** (``accuracy_trend``, ``i_t_trend``): the slope ``b_i`` of a line through the weekly values ``y_iw``
against the week ``w``, weighted by ``n_iw`` (attempts that week: the weekly value's variance is about
``s^2 / n_iw``) and robust to odd weeks. A sick week or an exam-stress drop (what the anomaly detector looks for) is
one point at the window's edge that would otherwise tip the slope and make it jump when the window moves: the line
is Tukey's biweight M-estimate, started from the weighted least-squares line and refitted ``ROBUST_ITERATIONS`` (6)
times with weights ``n_iw u_iw``, ``u_iw = (1 - (r_iw / c)^2)^2`` (0 when ``|r_iw| >= c = 4.685``), where
``r_iw = (y_iw - fitted) / sqrt(s^2 / n_iw)``. ``s^2``, the residual variance per attempt, is pooled over students
and made robust with the MAD: ``s^2 = s2_LS (1.4826 median |r|)^2`` from the least-squares residuals.

The slope's variance is ``v_i = s^2 / S_xx,i`` (``S_xx,i = sum_w u_iw n_iw (w - wbar_i)^2`` with the final
weights). Empirical Bayes (a normal prior ``b_i ~ N(m, tau^2)``, DerSimonian-Laird moment estimate of ``tau^2``
with weights ``1 / v_i``, ``m`` their weighted mean) gives the reported trend

    trend_i = m + (b_i - m) * tau^2 / (tau^2 + v_i)

so noisy slopes (few weeks, few attempts) are pulled towards ``m`` and precise ones are kept. The prior is estimated
on the students being featurised; :class:`TrendPrior` records ``s^2``, ``m`` and ``tau^2`` and can be passed back in
(``priors=``) to featurise another chunk of students with the same prior (and the same robust scale).

**I_t.** ``weekly_kpi.i_t`` as stored (the accuracy placeholder ``100 (correct + 1) / (attempts + 2)`` or, once
calibrated, the IRT index). A week whose ``i_t`` is missing gets that placeholder from its own counts, the rule
build-kpi uses, so a missing model value is not a missing feature.

**Features** (``FEATURES``, units in each entry) describe ability (level and trend of accuracy and of ``I_t``),
volume, regularity and the spread over topics. ``LOG_FEATURES`` are unbounded, right-skewed rates whose logarithm
(``log1p``) is what the clustering should compare (a student doing 40 attempts a week differs from one doing 20 as
much as 20 from 10); active days per week are bounded by 7 and stay linear. Everything is vectorised over rows
(``numpy.bincount`` over a student index): no loop per student.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from learnpulse.errors import InvalidInputError
from learnpulse.store.buckets import complete_weeks
from learnpulse.variables import Variable

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

LOOKBACK_WEEKS = 12  # CLUSTER_LOOKBACK_WEEKS default
MIN_ACTIVE_WEEKS = 3
BIWEIGHT_C = 4.685  # Tukey's constant: 95% efficiency when the weekly values are normal
ROBUST_ITERATIONS = 6
SKIP_TOO_FEW_WEEKS = "too_few_active_weeks"
WEEKLY_COLUMNS = ("user_id", "week_start", "attempts", "correct", "accuracy", "active_days", "study_minutes", "i_t")
DAILY_COLUMNS = ("user_id", "day", "topic_id", "attempts", "correct")
_DAYS_PER_WEEK = 7


Feature = Variable  # name, unit, description


FEATURES: tuple[Feature, ...] = (
    Feature("accuracy_level", "fraction", "correct / attempts over the window"),
    Feature(
        "accuracy_trend",
        "fraction/week",
        "slope of weekly accuracy over the weeks (attempt-weighted, robust to odd weeks: biweight), shrunk "
        "towards the population by its uncertainty (empirical Bayes)",
    ),
    Feature("i_t_level", "index points (0-100)", "attempt-weighted mean of the weekly learning index I_t"),
    Feature(
        "i_t_trend",
        "index points/week",
        "slope of weekly I_t, estimated and shrunk like accuracy_trend",
    ),
    Feature("attempts_per_week", "attempts/week", "attempts per week of the span"),
    Feature("active_days_per_week", "days/week", "days with an attempt per week of the span"),
    Feature(
        "study_minutes_per_week",
        "minutes/week",
        "recorded time spent per week of the span (attempts without a recorded time count 0)",
    ),
    Feature("attempts_per_active_day", "attempts/day", "attempts per day with an attempt (session intensity)"),
    Feature(
        "burstiness",
        "ratio (coefficient of variation)",
        "irregularity of study: sqrt(max(0, v - m (1 - m/7))) / m for the weekly active days over the span "
        "(weeks without activity count 0; m their mean, v their variance): the spread of the weekly activity "
        "rate beyond what day-to-day chance gives a perfectly regular student (0 = steady)",
    ),
    Feature("topics_practised", "topics", "distinct topics with an attempt in the window"),
    Feature(
        "topic_effective_number",
        "topics",
        "exp(Shannon entropy) of the student's attempts over topics: the number of equally used topics with "
        "the same spread (breadth that a single stray attempt does not inflate)",
    ),
    Feature(
        "topic_accuracy_spread",
        "fraction (SD)",
        "standard deviation of accuracy across the student's topics beyond binomial chance: "
        "sqrt(max(0, sum_t n_t (acc_t - acc)^2 / n - acc (1 - acc) (T - 1) / n)) (T topics, n attempts); "
        "0 = equally good at every topic",
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LOG_FEATURES: tuple[str, ...] = ("attempts_per_week", "study_minutes_per_week", "attempts_per_active_day")
"""Unbounded, right-skewed rates that the clustering compares on the ``log1p`` scale
(``SegmentModel(log_features=...)``). ``active_days_per_week`` is bounded (0-7) and stays linear."""


@dataclass(frozen=True)
class TrendPrior:
    """The empirical-Bayes prior of one trend: ``b_i ~ N(mean, tau2)``, robust per-attempt residual variance ``s2``.

    ``s2 = tau2 = inf`` asks for the plain attempt-weighted least-squares slopes (no week is down-weighted, nothing is
    shrunk)."""

    s2: float
    mean: float
    tau2: float
    students: int  # students it was estimated on (0: passed in)

    def shrinkage(self, variance: FloatArray) -> FloatArray:
        """``tau^2 / (tau^2 + v)``: the share of a slope with variance ``v`` that is kept."""
        if math.isinf(self.tau2):
            return np.ones_like(variance)
        with np.errstate(invalid="ignore"):
            out = self.tau2 / (self.tau2 + variance)
        return np.where(np.isfinite(variance), out, 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"s2": self.s2, "mean": self.mean, "tau2": self.tau2, "students": self.students}


@dataclass(frozen=True)
class SegmentFeatures:
    """What :func:`build_features` returns.

    ``features``: one row per student with enough history, index ``user_id`` (ascending), columns ``FEATURE_NAMES``.
    ``coverage``: the same students: ``active_weeks``, ``span_weeks``, ``first_week``, ``last_week`` (Mondays),
    ``attempts`` (in the window). ``skipped``: ``user_id``, ``reason``, ``active_weeks`` for students with rows in the
    window but too little history. ``priors``: the trend priors used.
    """

    features: pd.DataFrame
    coverage: pd.DataFrame
    skipped: pd.DataFrame
    window_start: date  # first Monday
    window_end: date  # last Sunday
    lookback_weeks: int
    min_active_weeks: int
    priors: dict[str, TrendPrior]

    def summary(self) -> dict[str, Any]:
        """JSON-able description of the run's feature set (for the job's meta record)."""
        return {
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "lookback_weeks": self.lookback_weeks,
            "min_active_weeks": self.min_active_weeks,
            "students": len(self.features),
            "skipped": {str(k): int(v) for k, v in self.skipped["reason"].value_counts().sort_index().items()},
            "features": [f.to_json() for f in FEATURES],
            "log_features": list(LOG_FEATURES),
            "trend_priors": {k: v.to_json() for k, v in self.priors.items()},
        }


def window(as_of: date, lookback_weeks: int = LOOKBACK_WEEKS) -> tuple[date, date]:
    """``(first Monday, last Sunday)`` of the ``lookback_weeks`` complete weeks ending on or before ``as_of``."""
    if lookback_weeks < 1:
        raise InvalidInputError(
            f"lookback_weeks must be at least 1, got {lookback_weeks}",
            {"problems": [{"column": "lookback_weeks", "reason": "less than 1"}]},
        )
    first, last_monday = complete_weeks(as_of, lookback_weeks)
    return first, last_monday + timedelta(days=_DAYS_PER_WEEK - 1)


# --- input handling ----------------------------------------------------------------------------------------------


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"{name} lacks column(s): {', '.join(missing)}",
            {"problems": [{"table": name, "column": c, "reason": "missing"} for c in missing]},
        )


def _days(values: pd.Series) -> IntArray:
    """Dates (date objects, strings or datetime64) as days since 1970-01-01."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(pd.to_datetime(values).to_numpy(dtype="datetime64[D]").astype(np.int64), dtype=np.int64)


def _numeric(frame: pd.DataFrame, column: str, name: str, *, allow_nan: bool = False) -> FloatArray:
    series = frame[column]
    if not (pd.api.types.is_numeric_dtype(series) or series.dtype == object):
        raise InvalidInputError(
            f"{name}.{column} is not numeric ({series.dtype})",
            {"problems": [{"table": name, "column": column, "reason": f"not numeric ({series.dtype})"}]},
        )
    try:
        values = pd.to_numeric(series).to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name}.{column} is not numeric",
            {"problems": [{"table": name, "column": column, "reason": "not numeric"}]},
        ) from exc
    bad = ~np.isfinite(values) if not allow_nan else np.isinf(values)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InvalidInputError(
            f"{name}.{column} has {len(rows)} missing or non-finite value(s) (first at row {int(rows[0])})",
            {"problems": [{"table": name, "column": column, "row": int(rows[0]), "reason": "missing or non-finite"}]},
        )
    return values


def _epoch_day(value: date) -> int:
    return (value - date(1970, 1, 1)).days


# --- trends ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lines:
    """Per student: the weighted least-squares line ``y = my + b (x - mx)`` and its weighted ``S_xx``."""

    b: FloatArray
    mx: FloatArray
    my: FloatArray
    sxx: FloatArray

    def residuals(self, idx: IntArray, x: FloatArray, y: FloatArray) -> FloatArray:
        return np.asarray(y - self.my[idx] - self.b[idx] * (x - self.mx[idx]), dtype=np.float64)


def _wls(idx: IntArray, n: int, x: FloatArray, y: FloatArray, w: FloatArray) -> _Lines:
    """``w``-weighted least-squares line of ``y`` on ``x`` per student (rows with ``idx == i``); ``S_xx = 0``
    (one distinct week with weight) gives slope 0."""
    sw = np.bincount(idx, w, n)
    safe = np.where(sw > 0, sw, 1.0)
    mx = np.bincount(idx, w * x, n) / safe
    my = np.bincount(idx, w * y, n) / safe
    dx = x - mx[idx]  # centred per student first: no cancellation in the sums of squares
    sxx = np.asarray(np.bincount(idx, w * dx * dx, n), dtype=np.float64)
    sxy = np.bincount(idx, w * dx * (y - my[idx]), n)
    ok = sxx > 1e-12
    b = np.asarray(np.where(ok, sxy / np.where(ok, sxx, 1.0), 0.0), dtype=np.float64)
    return _Lines(b=b, mx=np.asarray(mx, dtype=np.float64), my=np.asarray(my, dtype=np.float64), sxx=sxx)


def _biweight(u: FloatArray) -> FloatArray:
    """Tukey's biweight: ``(1 - u^2)^2`` for ``|u| < 1``, else 0."""
    return np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)


def _robust_lines(
    idx: IntArray, n: int, x: FloatArray, y: FloatArray, attempts: FloatArray, *, s2: float | None
) -> tuple[_Lines, float]:
    """Biweight M-estimate of every student's line and the robust per-attempt residual variance ``s^2``.

    Start: the attempt-weighted least-squares lines. Scale: unless given, ``s^2 = s2_LS * (1.4826 med |r|)^2`` with
    ``s2_LS = sum RSS / sum (weeks - 2)`` pooled over students and ``r`` the residuals standardised by
    ``sqrt(s2_LS / n_w)`` (the MAD makes ``s^2`` immune to the outlying weeks it is used to find). Then
    ``ROBUST_ITERATIONS`` reweighted fits with weights ``n_w * biweight(r_w / BIWEIGHT_C)``, ``r_w`` standardised by
    ``sqrt(s^2 / n_w)``.
    """
    lines = _wls(idx, n, x, y, attempts)
    if s2 is None:
        weeks = np.bincount(idx, None, n)
        has_dof = weeks > 2
        rows = has_dof[idx]
        if not rows.any():
            return lines, math.nan
        resid = lines.residuals(idx, x, y)
        rss = np.bincount(idx, attempts * resid * resid, n)
        s2_ls = float(rss[has_dof].sum() / (weeks[has_dof] - 2.0).sum())
        if not s2_ls > 0:
            return lines, s2_ls
        standardised = resid[rows] / np.sqrt(s2_ls / attempts[rows])
        s2 = s2_ls * float(1.4826 * np.median(np.abs(standardised))) ** 2
    if not s2 > 0:
        return lines, s2
    for _ in range(ROBUST_ITERATIONS):
        r = lines.residuals(idx, x, y) / np.sqrt(s2 / attempts)
        lines = _wls(idx, n, x, y, attempts * _biweight(r / BIWEIGHT_C))
    return lines, s2


def _estimate_prior(b: FloatArray, sxx: FloatArray, s2: float) -> TrendPrior:
    """DerSimonian-Laird ``tau^2`` and the precision-weighted mean of the slopes (variances ``s2 / S_xx``)."""
    ok = sxx > 1e-12
    n_ok = int(ok.sum())
    if not (math.isfinite(s2) and s2 > 0) or n_ok < 2:
        # One student, or every line exact: nothing to shrink towards; keep the slopes as measured.
        mean = float(b[ok].mean()) if n_ok else 0.0
        return TrendPrior(s2=s2 if math.isfinite(s2) else 0.0, mean=mean, tau2=math.inf, students=n_ok)
    w = sxx[ok] / s2  # 1 / v_i
    mean = float(np.sum(w * b[ok]) / w.sum())
    q = float(np.sum(w * (b[ok] - mean) ** 2))
    denom = float(w.sum() - np.sum(w * w) / w.sum())
    tau2 = max((q - (n_ok - 1)) / denom, 0.0) if denom > 0 else math.inf
    return TrendPrior(s2=s2, mean=mean, tau2=tau2, students=n_ok)


def _shrunk_trend(
    idx: IntArray, n: int, x: FloatArray, y: FloatArray, attempts: FloatArray, *, prior: TrendPrior | None
) -> tuple[FloatArray, TrendPrior]:
    lines, s2 = _robust_lines(idx, n, x, y, attempts, s2=None if prior is None else prior.s2)
    if prior is None:
        prior = _estimate_prior(lines.b, lines.sxx, s2)
    ok = lines.sxx > 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where(ok, prior.s2 / np.where(ok, lines.sxx, 1.0), np.inf)
    return prior.mean + (lines.b - prior.mean) * prior.shrinkage(variance), prior


# --- the features ------------------------------------------------------------------------------------------------


def build_features(
    weekly: pd.DataFrame,
    daily: pd.DataFrame,
    *,
    as_of: date,
    lookback_weeks: int = LOOKBACK_WEEKS,
    min_active_weeks: int = MIN_ACTIVE_WEEKS,
    priors: Mapping[str, TrendPrior] | None = None,
) -> SegmentFeatures:
    """One row of ``FEATURES`` per student from ``weekly_kpi`` and ``features_topic_daily`` rows.

    ``weekly``: ``user_id, week_start, attempts, correct, accuracy, active_days, study_minutes, i_t`` (``i_t`` may be
    missing per row). ``daily``: ``user_id, day, topic_id, attempts, correct``. Dates may be ``date`` objects,
    ISO strings or datetime64. Only rows inside :func:`window` ``(as_of, lookback_weeks)`` are used. ``priors``:
    trend priors (keys ``accuracy_trend``, ``i_t_trend``) to use instead of estimating them from these students.

    Raises :class:`InvalidInputError` for missing columns, non-numeric or missing counts, and students with weekly
    rows in the window but no daily rows (the two tables must come from the same build).
    """
    if min_active_weeks < 2:
        raise InvalidInputError(
            f"min_active_weeks must be at least 2 (a trend needs two weeks), got {min_active_weeks}",
            {"problems": [{"column": "min_active_weeks", "reason": "less than 2"}]},
        )
    _require(weekly, WEEKLY_COLUMNS, "weekly_kpi")
    _require(daily, DAILY_COLUMNS, "features_topic_daily")
    first_monday, last_sunday = window(as_of, lookback_weeks)
    lo, hi = _epoch_day(first_monday), _epoch_day(last_sunday)
    n_weeks = lookback_weeks

    # --- weekly rows in the window
    wday = _days(weekly["week_start"])
    in_window = (wday >= lo) & (wday <= hi)
    wk = weekly.loc[in_window]
    week = ((wday[in_window] - lo) // _DAYS_PER_WEEK).astype(np.int64)
    w_user = wk["user_id"].to_numpy(dtype=np.int64)
    w_att = _numeric(wk, "attempts", "weekly_kpi")
    w_cor = _numeric(wk, "correct", "weekly_kpi")
    w_acc = _numeric(wk, "accuracy", "weekly_kpi")
    w_days = _numeric(wk, "active_days", "weekly_kpi")
    w_min = _numeric(wk, "study_minutes", "weekly_kpi")
    w_it = _numeric(wk, "i_t", "weekly_kpi", allow_nan=True)
    # A week without a model I_t gets build-kpi's placeholder from its own counts.
    w_it = np.where(np.isnan(w_it), 100.0 * (w_cor + 1.0) / (w_att + 2.0), w_it)

    users, w_idx = np.unique(w_user, return_inverse=True)
    w_idx = w_idx.astype(np.int64).ravel()
    n_all = len(users)
    active_weeks = np.bincount(w_idx, None, n_all).astype(np.int64)
    keep = active_weeks >= min_active_weeks
    skipped = pd.DataFrame(
        {
            "user_id": users[~keep],
            "reason": pd.Series([SKIP_TOO_FEW_WEEKS] * int((~keep).sum()), dtype=object),
            "active_weeks": active_weeks[~keep],
        }
    )

    # Re-index the kept students 0..n-1 and drop the rows of the others.
    kept_users = users[keep]
    n = len(kept_users)
    new_index = np.full(n_all, -1, dtype=np.int64)
    new_index[keep] = np.arange(n, dtype=np.int64)
    row_idx = new_index[w_idx]
    rows = row_idx >= 0
    idx = row_idx[rows]
    week = week[rows]
    w_att, w_cor, w_acc, w_days, w_min, w_it = (a[rows] for a in (w_att, w_cor, w_acc, w_days, w_min, w_it))

    first = np.full(n, n_weeks, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    np.minimum.at(first, idx, week)
    np.maximum.at(last, idx, week)
    span = (last - first + 1).astype(np.float64)
    attempts = np.bincount(idx, w_att, n)
    correct = np.bincount(idx, w_cor, n)
    days = np.bincount(idx, w_days, n)
    minutes = np.bincount(idx, w_min, n)
    if n and (attempts <= 0).any():
        raise InvalidInputError(
            "weekly_kpi has students with rows but no attempts in the window",
            {"problems": [{"table": "weekly_kpi", "column": "attempts", "reason": "zero attempts"}]},
        )
    safe_attempts = np.where(attempts > 0, attempts, 1.0)
    safe_days = np.where(days > 0, days, 1.0)

    x = week.astype(np.float64)
    given = dict(priors or {})
    acc_trend, acc_prior = _shrunk_trend(idx, n, x, w_acc, w_att, prior=given.get("accuracy_trend"))
    it_trend, it_prior = _shrunk_trend(idx, n, x, w_it, w_att, prior=given.get("i_t_trend"))

    # Weekly active days over the span, zero weeks included: sums over the rows suffice (zeros add nothing).
    s1 = np.bincount(idx, w_days, n)
    s2 = np.bincount(idx, w_days * w_days, n)
    mean_days = s1 / span
    var_days = np.where(span > 1, (s2 - span * mean_days**2) / np.maximum(span - 1, 1), 0.0)
    excess = np.maximum(var_days - mean_days * (1.0 - mean_days / _DAYS_PER_WEEK), 0.0)
    burstiness = np.where(mean_days > 0, np.sqrt(excess) / np.where(mean_days > 0, mean_days, 1.0), 0.0)

    topics = _topic_features(daily, kept_users, lo, hi)

    features = pd.DataFrame(
        {
            "accuracy_level": correct / safe_attempts,
            "accuracy_trend": acc_trend,
            "i_t_level": np.bincount(idx, w_att * w_it, n) / safe_attempts,
            "i_t_trend": it_trend,
            "attempts_per_week": attempts / span,
            "active_days_per_week": days / span,
            "study_minutes_per_week": minutes / span,
            "attempts_per_active_day": attempts / safe_days,
            "burstiness": burstiness,
            "topics_practised": topics["topics_practised"],
            "topic_effective_number": topics["topic_effective_number"],
            "topic_accuracy_spread": topics["topic_accuracy_spread"],
        },
        index=pd.Index(kept_users, name="user_id"),
    )
    monday = np.datetime64(first_monday.isoformat(), "D")
    coverage = pd.DataFrame(
        {
            "active_weeks": active_weeks[keep],
            "span_weeks": span.astype(np.int64),
            "first_week": pd.Series(monday + (7 * first).astype("timedelta64[D]")).dt.date.to_numpy(),
            "last_week": pd.Series(monday + (7 * last).astype("timedelta64[D]")).dt.date.to_numpy(),
            "attempts": attempts.astype(np.int64),
        },
        index=features.index,
    )
    return SegmentFeatures(
        features=features,
        coverage=coverage,
        skipped=skipped,
        window_start=first_monday,
        window_end=last_sunday,
        lookback_weeks=lookback_weeks,
        min_active_weeks=min_active_weeks,
        priors={"accuracy_trend": acc_prior, "i_t_trend": it_prior},
    )


def _topic_features(daily: pd.DataFrame, users: IntArray, lo: int, hi: int) -> dict[str, FloatArray]:
    """Breadth and spread of accuracy over topics for ``users`` (ascending) from daily rows within ``lo .. hi``."""
    n = len(users)
    dday = _days(daily["day"])
    d_user = daily["user_id"].to_numpy(dtype=np.int64)
    pos = np.searchsorted(users, d_user)
    pos_ok = pos < n
    pos_ok[pos_ok] = users[pos[pos_ok]] == d_user[pos_ok]
    sel = (dday >= lo) & (dday <= hi) & pos_ok
    sub = daily.loc[sel]
    u = pos[sel].astype(np.int64)
    att = _numeric(sub, "attempts", "features_topic_daily")
    cor = _numeric(sub, "correct", "features_topic_daily")
    topic_codes, t = np.unique(sub["topic_id"].to_numpy(dtype=np.int64), return_inverse=True)
    t = t.astype(np.int64).ravel()
    seen = np.bincount(u, None, n) > 0
    if n and not seen.all():
        missing = users[~seen]
        raise InvalidInputError(
            f"weekly_kpi and features_topic_daily disagree: {len(missing)} student(s) have weekly rows but no "
            f"daily rows in the window (first user_id {int(missing[0])}); rebuild the KPIs",
            {"problems": [{"table": "features_topic_daily", "user_id": int(missing[0]), "reason": "no rows"}]},
        )
    # One row per (student, topic): sort-based grouping, so the key space (students x topics) is never allocated.
    pair_key = u * max(len(topic_codes), 1) + t
    pairs, pair_idx = np.unique(pair_key, return_inverse=True)
    pair_idx = pair_idx.astype(np.int64).ravel()
    p_att = np.bincount(pair_idx, att, len(pairs))
    p_cor = np.bincount(pair_idx, cor, len(pairs))
    p_user = pairs // max(len(topic_codes), 1)

    total = np.bincount(p_user, p_att, n)
    total_correct = np.bincount(p_user, p_cor, n)
    safe_total = np.where(total > 0, total, 1.0)
    n_topics = np.bincount(p_user, None, n).astype(np.float64)
    share = p_att / safe_total[p_user]
    entropy = -np.bincount(p_user, np.where(share > 0, share * np.log(np.where(share > 0, share, 1.0)), 0.0), n)
    acc = total_correct / safe_total
    p_acc = np.where(p_att > 0, p_cor / np.where(p_att > 0, p_att, 1.0), 0.0)
    observed = np.bincount(p_user, p_att * (p_acc - acc[p_user]) ** 2, n) / safe_total
    chance = acc * (1.0 - acc) * np.maximum(n_topics - 1.0, 0.0) / safe_total
    return {
        "topics_practised": n_topics,
        "topic_effective_number": np.exp(entropy),
        "topic_accuracy_spread": np.sqrt(np.maximum(observed - chance, 0.0)),
    }
