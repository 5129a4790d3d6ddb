"""fit-survival-churn: the churn model (two parts on landmark rows) and churn risk ``S``.

One run, as of date ``A`` (``T`` = ``SURVIVAL_EVENT_THRESHOLD_DAYS``; definitions in :mod:`learnpulse.churn`):

1. check that build-kpi has built day ``A`` (the activity comes from its ``features_topic_daily``);
2. landmarks ``A - T``, ``A - T - 7``, ... within the last ``SURVIVAL_LOOKBACK_DAYS`` days; one row per landmark
   and student at risk there, covariates from days up to the landmark, outcome = days until a churn gap begins,
   censored at what the data can tell and at the horizon ``T``;
3. split by student (a fixed hash of ``user_id``): 20% held out. Fewer than 10 training events per covariate is an
   ``InsufficientDataError``: the run fails, is recorded as failed, and the previous model stays the latest;
4. fit :class:`~learnpulse.churn.ChurnModel` on the training students' rows: a logistic regression for the
   first day (``t = 1``: mostly gaps already under way at the landmark) and a Cox model
   (:class:`~learnpulse.engines.survival.CoxPH`) for the days after it, on the covariates and features derived
   from them (why two parts, and the maths: the class docstring). Rows of one student at different landmarks are
   correlated; the point estimates are consistent regardless (each landmark's rows are a valid sample), but the
   model-based standard errors are too small by an unknown factor (no cluster-robust SE yet), as
   survival_fit_meta notes;
5. evaluate on the held-out students: Harrell's C of S, and predicted vs observed churn within ``T`` days by
   decile of S on held-out rows with the full ``T``-day follow-up;
6. score every student at risk at ``A``: ``S = P(a churn gap begins within the next T days | x)`` =
   ``model.event_probability(x, at=0, horizon=T)`` on the landmark clock, with each student's top contributing
   covariates; store the model (``survival_fit_meta``), the scores (``survival_score``) and, when
   ``SURVIVAL_UPDATE_KPI`` is true, ``weekly_kpi.s`` of the week containing ``A``.

All writes go through the run's one transaction and replace the rows of the same as-of date.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from learnpulse import churn
from learnpulse.engines.survival import concordance_index
from learnpulse.errors import InsufficientDataError
from learnpulse.jobs.base import Job, JobContext, JobOutcome, json_safe
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.store import survival as store

NAME = "fit-survival-churn"
HELDOUT_FRACTION = 0.2
MIN_EVENTS_PER_COVARIATE = 10
TOP_FACTORS = 3
CALIBRATION_GROUPS = 10


def require_kpi_through(ctx: JobContext) -> None:
    """The churn data come from build-kpi's tables: they must cover the as-of date."""
    check_kpi_through(ctx.conn, ctx.as_of)


def check_kpi_through(conn: Connection, as_of: date) -> None:
    """``InsufficientDataError`` unless build-kpi has built the days up to ``as_of``."""
    built = store.kpi_built_through(conn)
    if built is None or built < as_of:
        raise InsufficientDataError(
            f"build-kpi has {'never run' if built is None else f'built days up to {built} only'}; "
            f"run `learnpulse run build-kpi --as-of {as_of}` first",
            {"as_of": as_of.isoformat(), "kpi_built_through": built.isoformat() if built else None},
        )


def load_activity(
    conn: Connection, *, start: date, end: date, user_ids: Sequence[int] | None = None
) -> churn.DailyActivity:
    """The activity of days ``start .. end`` (``end``: the as-of date), of every student or of ``user_ids`` only
    (each student's covariates and outcome depend on their own days alone, so a subset changes no value)."""
    return churn.DailyActivity.from_frames(
        store.load_daily_activity(conn, start=start, end=end, user_ids=user_ids),
        store.load_first_days(conn, end=end, user_ids=user_ids),
        start=start,
        end=end,
    )


def current_covariates(
    conn: Connection, as_of: date, *, lookback_days: int, threshold_days: int, user_ids: Sequence[int] | None = None
) -> pd.DataFrame:
    """``user_id`` and the covariates at landmark ``as_of`` of the students at risk there (all, or those of
    ``user_ids``), computed as a run of the job with these settings computes them when it scores, from the same
    days of data (a student's row depends on their own days alone, so a subset of students changes no value)."""
    landmarks = churn.landmark_dates(as_of, lookback_days=lookback_days, threshold_days=threshold_days)
    start = (
        churn.history_start(landmarks, threshold_days)
        if landmarks
        else as_of - timedelta(days=churn.recent_days(threshold_days) - 1)
    )
    activity = load_activity(conn, start=start, end=as_of, user_ids=user_ids)
    return churn.at_risk_covariates(activity, as_of, threshold_days=threshold_days)


def score(model: churn.ChurnModel, current: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """S of the rows of ``current`` (``user_id`` and covariates at the scoring landmark): ``user_id, s,
    linear_predictor, days_since_last_attempt, top_factors``. ``S = P(t <= horizon | x)`` on the landmark clock;
    ``linear_predictor`` and the factors' contributions are on the log scale of the ``T``-day cumulative hazard
    (:class:`~learnpulse.churn.ChurnModel`)."""
    if len(current):
        s_now = model.event_probability(current, at=0, horizon=horizon_days)
        lp_now = model.linear_predictor(current)
        factors = churn.top_factors(model.contributions(current), current, TOP_FACTORS)
    else:
        s_now, lp_now, factors = np.zeros(0), np.zeros(0), []
    return pd.DataFrame(
        {
            "user_id": current["user_id"].to_numpy(dtype=np.int64),
            "s": s_now,
            "linear_predictor": lp_now,
            "days_since_last_attempt": current["days_since_last_attempt"].to_numpy(dtype=np.int64),
            "top_factors": factors,
        }
    )


def _previous_model(ctx: JobContext) -> str:
    previous = store.latest_fit(ctx.conn)
    if previous is None:
        return "there is no previous model"
    return f"the previous model (as of {previous['as_of']}, run {previous['run_id']}) stays in use"


def _concordance(rows: pd.DataFrame, scores: np.ndarray[Any, Any]) -> float | None:
    if len(rows) == 0 or rows["event"].sum() == 0:
        return None
    try:
        return float(concordance_index(rows["duration"], rows["event"], scores))
    except InsufficientDataError:
        return None


def run(ctx: JobContext) -> JobOutcome:
    settings = ctx.settings
    as_of = ctx.as_of
    t = settings.survival_event_threshold_days
    require_kpi_through(ctx)
    landmarks = churn.landmark_dates(as_of, lookback_days=settings.survival_lookback_days, threshold_days=t)
    if not landmarks:
        raise InsufficientDataError(
            f"SURVIVAL_LOOKBACK_DAYS={settings.survival_lookback_days} leaves no landmark with follow-up: a landmark "
            f"needs {t} days after it (SURVIVAL_EVENT_THRESHOLD_DAYS); use a lookback above {t} days",
            {"lookback_days": settings.survival_lookback_days, "threshold_days": t},
        )
    start = churn.history_start(landmarks, t)
    ctx.say(f"loading activity {start} .. {as_of} for {len(landmarks)} landmarks")
    activity = load_activity(ctx.conn, start=start, end=as_of)
    rows = churn.landmark_rows(activity, landmarks, threshold_days=t)
    held = churn.heldout_students(rows["user_id"].to_numpy(), HELDOUT_FRACTION)
    train, test = rows[~held], rows[held]

    varying = [n for n in churn.COVARIATE_NAMES if len(train) > 1 and np.ptp(train[n].to_numpy()) > 0]
    events = int(train["event"].sum())
    needed = MIN_EVENTS_PER_COVARIATE * (len(varying) or len(churn.COVARIATE_NAMES))
    if events < needed or not varying:
        raise InsufficientDataError(
            f"too few churn events to fit the survival model: {events} in {len(train)} training rows "
            f"({train['user_id'].nunique()} students, landmarks {landmarks[-1]} .. {landmarks[0]}); need at least "
            f"{needed} ({MIN_EVENTS_PER_COVARIATE} per covariate); {_previous_model(ctx)}",
            {"events": events, "needed": needed, "rows": len(train), "as_of": as_of.isoformat()},
        )
    ctx.say(f"fitting on {len(train)} rows ({events} events), {len(varying)} varying covariates")
    try:
        model = churn.ChurnModel.fit(train, threshold_days=t)
    except InsufficientDataError as exc:
        raise InsufficientDataError(f"{exc.message}; {_previous_model(ctx)}", exc.details) from exc

    # --- held-out evaluation ------------------------------------------------------------------------------------
    s_test = model.event_probability(test, at=0, horizon=t) if len(test) else np.zeros(0)
    c_heldout = _concordance(test, s_test)
    full = (test["landmark"] <= as_of - timedelta(days=2 * t - 1)).to_numpy()  # full T-day follow-up
    observed = ((test["event"] == 1) & (test["duration"] <= t)).to_numpy()[full]
    calibration = churn.calibration_table(s_test[full], observed, CALIBRATION_GROUPS)

    # --- scores at the as-of date -------------------------------------------------------------------------------
    current = churn.at_risk_covariates(activity, as_of, threshold_days=t)
    scored = score(model, current, t)
    scores = scored.assign(run_id=ctx.run_id)[
        ["user_id", "run_id", "s", "linear_predictor", "days_since_last_attempt", "top_factors"]
    ]

    meta = _meta_row(
        ctx,
        model=model,
        rows=rows,
        train=train,
        test=test,
        landmarks=landmarks,
        c_heldout=c_heldout,
        calibration=calibration,
    )
    store.replace_fit(ctx.conn, meta)
    written = 1 + store.replace_scores(ctx.conn, as_of, scores)
    kpi_rows = store.write_weekly_s(ctx.conn, as_of) if settings.survival_update_kpi else 0
    written += kpi_rows
    gap = churn.mean_calibration_gap(calibration)
    ctx.say(f"held-out C = {c_heldout}, calibration gap = {gap}; scored {len(scores)} students")
    return JobOutcome(
        rows_written=written,
        summary={
            "landmarks": len(landmarks),
            "rows": len(train),
            "events": events,
            "concordance_heldout": c_heldout,
            "calibration_gap": gap,
            "scored": len(scores),
            "weekly_kpi_rows": kpi_rows,
        },
    )


def _meta_row(
    ctx: JobContext,
    *,
    model: churn.ChurnModel,
    rows: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    landmarks: list[date],
    c_heldout: float | None,
    calibration: list[dict[str, Any]],
) -> dict[str, Any]:
    t = ctx.settings.survival_event_threshold_days
    per_landmark = rows.groupby("landmark").agg(rows=("event", "size"), events=("event", "sum"))
    last_start = ctx.as_of - timedelta(days=t - 1)
    landmark_info = [
        {
            "landmark": lm.isoformat(),
            "rows": int(per_landmark["rows"].get(lm, 0)),
            "events": int(per_landmark["events"].get(lm, 0)),
            "follow_up_days": min((last_start - lm).days, t),
        }
        for lm in landmarks
    ]
    cox = model.later_days
    assert cox.baseline_times_ is not None and cox.baseline_cumulative_hazard_ is not None
    s_train = model.event_probability(train, at=0, horizon=t)
    row = {
        "run_id": ctx.run_id,
        "as_of": ctx.as_of,
        "lookback_days": ctx.settings.survival_lookback_days,
        "threshold_days": t,
        "landmarks": landmark_info,
        "formula": model.formula(),
        "covariates": {
            "used": [c.to_json() for c in churn.COVARIATES],
            "derived": [c.to_json() for c in churn.DERIVED],
            "features": {
                churn.FIRST_DAY: list(model.first_day.features),
                churn.LATER_DAYS: list(cox.feature_names_ or []),
            },
            "dropped": [
                {"name": feature, "component": component, "reason": "constant in the training rows"}
                for component, feature in model.dropped
            ],
            "recent_window_days": model.recent_window_days,
            "horizon_days": t,
            "landmark_spacing_days": churn.LANDMARK_SPACING_DAYS,
            "standard_errors": "model-based; rows of one student at several landmarks are correlated, so they "
            "understate the uncertainty",
        },
        "coefficients": model.coefficients(),
        "n_rows": len(train),
        "n_students": int(train["user_id"].nunique()),
        "n_events": int(train["event"].sum()),
        "heldout": {
            "fraction": HELDOUT_FRACTION,
            "split": "splitmix64(user_id) below the fraction",
            "students": int(test["user_id"].nunique()),
            "rows": len(test),
            "events": int(test["event"].sum()),
            "concordance": c_heldout,
        },
        "concordance_train": _concordance(train, s_train),
        "concordance_heldout": c_heldout,
        "calibration": {
            "rows": "held-out landmark rows with the full follow-up (landmark <= as_of - 2T + 1)",
            "observed": "a churn gap began within T days of the landmark",
            "groups": calibration,
            "mean_abs_gap": churn.mean_calibration_gap(calibration),
        },
        "baseline": {
            "times": [float(v) for v in cox.baseline_times_],
            "cumulative_hazard": [float(v) for v in cox.baseline_cumulative_hazard_],
            "at": "later days (t >= 2, given t > 1): the training means of the later-days features",
            churn.FIRST_DAY: {
                "log_odds_at_means": model.first_day.intercept,
                "probability_at_means": 1.0 / (1.0 + math.exp(-model.first_day.intercept)),
            },
            "events": model.n_events,
        },
        "standardization": {
            "means": dict(zip(churn.COVARIATE_NAMES, (float(v) for v in model.reference), strict=True)),
            "scales": dict(zip(churn.COVARIATE_NAMES, (float(v) for v in model.covariate_scales), strict=True)),
            "use": "training means and SDs of the covariates; the explanations move a covariate to its mean",
        },
        "log_likelihood": model.log_likelihood,
        "model": model.to_json(),
    }
    return {k: json_safe(v) for k, v in row.items()}


FIT_SURVIVAL_CHURN = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=("SURVIVAL_LOOKBACK_DAYS", "SURVIVAL_EVENT_THRESHOLD_DAYS", "SURVIVAL_UPDATE_KPI"),
)
