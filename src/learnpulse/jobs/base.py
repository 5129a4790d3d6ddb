"""What a job is: a name, a cron schedule (UTC), the settings it reads, and a function run in one transaction."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine

from learnpulse.settings import Settings


@dataclass
class JobContext:
    """Everything a job function gets. ``conn`` is the job's one transaction: all its writes go through it."""

    settings: Settings
    engine: Engine
    conn: Connection
    run_id: int
    as_of: date
    options: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str], None] | None = None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


@dataclass
class JobOutcome:
    rows_written: int
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[JobContext], JobOutcome]
    schedule: str  # cron, UTC
    description: str
    settings: tuple[str, ...] = ()  # environment variables the job reads
    # Called in the transaction that records a failed run (the job's own writes are rolled back): lets a job keep
    # a record of what failed, e.g. a model whose diagnostics failed. Arguments: conn, run_id, as_of, the error.
    on_failure: Callable[[Connection, int, date, BaseException], None] | None = None


def json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars made plain and non-finite floats made None (recursively): what JSON columns and
    job summaries can hold."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    return value
