"""The in-process scheduler: fires on schedule, survives failing jobs, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from learnpulse.errors import ConfigError
from learnpulse.jobs import REGISTRY
from learnpulse.schedule import SCHEDULE
from learnpulse.scheduler import Scheduler
from learnpulse.store.db import make_engine
from tests.helpers import attempts_frame, load_batch, read_table


def test_original_names_and_schedules_are_kept() -> None:
    crons = {job.name: job.cron for job in SCHEDULE}
    assert crons["fit-bayesian-growth"] == "30 4 * * 1"
    assert crons["forecast-prophet"] == "0 5 * * 1"
    assert crons["fit-survival-churn"] == "0 5 * * *"
    assert crons["cluster-segments"] == "0 7 1,15 * *"
    assert {"build-kpi", "detect-inactivity", "calibrate-irt"} <= set(crons)
    for name, job in REGISTRY.items():  # registered jobs take their schedule from the one table
        assert job.schedule == crons[name]


def test_cron_day_of_week_follows_cron_not_python() -> None:
    sched = Scheduler({"fit-bayesian-growth": "30 4 * * 1"}, run=lambda _: None)
    nxt = sched.next_runs(datetime(2026, 11, 22, 12, tzinfo=UTC))["fit-bayesian-growth"]  # a Sunday
    assert nxt == datetime(2026, 11, 23, 4, 30, tzinfo=UTC) and nxt.strftime("%A") == "Monday"


def test_invalid_cron_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid cron"):
        Scheduler({"x": "61 * * * *"}, run=lambda _: None)


def test_fires_on_schedule_and_survives_a_failing_job() -> None:
    calls: list[str] = []

    def run(name: str) -> None:
        calls.append(name)
        if name == "broken":
            raise RuntimeError("always fails")

    sched = Scheduler({"ok": "* * * * * *", "broken": "* * * * * *"}, run=run)  # every second
    thread = threading.Thread(target=sched.serve)
    thread.start()
    deadline = time.monotonic() + 10
    while calls.count("ok") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sched.stop()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert calls.count("ok") >= 3 and calls.count("broken") >= 2
    assert {(name, ok) for name, _, ok in sched.fired} == {("ok", True), ("broken", False)}


def test_cli_scheduler_runs_build_kpi_and_stops_cleanly_on_sigterm(db_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}
    subprocess.run([sys.executable, "-m", "learnpulse.cli", "db", "upgrade"], env=env, check=True, capture_output=True)
    engine = make_engine(db_url)
    load_batch(engine, attempts_frame([(1, 1, True, "2026-03-02T10:00:00+09:00", 5.0)]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "learnpulse.cli",
            "scheduler",
            "--only",
            "build-kpi",
            "--cron",
            "build-kpi=* * * * * */2",
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = read_table(engine, "job_run")
            if (runs["status"] == "succeeded").sum() >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "scheduler stopped" in stderr
    runs = read_table(engine, "job_run")
    assert (runs["status"] == "succeeded").sum() >= 2
    assert "running" not in set(runs["status"])  # nothing left half-written
    assert len(read_table(engine, "weekly_kpi")) == 1
