"""fit-bayesian-growth: the hierarchical growth model of weekly accuracy and every student's goal probability ``P``.

One run, as of date ``A``:

1. **Window.** The ``LOOKBACK_WEEKS`` complete local weeks (Monday to Sunday) ending with the last week that has
   ended by ``A`` (the week of ``A`` itself when ``A`` is a Sunday, else the week before). Week ``w`` of the
   window (0-based) is time ``w``; its accuracy stands for the middle of the week, so a date ``d`` sits at time
   ``(d - window_start).days / 7 - 0.5``.
2. **Data.** Student-weeks with attempts from ``weekly_kpi``: gaussian family ``y = correct / attempts``
   (brms ``accuracy ~ time + (time | user)``), binomial family ``correct | trials(attempts)``.
3. **Fit** :class:`~learnpulse.engines.growth.GrowthModel` with ``BRMS_FAMILY``, ``BRMS_ITER``, ``BRMS_CHAINS``
   (fixed seed: a re-run on the same data gives the same numbers). A fit whose diagnostics fail is redone once
   with ``RETRY_ITER_FACTOR`` (2) times ``BRMS_ITER`` iterations. If the diagnostics still fail — max R-hat of the
   hyper-parameters above ``MAX_RHAT`` or divergent transitions above ``MAX_DIVERGENCE_SHARE`` of the draws — the
   run fails with :class:`DiagnosticsFailedError`; its ``growth_brms_meta`` row is kept with ``status = 'failed'``
   and the diagnostics, and the previous model stays in use (nothing else is written).
4. **Goal probability** for every student with a goal (``user_goal``) whose deadline is not past:
   ``P = P(expected accuracy at the deadline >= target)`` and ``sigma`` = the posterior SD of that expected
   accuracy, from the student's posterior (see the engine; the gaussian family's expected accuracy is clipped to
   [0, 1]). Flags: ``little_history`` (fewer than ``MIN_WEEKS`` weeks in the window: partially pooled answer),
   ``no_history`` (no week in the window: the population's answer), ``no_goal``, ``deadline_passed`` (no P).
5. **Store** ``growth_brms_meta``, ``growth_unit`` (the posterior moments predict needs, and P / sigma) and P /
   sigma into the week of ``A`` in ``weekly_kpi``, all in the run's one transaction.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection

from learnpulse.engines.growth import GrowthModel
from learnpulse.errors import DiagnosticsFailedError, InsufficientDataError
from learnpulse.jobs.base import Job, JobContext, JobOutcome, json_safe
from learnpulse.jobs.fit_survival_churn import require_kpi_through
from learnpulse.schedule import BY_NAME, cron_of
from learnpulse.settings import Settings
from learnpulse.store import growth as store
from learnpulse.store.buckets import complete_weeks as window

NAME = "fit-bayesian-growth"
SEED = 20260302
MAX_RHAT = 1.01
MAX_DIVERGENCE_SHARE = 0.01
MIN_WEEKS = 3
RETRY_ITER_FACTOR = 2  # a fit whose diagnostics fail is redone once with this many times BRMS_ITER
ACCURACY_BOUNDS = (0.0, 1.0)
_RESPONSE = {"gaussian": "accuracy", "binomial": "correct | trials(attempts)"}


def time_of(day: date | pd.Series, window_start: date) -> Any:
    """Model time of a date: weeks since the window's first Monday, minus half a week (week ``w``'s accuracy
    stands for the middle of that week, time ``w``)."""
    if isinstance(day, pd.Series):
        return np.array([(d - window_start).days for d in day], dtype=np.float64) / 7.0 - 0.5
    return (day - window_start).days / 7.0 - 0.5


def weekly_data(frame: pd.DataFrame, window_start: date, family: str) -> dict[str, np.ndarray[Any, Any]]:
    """Engine inputs from ``load_weekly_accuracy`` rows: unit, time, y (and trials for the binomial family)."""
    t = (frame["week"].to_numpy() - store.day_number(window_start)) / 7.0
    if family == "binomial":
        return {
            "unit": frame["user_id"].to_numpy(),
            "time": t,
            "y": frame["correct"].to_numpy(dtype=np.float64),
            "trials": frame["attempts"].to_numpy(dtype=np.float64),
        }
    return {
        "unit": frame["user_id"].to_numpy(),
        "time": t,
        "y": frame["correct"].to_numpy(dtype=np.float64) / frame["attempts"].to_numpy(dtype=np.float64),
    }


def fit_model(
    settings: Settings, data: dict[str, np.ndarray[Any, Any]], *, iterations: int | None = None
) -> GrowthModel:
    model = GrowthModel(
        settings.brms_family,
        iter=iterations or settings.brms_iter,
        chains=settings.brms_chains,
        seed=SEED,
        sampler=settings.brms_sampler,
    )
    return model.fit(data["unit"], data["time"], data["y"], data.get("trials"))


def diagnostics_problems(diagnostics: dict[str, Any]) -> list[str]:
    """Why a fit's diagnostics fail the bar (empty: they pass)."""
    problems = []
    if not diagnostics["max_rhat"] <= MAX_RHAT:
        problems.append(f"max R-hat {diagnostics['max_rhat']:.4f} > {MAX_RHAT}")
    if diagnostics["divergence_share"] > MAX_DIVERGENCE_SHARE:
        problems.append(
            f"{diagnostics['divergences']} divergent transitions ({diagnostics['divergence_share']:.1%} of the "
            f"draws) > {MAX_DIVERGENCE_SHARE:.0%}"
        )
    return problems


def goal_rows(
    model: GrowthModel, goals: pd.DataFrame, units: list[int], *, as_of: date, window_start: date
) -> pd.DataFrame:
    """One row per student of the fit or with a goal: the posterior moments and, for goals not past, P, sigma and
    the expected accuracy at the deadline, with the student's flag (see the module doc)."""
    goal_of = goals.set_index("user_id")
    everyone = np.union1d(np.asarray(units, dtype=np.int64), goals["user_id"].to_numpy(dtype=np.int64))
    mean, cov, _ = model.unit_moments(everyone)
    n_obs = model.n_observations(everyone)
    target = goal_of["target"].reindex(everyone).to_numpy(dtype=np.float64)
    deadline = goal_of["deadline"].reindex(everyone)
    has_goal = ~np.isnan(target)
    live = has_goal & np.array([isinstance(d, date) and d >= as_of for d in deadline])
    p = np.full(len(everyone), np.nan)
    sigma = np.full(len(everyone), np.nan)
    expected = np.full(len(everyone), np.nan)
    if live.any():
        answer = model.goal_probability(
            everyone[live], time_of(deadline[live], window_start), target[live], bounds=ACCURACY_BOUNDS
        )
        p[live], sigma[live], expected[live] = answer["p"], answer["sigma"], answer["expected"]
    flag = np.where(
        ~has_goal,
        "no_goal",
        np.where(
            ~live,
            "deadline_passed",
            np.where(n_obs == 0, "no_history", np.where(n_obs < MIN_WEEKS, "little_history", "ok")),
        ),
    )
    return pd.DataFrame(
        {
            "user_id": everyone,
            "n_obs": n_obs,
            "m0": mean[:, 0],
            "m1": mean[:, 1],
            "v00": cov[:, 0, 0],
            "v01": cov[:, 0, 1],
            "v11": cov[:, 1, 1],
            "target": target,
            "deadline": [d if isinstance(d, date) else None for d in deadline],
            "p": p,
            "sigma": sigma,
            "expected": expected,
            "flag": flag,
        }
    )


def meta_row(
    ctx: JobContext, *, model: GrowthModel | None, window_start: date, n_obs: int, seconds: float, reason: str | None
) -> dict[str, Any]:
    """The ``growth_brms_meta`` row of this run (``reason`` set: a failed run)."""
    s = ctx.settings
    row: dict[str, Any] = {
        "run_id": ctx.run_id,
        "as_of": ctx.as_of,
        "status": "failed" if reason else "succeeded",
        "reason": reason,
        "formula": f"{_RESPONSE[s.brms_family]} ~ time + (time | user)",
        "family": s.brms_family,
        "sampler": s.brms_sampler,
        "iter": model.iter if model is not None else s.brms_iter,
        "chains": s.brms_chains,
        "lookback_weeks": s.lookback_weeks,
        "window_start": window_start,
        "priors": {},
        "n_units": 0,
        "n_obs": n_obs,
        "fixed_effects": None,
        "random_effects": None,
        "residual_sigma": None,
        "diagnostics": None,
        "elapsed_seconds": seconds,
        "model": None,
    }
    if model is not None and model.summary_ is not None:
        table = {
            name: {k: float(v) for k, v in values.items()} for name, values in model.summary_.to_dict("index").items()
        }
        body = model.to_json(include_units=False)
        row |= {
            "priors": body["priors_text"],
            "n_units": len(model.units_ or []),
            "fixed_effects": {k: table[k] for k in ("Intercept", "time")},
            "random_effects": {k: table[k] for k in ("sd(Intercept)", "sd(time)", "cor(Intercept,time)")},
            "residual_sigma": table.get("sigma"),
            "diagnostics": model.diagnostics_,
            "model": body,
        }
    return {k: json_safe(v) for k, v in row.items()}


def run(ctx: JobContext) -> JobOutcome:
    settings = ctx.settings
    require_kpi_through(ctx)
    started = time.perf_counter()
    first, last = window(ctx.as_of, settings.lookback_weeks)
    weekly = store.load_weekly_accuracy(ctx.conn, first_week=first, last_week=last)
    if weekly["user_id"].nunique() < 2:
        raise InsufficientDataError(
            f"too few students with attempts in the weeks {first} .. {last + timedelta(days=6)} to fit the growth "
            f"model ({weekly['user_id'].nunique()}); the previous model stays in use",
            {"first_week": first.isoformat(), "last_week": last.isoformat(), "rows": len(weekly)},
        )
    ctx.say(f"fitting {settings.brms_family} growth on {len(weekly)} student-weeks ({first} .. {last})")
    data = weekly_data(weekly, first, settings.brms_family)
    model = fit_model(settings, data)
    assert model.diagnostics_ is not None
    problems = diagnostics_problems(model.diagnostics_)
    if problems and RETRY_ITER_FACTOR > 1:
        # Small schools identify the slope SD weakly: longer chains usually settle it (what a brms user would do).
        ctx.say(f"diagnostics failed ({'; '.join(problems)}); refitting with {RETRY_ITER_FACTOR}x BRMS_ITER")
        model = fit_model(settings, data, iterations=RETRY_ITER_FACTOR * settings.brms_iter)
        assert model.diagnostics_ is not None
        problems = diagnostics_problems(model.diagnostics_)
    if problems:
        reason = "diagnostics failed: " + "; ".join(problems)
        row = meta_row(
            ctx,
            model=model,
            window_start=first,
            n_obs=len(weekly),
            seconds=time.perf_counter() - started,
            reason=reason,
        )
        raise DiagnosticsFailedError(
            f"{reason}; the previous model stays in use", {"diagnostics": row["diagnostics"]}, record=row
        )
    diagnostics = model.diagnostics_
    assert diagnostics is not None
    goals = store.load_goals(ctx.conn)
    units = goal_rows(model, goals, list(model.units_ or []), as_of=ctx.as_of, window_start=first)
    store.record_fit(
        ctx.conn,
        meta_row(
            ctx, model=model, window_start=first, n_obs=len(weekly), seconds=time.perf_counter() - started, reason=None
        ),
    )
    written = 1 + store.replace_units(ctx.conn, ctx.run_id, units)
    kpi_rows = store.write_weekly_p(ctx.conn, ctx.run_id, ctx.as_of)
    flags = units["flag"].value_counts().to_dict()
    ctx.say(f"P for {int(units['p'].notna().sum())} students; max R-hat {diagnostics['max_rhat']:.4f}")
    return JobOutcome(
        rows_written=written + kpi_rows,
        summary={
            "students": len(model.units_ or []),
            "student_weeks": len(weekly),
            "goal_probabilities": int(units["p"].notna().sum()),
            "flags": {str(k): int(v) for k, v in flags.items()},
            "max_rhat": diagnostics["max_rhat"],
            "divergences": diagnostics["divergences"],
            "iter": model.iter,
            "weekly_kpi_rows": kpi_rows,
        },
    )


def record_failure(conn: Connection, run_id: int, as_of: date, exc: BaseException) -> None:
    """Keep the ``growth_brms_meta`` row of a run whose diagnostics failed (status 'failed')."""
    if isinstance(exc, DiagnosticsFailedError) and exc.record is not None:
        store.record_fit(conn, exc.record)


FIT_BAYESIAN_GROWTH = Job(
    name=NAME,
    run=run,
    schedule=cron_of(NAME),
    description=BY_NAME[NAME].description,
    settings=("LOOKBACK_WEEKS", "BRMS_ITER", "BRMS_CHAINS", "BRMS_FAMILY", "BRMS_SAMPLER"),
    on_failure=record_failure,
)
