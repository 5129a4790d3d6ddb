"""The one schedule table: every job's name and cron schedule (UTC).

The job registry, ``learnpulse scheduler`` and the Kubernetes CronJobs under ``deploy/`` all read this table, so
they cannot drift. Names and schedules of the four model jobs are the original system's; build-kpi runs first
each day, calibrate-irt before the Monday model jobs that read I_t, detect-inactivity after the survival fit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    cron: str  # minute hour day-of-month month day-of-week, UTC
    description: str


SCHEDULE: tuple[ScheduledJob, ...] = (
    ScheduledJob("build-kpi", "0 3 * * *", "Daily topic features and weekly activity KPIs from attempts"),
    ScheduledJob("calibrate-irt", "0 4 * * 1", "IRT item calibration and the weekly learning index I_t"),
    ScheduledJob("fit-bayesian-growth", "30 4 * * 1", "Bayesian growth model; goal probability P and sigma"),
    ScheduledJob("forecast-prophet", "0 5 * * 1", "Per-student I_t forecasts and anomaly detection"),
    ScheduledJob("fit-survival-churn", "0 5 * * *", "Churn survival model; churn risk S"),
    ScheduledJob("detect-inactivity", "30 5 * * *", "Inactivity detection and risk tiers"),
    ScheduledJob("cluster-segments", "0 7 1,15 * *", "Learner segments"),
)

BY_NAME = {job.name: job for job in SCHEDULE}


def cron_of(name: str) -> str:
    return BY_NAME[name].cron
