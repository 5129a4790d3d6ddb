"""Scheduled jobs: each module defines one ``Job``; ``REGISTRY`` is the one list the CLI, scheduler and
deployment manifests read (names and schedules from the original system)."""

from __future__ import annotations

from learnpulse.jobs.base import Job, JobContext, JobOutcome
from learnpulse.jobs.build_kpi import BUILD_KPI
from learnpulse.jobs.calibrate_irt import CALIBRATE_IRT
from learnpulse.jobs.cluster_segments import CLUSTER_SEGMENTS
from learnpulse.jobs.detect_inactivity import DETECT_INACTIVITY
from learnpulse.jobs.fit_bayesian_growth import FIT_BAYESIAN_GROWTH
from learnpulse.jobs.fit_survival_churn import FIT_SURVIVAL_CHURN
from learnpulse.jobs.forecast_prophet import FORECAST_PROPHET

REGISTRY: dict[str, Job] = {
    job.name: job
    for job in (
        BUILD_KPI,
        CALIBRATE_IRT,
        FIT_BAYESIAN_GROWTH,
        FORECAST_PROPHET,
        FIT_SURVIVAL_CHURN,
        DETECT_INACTIVITY,
        CLUSTER_SEGMENTS,
    )
}

__all__ = ["REGISTRY", "Job", "JobContext", "JobOutcome"]
