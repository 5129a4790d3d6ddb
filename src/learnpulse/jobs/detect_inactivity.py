"""detect-inactivity: daily alerts for students who stopped coming or whose churn risk S is high.

As of date ``D``, for every student with an attempt in the last ``SURVIVAL_LOOKBACK_DAYS`` days (students gone
longer are past alerting):

- ``days_inactive = D - last active day`` (0: attempted on ``D``);
- ``S``: the latest ``survival_score`` on or before ``D`` (``s_as_of`` says which day; normally ``D`` itself, as
  fit-survival-churn runs first each day);
- ``tier``: ``high`` when ``S >= INACTIVITY_TIER_HIGH``, ``medium`` when ``S >= INACTIVITY_TIER_MEDIUM``, ``low``
  below; without an S: ``churned`` when the student has already gone ``SURVIVAL_EVENT_THRESHOLD_DAYS`` days
  without an attempt (the model's question no longer applies), else ``unscored``;
- flagged when ``days_inactive >= INACTIVITY_DAYS`` or ``S >= INACTIVITY_TIER_MEDIUM``; ``reasons`` lists which
  (with the figures), ``top_factors`` are the scoring's covariates that raise the student's hazard most.

One ``inactivity_alert`` row per flagged student for day ``D``; a re-run replaces the day's rows (idempotent).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from learnpulse.churn import day_number, day_of
from learnpulse.jobs.base import Job, JobContext, JobOutcome
from learnpulse.jobs.fit_survival_churn import require_kpi_through
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.store import survival as store

NAME = "detect-inactivity"
TIERS = ("high", "medium", "low", "churned", "unscored")


def run(ctx: JobContext) -> JobOutcome:
    settings = ctx.settings
    day = ctx.as_of
    require_kpi_through(ctx)
    since = day - timedelta(days=settings.survival_lookback_days - 1)
    students = store.load_last_active_days(ctx.conn, start=since, end=day)
    s_as_of, scores = store.latest_scores(ctx.conn, on_or_before=day)
    frame = students.merge(scores, on="user_id", how="left")
    alerts = flag(
        frame,
        today=day_number(day),
        inactivity_days=settings.inactivity_days,
        churn_days=settings.survival_event_threshold_days,
        medium=settings.inactivity_tier_medium,
        high=settings.inactivity_tier_high,
    )
    alerts["run_id"] = ctx.run_id
    alerts["s_as_of"] = [s_as_of if pd.notna(s) else None for s in alerts["s"]]
    written = store.replace_alerts(ctx.conn, day, alerts)
    counts = alerts["tier"].value_counts()
    ctx.say(f"{written} alerts for {day} among {len(students)} students (scores of {s_as_of})")
    return JobOutcome(
        rows_written=written,
        summary={
            "students": len(students),
            "alerts": written,
            "scores_as_of": s_as_of.isoformat() if s_as_of else None,
            **{f"tier_{t}": int(counts.get(t, 0)) for t in TIERS},
        },
    )


def flag(
    frame: pd.DataFrame, *, today: int, inactivity_days: int, churn_days: int, medium: float, high: float
) -> pd.DataFrame:
    """Alerts from ``user_id, last_day`` (day number), ``s`` (NaN: no score) and ``top_factors``: the flagged
    students with ``last_active_day, days_inactive, s, tier, reasons, top_factors``."""
    days_inactive = today - frame["last_day"].to_numpy(dtype=np.int64)
    s = frame["s"].to_numpy(dtype=np.float64) if len(frame) else np.zeros(0)
    scored = ~np.isnan(s)
    tier = np.select(
        [scored & (s >= high), scored & (s >= medium), scored, days_inactive >= churn_days],
        ["high", "medium", "low", "churned"],
        default="unscored",
    )
    inactive = days_inactive >= inactivity_days
    risky = scored & (s >= medium)
    keep = np.flatnonzero(inactive | risky)
    reasons: list[list[dict[str, Any]]] = []
    for i in keep:
        why: list[dict[str, Any]] = []
        if inactive[i]:
            why.append({"code": "inactive", "days_inactive": int(days_inactive[i]), "threshold_days": inactivity_days})
        if risky[i]:
            threshold = high if tier[i] == "high" else medium
            why.append({"code": "churn_risk", "s": round(float(s[i]), 4), "tier": str(tier[i]), "threshold": threshold})
        reasons.append(why)
    factors = frame["top_factors"].to_numpy(dtype=object) if len(frame) else np.zeros(0, dtype=object)
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(dtype=np.int64)[keep],
            "last_active_day": [day_of(int(d)) for d in frame["last_day"].to_numpy(dtype=np.int64)[keep]],
            "days_inactive": days_inactive[keep],
            "s": s[keep],
            "tier": tier[keep].astype(str),
            "reasons": reasons,
            "top_factors": [f if isinstance(f, list) else None for f in factors[keep]],
        }
    )


DETECT_INACTIVITY = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=(
        "INACTIVITY_DAYS",
        "INACTIVITY_TIER_MEDIUM",
        "INACTIVITY_TIER_HIGH",
        "SURVIVAL_LOOKBACK_DAYS",
        "SURVIVAL_EVENT_THRESHOLD_DAYS",
    ),
)
