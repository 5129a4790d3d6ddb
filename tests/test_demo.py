"""``learnpulse demo`` as a user runs it, on a small school: the pipeline with the churn jobs, the highest-risk
table, and a second run that succeeds without adding rows."""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path

from learnpulse.store import survival
from learnpulse.store.db import make_engine
from learnpulse.synthetic import WorldParams
from tests.helpers import cli, count

TABLES = (
    "attempt",
    "user_goal",
    "features_topic_daily",
    "weekly_kpi",
    "survival_fit_meta",
    "survival_score",
    "inactivity_alert",
    "irt_calibration_meta",
    "irt_item",
    "growth_unit",
    "segment_meta",
    "prophet_fit_meta",
    "prophet_anomalies",
    "user_segment",
)
STUDENTS, WEEKS = 300, 8


def demo(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli(
        "demo", "--students", str(STUDENTS), "--weeks", str(WEEKS), env={"DATABASE_URL": url, "COLUMNS": "200"}, cwd=cwd
    )


def _risk_rows(stdout: str) -> list[int]:
    """user_ids of the highest-risk table, in printed order."""
    table = stdout[stdout.index("highest churn risk") :]
    return [int(m) for m in re.findall(r"^│ (\d+) +│ [01]\.\d{3} ", table, flags=re.MULTILINE)]


def test_demo_runs_the_churn_jobs_shows_the_riskiest_students_and_can_run_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    first = demo(url, tmp_path)
    assert first.returncode == 0, first.stderr
    steps = ("build-kpi", "calibrate-irt", "forecast-prophet", "cluster-segments", "fit-bayesian-growth")
    for step in (*steps, "fit-survival-churn", "detect-inactivity"):
        assert re.search(rf"│ {step} +│ \d+\.\d\d", first.stdout), step
    assert "not fitted" not in first.stdout and "weekly KPIs (all students)" in first.stdout
    as_of = WorldParams(students=STUDENTS, weeks=WEEKS).end_date - timedelta(days=1)  # the world's last day
    assert f"highest churn risk as of {as_of}" in first.stdout
    assert "students least likely to reach their goal" in first.stdout
    assert "learner segments" in first.stdout and "anomalous weeks" in first.stdout
    engine = make_engine(url)
    with engine.connect() as conn:
        expected = survival.highest_risk(conn, as_of, 10)
    assert len(expected) == 10 and _risk_rows(first.stdout) == [r["user_id"] for r in expected]
    assert [r["s"] for r in expected] == sorted((r["s"] for r in expected), reverse=True)
    counts = {t: count(engine, t) for t in TABLES}
    assert all(counts.values()), counts
    jobs_run = count(engine, "job_run")

    second = demo(url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "world already stored (skipped)" in second.stdout
    assert _risk_rows(second.stdout) == _risk_rows(first.stdout)
    assert {t: count(engine, t) for t in TABLES} == counts  # the jobs replaced their rows of the day
    assert count(engine, "job_run") == jobs_run + 7  # and each run is recorded
    assert count(engine, "growth_brms_meta") == 2  # every growth run keeps its record
    engine.dispose()
