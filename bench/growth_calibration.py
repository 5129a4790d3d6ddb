"""Study (issue 5): how well calibrated is the goal probability P, and what would a model aware of learner types buy?

Not a speed benchmark: it measures the quality bar the growth job does not meet (reliability of P within 0.05 per
decile) and the alternative that was tried before changing the model, so the decision can be taken on figures.

Data: the synthetic world (``WorldParams(students=--students, seed=--seed)``, default 2,000 and the default seed),
build-kpi as of its last day, then the growth job's own steps (``fit_bayesian_growth.weekly_data`` / ``goal_rows``)
on the last 12 weeks. Outcome: the simulator's ``goal_reached``. Per family (``--families``):

- **pooled**: what the job fits, ``y ~ time + (time | user)`` over all students (one normal population of
  intercepts and slopes);
- **per type**: the same formula fitted separately within each **true** learner type (population means, SDs,
  correlation and, gaussian, residual sigma per type): the best case of population covariates / a mixture, since it
  is given the types that a real model would have to estimate (e.g. from cluster-segments, ARI ~0.89).

Printed: for each, the reliability table (P deciles: mean P, share that reached the goal, n), the largest
|mean P - share| over the deciles, the Brier score, mean P against the share per true type, and fit seconds.
Finally the sampling yardstick: the share of simulated perfectly calibrated P vectors of the same size (P from the
pooled fit, outcomes drawn from it) whose deciles all lie within 0.05, i.e. how often the bar can be met at this
number of students even by a perfect model.

    .venv/bin/python bench/growth_calibration.py [--students 2000] [--seed N] [--families gaussian,binomial]
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from common import fresh_database, school_database
from learnpulse.engines.growth import GrowthModel
from learnpulse.jobs import fit_bayesian_growth as job
from learnpulse.store import growth as store
from learnpulse.store.buckets import complete_weeks
from learnpulse.synthetic import WorldParams

BAR = 0.05


def school(students: int, seed: int | None) -> tuple[Any, pd.DataFrame, pd.DataFrame, date, date]:
    """The world after build-kpi in a fresh SQLite database under bench/out: (students truth, weekly accuracy, live
    goals, window start, as-of date)."""
    params = WorldParams(students=students) if seed is None else WorldParams(students=students, seed=seed)
    engine, world, as_of = school_database(fresh_database("sqlite", "growth_calibration"), params)
    first, last = complete_weeks(as_of, 12)
    with engine.connect() as conn:
        weekly = store.load_weekly_accuracy(conn, first_week=first, last_week=last)
        goals = store.load_goals(conn)
    engine.dispose()
    truth = world.students.set_index("user_id")
    goals = goals[[isinstance(d, date) and d >= as_of for d in goals["deadline"]]]
    return truth, weekly, goals, first, as_of


def goal_p(family: str, weekly: pd.DataFrame, goals: pd.DataFrame, first: date, as_of: date) -> pd.DataFrame:
    data = job.weekly_data(weekly, first, family)
    model = GrowthModel(family, iter=1000, chains=2, seed=job.SEED).fit(
        data["unit"], data["time"], data["y"], data.get("trials")
    )
    mine = goals[goals["user_id"].isin(weekly["user_id"].unique())]
    rows = job.goal_rows(model, mine, list(model.units_ or []), as_of=as_of, window_start=first)
    return rows.dropna(subset=["p"])[["user_id", "p"]]


def report(label: str, p: pd.DataFrame, truth: pd.DataFrame, seconds: float) -> None:
    reached = p["user_id"].map(truth["goal_reached"]).astype(float)
    decile = pd.qcut(p["p"].rank(method="first"), 10, labels=False)
    table = (
        pd.DataFrame({"P": p["p"], "reached": reached})
        .groupby(decile)
        .agg(mean_P=("P", "mean"), reached=("reached", "mean"), n=("P", "size"))
    )
    worst = float((table["mean_P"] - table["reached"]).abs().max())
    brier = float(((p["p"] - reached) ** 2).mean())
    print(f"\n{label}: {len(p)} students, fit {seconds:.0f} s; max |mean P - reached| {worst:.3f}, Brier {brier:.4f}")
    print(table.round(3).T.to_string())
    types = pd.DataFrame({"type": p["user_id"].map(truth["learner_type"]), "P": p["p"], "reached": reached})
    print(types.groupby("type").agg(mean_P=("P", "mean"), reached=("reached", "mean"), n=("P", "size")).round(3).T)


def perfect_pass_rate(p: np.ndarray[Any, Any], draws: int = 2000, seed: int = 0) -> float:
    """Share of outcome vectors drawn from P itself whose 10 deciles all lie within BAR of their mean P."""
    rng = np.random.default_rng(seed)
    bins = np.array_split(np.argsort(p, kind="stable"), 10)
    means = np.array([p[b].mean() for b in bins])
    passed = 0
    for _ in range(draws):
        y = rng.random(len(p)) < p
        passed += int(np.all(np.abs(np.array([y[b].mean() for b in bins]) - means) <= BAR))
    return passed / draws


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--students", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--families", default="gaussian,binomial")
    args = parser.parse_args(argv)
    truth, weekly, goals, first, as_of = school(args.students, args.seed)
    print(
        f"world: {args.students} students, {len(weekly)} student-weeks, {len(goals)} live goals; bar {BAR} per decile"
    )
    pooled_p: pd.DataFrame | None = None
    for family in args.families.split(","):
        started = time.perf_counter()
        pooled = goal_p(family, weekly, goals, first, as_of)
        report(f"{family}, pooled (the job)", pooled, truth, time.perf_counter() - started)
        pooled_p = pooled if pooled_p is None else pooled_p
        started = time.perf_counter()
        kind = weekly["user_id"].map(truth["learner_type"])
        per_type = pd.concat([goal_p(family, part, goals, first, as_of) for _, part in weekly.groupby(kind)])
        report(f"{family}, per true learner type", per_type, truth, time.perf_counter() - started)
    if pooled_p is not None:
        rate = perfect_pass_rate(pooled_p["p"].to_numpy())
        print(f"\na perfectly calibrated P of this size meets the bar in {rate:.0%} of outcome draws")


if __name__ == "__main__":
    main()
