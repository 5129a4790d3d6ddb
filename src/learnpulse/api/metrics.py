"""Prometheus metrics of the API, served at ``/metrics`` (no auth, like the health checks).

- ``learnpulse_http_requests_total{method, route, status}``: requests answered. ``route`` is the route's template
  (``/users/{user_id}/kpi``), never the raw path, so the number of series stays bounded; requests that match no
  route (404s, bodies refused before routing) are counted under ``route="unmatched"``.
- ``learnpulse_http_request_duration_seconds{method, route}``: latency histogram, from the request's arrival to the
  last byte of its response.
- ``learnpulse_job_runs{job, status}`` and ``learnpulse_job_last_finished_timestamp_seconds{job, status}``: read
  from the ``job_run`` table at scrape time (one GROUP BY query). If the query fails, the scrape still succeeds
  without them and ``learnpulse_metrics_errors_total`` goes up.

Several uvicorn workers (``learnpulse serve --workers N``): each worker is a process with its own counters, so set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory writable by the server before it starts (prometheus_client's
multiprocess mode). Every worker then writes its counters there and ``/metrics``, whichever worker answers, sums
all of them. ``serve()`` deletes the directory's old ``*.db`` files at start, as prometheus_client requires.
Without the variable each process reports only its own requests.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from learnpulse.store import reads

logger = logging.getLogger("learnpulse.api")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class JobRunCollector(Collector):
    """Job runs by job and status, read from ``job_run`` when Prometheus scrapes."""

    def __init__(self, engine: Engine, errors: Counter) -> None:
        self.engine = engine
        self.errors = errors

    def describe(self) -> Iterable[Metric]:
        return []  # the label values come from the database: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        try:
            with self.engine.connect() as conn:
                counts = reads.job_run_counts(conn)
        except Exception as exc:
            self.errors.inc()
            logger.warning("metrics: cannot read job runs: %s: %s", type(exc).__name__, str(exc).splitlines()[0])
            return
        runs = GaugeMetricFamily(
            "learnpulse_job_runs", "Job runs recorded in job_run, by job and status.", labels=["job", "status"]
        )
        last = GaugeMetricFamily(
            "learnpulse_job_last_finished_timestamp_seconds",
            "Unix time at which the latest run of the job in that status finished.",
            labels=["job", "status"],
        )
        for count in counts:
            runs.add_metric([count.job, count.status], count.runs)
            if count.last_finished_at is not None:
                last.add_metric([count.job, count.status], count.last_finished_at.timestamp())
        yield runs
        yield last


class ApiMetrics:
    """The metrics of one app. In single-process mode they live in the app's own registry (several apps in one
    process, as in tests, do not collide); in multiprocess mode in prometheus_client's shared files."""

    def __init__(self, engine: Engine) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry()
        target = None if self.multiprocess else self.registry
        self.requests = Counter(
            "learnpulse_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=target,
        )
        self.latency = Histogram(
            "learnpulse_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=target,
        )
        self.errors = Counter("learnpulse_metrics_errors", "Failures to read job runs for /metrics.", registry=None)
        self.job_runs = JobRunCollector(engine, self.errors)
        # The job runs are collected before the error counter, so a failure shows in the scrape it happened in.
        self.registry.register(self.job_runs)
        if not self.multiprocess:
            self.registry.register(self.errors)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            registry.register(self.job_runs)
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request (outermost, so refused bodies and 500s are counted too)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)


def reset_multiprocess_dir() -> None:
    """Delete old metric files from PROMETHEUS_MULTIPROC_DIR (call once, before the workers start)."""
    directory = multiprocess_dir()
    if directory is None:
        return
    from pathlib import Path

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink(missing_ok=True)
