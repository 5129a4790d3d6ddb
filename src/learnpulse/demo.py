"""``learnpulse demo``: the whole pipeline on the embedded default database, end to end, re-runnable."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from learnpulse.errors import DiagnosticsFailedError, InsufficientDataError
from learnpulse.settings import Settings
from learnpulse.store import forecast, growth, segments, survival
from learnpulse.store.db import make_engine, safe_url
from learnpulse.store.schema import upgrade
from learnpulse.synthetic import WorldParams

SEED = 42
TOP_RISK = 10


def run_demo(
    settings: Settings,
    *,
    students: int,
    weeks: int,
    generate: Callable[..., Any],
    run_job: Callable[..., Any],
    console: Console,
) -> None:
    engine = make_engine(settings.database_url)
    timings: list[tuple[str, float, str]] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        timings.append((name, time.perf_counter() - start, _short(result)))
        return result

    console.print(f"[bold]learnpulse demo[/] on {safe_url(settings.database_url)}")
    step("db upgrade", lambda: upgrade(engine)[1])
    params = WorldParams(students=students, weeks=weeks, seed=SEED, timezone=settings.learnpulse_timezone)
    step("generate", lambda: generate(settings, students=students, weeks=weeks, seed=SEED, replace=False))
    as_of = params.end_date - timedelta(days=1)  # the world's last day: jobs see all of it
    step("build-kpi", lambda: run_job(settings, "build-kpi", as_of, {}))
    # Churn risk at the same as-of date; both jobs replace their rows of that date, so a re-run adds nothing.
    # Too few churn events (a tiny school) is reported and the demo goes on: detect-inactivity then flags by days.
    # Item calibration first among the model jobs: it rewrites I_t, which the later models read.
    step("calibrate-irt", lambda: _unless_insufficient(lambda: run_job(settings, "calibrate-irt", as_of, {})))
    step("forecast-prophet", lambda: _unless_insufficient(lambda: run_job(settings, "forecast-prophet", as_of, {})))
    step("cluster-segments", lambda: _unless_insufficient(lambda: run_job(settings, "cluster-segments", as_of, {})))
    # Goal probabilities (P, sigma); too little data or failed diagnostics are reported and the demo goes on.
    step(
        "fit-bayesian-growth", lambda: _unless_insufficient(lambda: run_job(settings, "fit-bayesian-growth", as_of, {}))
    )
    step("fit-survival-churn", lambda: _unless_insufficient(lambda: run_job(settings, "fit-survival-churn", as_of, {})))
    step("detect-inactivity", lambda: run_job(settings, "detect-inactivity", as_of, {}))

    steps = Table("step", "seconds", "result", title="pipeline")
    for name, seconds, summary in timings:
        steps.add_row(name, f"{seconds:.2f}", summary)
    console.print(steps)
    console.print(_weekly_summary(engine))
    with engine.connect() as conn:
        forecast_run = forecast.latest_run(conn)
        # The latest week with anomalies (the last week of the window may have none).
        last_week = forecast.latest_anomaly_week(conn, forecast_run.run_id) if forecast_run else None
        week_anomalies = (
            forecast.anomalies_page(
                conn, run_id=forecast_run.run_id, week=last_week, direction=None, after=None, limit=TOP_RISK
            ).rows
            if forecast_run and last_week
            else []
        )
        seg_run = segments.latest_run(conn)
        segment_rows = segments.segments_of(conn, int(seg_run["run_id"])) if seg_run else []
        fit = growth.latest_fit(conn)
        least_likely = growth.top_goal_probabilities(conn, int(fit["run_id"]), lowest=True) if fit else []
        riskiest = survival.highest_risk(conn, as_of, TOP_RISK)
    if last_week is not None:
        console.print(_anomaly_table(week_anomalies, last_week))
    if segment_rows:
        console.print(_segment_table(segment_rows))
    if least_likely:
        console.print(_goal_table(least_likely, str(fit["family"]) if fit else ""))
    if riskiest:
        console.print(_risk_table(riskiest, as_of, settings.survival_event_threshold_days))
    else:
        console.print(f"no churn scores as of {as_of}: no churn model could be fitted (see fit-survival-churn above)")
    engine.dispose()


def _unless_insufficient(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except (InsufficientDataError, DiagnosticsFailedError) as exc:
        return f"not fitted: {exc.message}"


def _anomaly_table(rows: Sequence[Any], week: date) -> Table:
    table = Table(
        "user_id",
        "I_t",
        "by its answers",
        "expected",
        "expected range",
        "score",
        "direction",
        title=f"anomalous weeks: week of {week} (forecast-prophet; strongest first)",
    )
    for row in rows:
        evidence = row["evidence"]
        table.add_row(
            str(row["user_id"]),
            f"{row['y']:.1f}",
            "" if evidence is None else f"{evidence:.1f}",
            f"{row['yhat']:.1f}",
            f"{row['lower']:.1f} .. {row['upper']:.1f}",
            f"{row['score']:.1f}",
            row["direction"],
        )
    return table


def _segment_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("segment", "name", "students", "share", "status", title="learner segments (cluster-segments)")
    for row in rows:
        share = row["quality"].get("share")
        table.add_row(
            str(row["segment_id"]),
            row["name"],
            f"{row['size']:,}",
            f"{share:.0%}" if isinstance(share, float) else "",
            row["status"],
        )
    return table


def _goal_table(rows: list[dict[str, Any]], family: str) -> Table:
    table = Table(
        "user_id",
        "target",
        "deadline",
        "expected accuracy",
        "P",
        "sigma",
        "weeks",
        "flag",
        title=f"students least likely to reach their goal (Bayesian growth, {family})",
    )
    for row in rows:
        table.add_row(
            str(row["user_id"]),
            f"{row['target']:.2f}",
            str(row["deadline"]),
            f"{row['expected']:.3f}",
            f"{row['p']:.3f}",
            f"{row['sigma']:.3f}",
            str(row["n_obs"]),
            row["flag"],
        )
    return table


def _risk_table(rows: list[dict[str, Any]], as_of: date, threshold_days: int) -> Table:
    table = Table(
        "user_id",
        "S",
        "days inactive",
        "tier",
        "top factors (hazard ratio)",
        title=f"highest churn risk as of {as_of} (S: chance that {threshold_days} days without an attempt begin "
        f"within {threshold_days} days)",
    )
    for row in rows:
        factors = ", ".join(f"{f['covariate']} {f['value']:.3g} (x{f['hazard_ratio']:.2f})" for f in row["top_factors"])
        tier = row["tier"] or "not flagged"
        table.add_row(str(row["user_id"]), f"{row['s']:.3f}", str(row["days_since_last_attempt"]), tier, factors)
    return table


def _short(result: Any) -> str:
    if hasattr(result, "already_present"):
        if result.already_present:
            return "world already stored (skipped)"
        return f"{result.students:,} students, {result.items:,} items, {result.attempts:,} attempts"
    if isinstance(result, str):
        return result
    if hasattr(result, "summary") and isinstance(result.summary, dict):
        # Long lists (skipped students, segment ids) belong in the job's record, not in the step table.
        shown = {k: v for k, v in result.summary.items() if not (isinstance(v, list) and len(v) > 5)}
        return ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    return str(result)[:100]


def _weekly_summary(engine: Any) -> Table:
    table = Table(
        "week",
        "students active",
        "attempts",
        "accuracy",
        "mean I_t",
        "study h / student",
        title="weekly KPIs (all students)",
    )
    with engine.connect() as conn:
        rows = conn.execute(
            text("""
            SELECT week_start, COUNT(*), SUM(attempts), SUM(correct) * 1.0 / SUM(attempts), AVG(i_t),
                   AVG(study_minutes) / 60.0
            FROM weekly_kpi GROUP BY week_start ORDER BY week_start
            """)
        ).all()
    for week, active, attempts, accuracy, index, hours in rows:
        table.add_row(str(week), str(active), f"{attempts:,}", f"{accuracy:.3f}", f"{index:.1f}", f"{hours:.2f}")
    return table
