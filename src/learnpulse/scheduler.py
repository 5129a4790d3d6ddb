"""``learnpulse scheduler``: run the registered jobs on their cron schedules (UTC) in one process.

The single-machine way to run learnpulse (Kubernetes uses CronJobs generated from the same schedule table).
Jobs run one at a time in the order they fall due; a job that fails is logged and recorded in ``job_run`` and
the scheduler goes on. ``stop()`` (SIGTERM/SIGINT in the CLI) lets a running job finish its transaction, then
returns, so no run is left half-written. Cron expressions have 5 fields, or 6 with seconds last (for tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from croniter import croniter

from learnpulse.errors import ConfigError, LearnpulseError

log = logging.getLogger("learnpulse.scheduler")


def validate_cron(expression: str, job: str) -> str:
    if not croniter.is_valid(expression):
        raise ConfigError(f"job {job!r}: invalid cron expression {expression!r}", {"job": job, "cron": expression})
    return expression


@dataclass
class Scheduler:
    """Fire ``run(name)`` for each job in ``crons`` (name -> cron) when it falls due; ``clock`` is injectable."""

    crons: Mapping[str, str]
    run: Callable[[str], object]
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    fired: list[tuple[str, datetime, bool]] = field(default_factory=list)  # (job, due, succeeded)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        for name, expression in self.crons.items():
            validate_cron(expression, name)

    def stop(self) -> None:
        self._stop.set()

    def next_runs(self, after: datetime) -> dict[str, datetime]:
        return {name: croniter(expr, after).get_next(datetime) for name, expr in self.crons.items()}

    def serve(self) -> None:
        """Run until ``stop()``; a missed time (a job ran long) fires once, not once per missed slot."""
        due = self.next_runs(self.clock())
        log.info("scheduler started: %s", ", ".join(f"{n} next {t:%Y-%m-%d %H:%M:%S}Z" for n, t in due.items()))
        while not self._stop.is_set():
            name = min(due, key=lambda n: due[n])
            wait = (due[name] - self.clock()).total_seconds()
            if wait > 0 and self._stop.wait(min(wait, 60.0)):
                break
            if wait > 0:
                continue  # woke up to re-check the clock
            self.fired.append((name, due[name], self._fire(name)))
            due[name] = croniter(self.crons[name], max(due[name], self.clock())).get_next(datetime)
        log.info("scheduler stopped")

    def _fire(self, name: str) -> bool:
        log.info("running %s", name)
        try:
            self.run(name)
        except LearnpulseError as exc:
            log.error("%s failed: %s: %s", name, exc.code, exc.message)
            return False
        except Exception:
            log.exception("%s failed", name)
            return False
        log.info("%s succeeded", name)
        return True
