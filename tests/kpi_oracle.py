"""A slow, obviously-correct pandas reference for build-kpi, used to check the SQL on random data."""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

import pandas as pd


def expected_daily(attempts: pd.DataFrame, tz: str, as_of: date) -> pd.DataFrame:
    local = attempts["answered_at"].dt.tz_convert(ZoneInfo(tz))
    frame = attempts.assign(day=local.dt.date)
    frame = frame[frame["day"] <= as_of]
    grouped = frame.groupby(["user_id", "topic_id", "day"])
    out = pd.DataFrame(
        {
            "attempts": grouped.size(),
            "correct": grouped["is_correct"].sum(),
            "time_spent_s": grouped["time_spent_s"].sum(min_count=0),
            "timed_attempts": grouped["time_spent_s"].count(),
        }
    ).reset_index()
    out["accuracy"] = out["correct"] / out["attempts"]
    return out.sort_values(["user_id", "topic_id", "day"]).reset_index(drop=True)


def expected_weekly(daily: pd.DataFrame) -> pd.DataFrame:
    frame = daily.assign(week_start=[d - pd.Timedelta(days=d.weekday()) for d in daily["day"]])
    frame["week_start"] = [w.date() if hasattr(w, "date") else w for w in frame["week_start"]]
    grouped = frame.groupby(["user_id", "week_start"])
    out = pd.DataFrame(
        {
            "attempts": grouped["attempts"].sum(),
            "correct": grouped["correct"].sum(),
            "active_days": grouped["day"].nunique(),
            "study_minutes": grouped["time_spent_s"].sum() / 60.0,
            "topics": grouped["topic_id"].nunique(),
        }
    ).reset_index()
    out["accuracy"] = out["correct"] / out["attempts"]
    out["i_t"] = 100.0 * (out["correct"] + 1) / (out["attempts"] + 2)
    return out.sort_values(["user_id", "week_start"]).reset_index(drop=True)
