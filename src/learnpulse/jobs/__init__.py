"""Scheduled jobs: each module defines one ``Job``; ``REGISTRY`` is the one list the CLI, scheduler and
deployment manifests read (names and schedules from the original system)."""

from __future__ import annotations

from learnpulse.jobs.base import Job, JobContext, JobOutcome
from learnpulse.jobs.build_kpi import BUILD_KPI

REGISTRY: dict[str, Job] = {job.name: job for job in (BUILD_KPI,)}

__all__ = ["REGISTRY", "Job", "JobContext", "JobOutcome"]
