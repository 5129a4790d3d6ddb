"""Goal-attainment probability per student: the stored Bayesian growth model, or a simple per-student trend.

``compute_goal_attainment_probability`` is the original system's entry point; ``METRICS_USE_BAYESIAN`` chooses the
path (both return the same :class:`GoalAttainment` shape):

- **bayesian**: the latest succeeded ``fit-bayesian-growth`` model (``growth_brms_meta`` + the student's
  ``growth_unit`` row; a student not in it gets the population's answer, flag ``no_history``).
  ``P = P(expected accuracy at the deadline >= target)``, ``sigma`` = its posterior SD (engine docstring).
- **trend**: ordinary least squares of the student's weekly accuracy on time over the ``LOOKBACK_WEEKS`` window
  (the job's window and time scale), extrapolated to the deadline: ``mean = a + b T`` with standard error
  ``se = s * sqrt(1/n + (T - tbar)^2 / Sxx)`` (``s`` the residual SD, ``n - 2`` degrees of freedom), and
  ``P = Phi((mean - target) / se)``, ``sigma = se``, ``expected = clip(mean, 0, 1)``. Needs
  ``MIN_WEEKS`` (3) weeks: with fewer, P and sigma are None and the flag says ``little_history`` (no made-up
  certainty).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr
from sqlalchemy import Connection

from learnpulse.engines.growth import GrowthModel
from learnpulse.errors import InvalidInputError, NotFoundError
from learnpulse.jobs.fit_bayesian_growth import ACCURACY_BOUNDS, MIN_WEEKS, time_of
from learnpulse.settings import Settings
from learnpulse.store import growth as store
from learnpulse.store.buckets import complete_weeks as window

NO_MODEL = "no growth model yet: run fit-bayesian-growth (`learnpulse run fit-bayesian-growth`)"


@dataclass(frozen=True)
class GoalAttainment:
    """One student's answer. ``p``/``sigma``/``expected`` are None when there is no goal, the deadline has passed or
    (trend path) the history is too short; ``flag`` says which."""

    user_id: int
    target: float | None
    deadline: date | None
    p: float | None
    sigma: float | None
    expected: float | None
    n_weeks: int
    flag: str  # ok | little_history | no_history | no_goal | deadline_passed
    method: str  # bayesian | trend
    model_run_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _goals(
    conn: Connection, user_ids: list[int], target: float | None, deadline: date | None
) -> dict[int, tuple[float | None, date | None]]:
    """Each student's (target, deadline): the what-if values where given, else ``user_goal``'s."""
    if target is not None and not 0 <= target <= 1:
        raise InvalidInputError(
            f"target must be an accuracy between 0 and 1 (got {target})",
            {"problems": [{"field": "target", "reason": "outside [0, 1]"}]},
        )
    frame = store.load_goals(conn, user_ids)
    stored: dict[int, tuple[float, date]] = {
        int(u): (float(t), d) for u, t, d in zip(frame["user_id"], frame["target"], frame["deadline"], strict=True)
    }
    out: dict[int, tuple[float | None, date | None]] = {}
    for u in user_ids:
        goal_t, goal_d = stored.get(u, (None, None))
        out[u] = (target if target is not None else goal_t, deadline if deadline is not None else goal_d)
    return out


def _flag(target: float | None, deadline: date | None, as_of: date, n_weeks: int) -> str:
    if target is None or deadline is None:
        return "no_goal"
    if deadline < as_of:
        return "deadline_passed"
    if n_weeks == 0:
        return "no_history"
    return "little_history" if n_weeks < MIN_WEEKS else "ok"


def load_bayesian(conn: Connection, user_ids: list[int]) -> tuple[dict[str, Any], GrowthModel]:
    """The model in use (its ``growth_brms_meta`` row) with the per-student rows of ``user_ids`` installed."""
    fit = store.latest_fit(conn)
    if fit is None:
        raise NotFoundError(NO_MODEL, {"job": "fit-bayesian-growth"})
    rows = store.unit_rows(conn, int(fit["run_id"]), user_ids).rename(columns={"user_id": "unit"})
    return fit, GrowthModel.from_json(fit["model"], units=rows)


def bayesian_answers(
    conn: Connection, user_ids: list[int], *, as_of: date, target: float | None = None, deadline: date | None = None
) -> list[GoalAttainment]:
    fit, model = load_bayesian(conn, user_ids)
    goals = _goals(conn, user_ids, target, deadline)
    n_obs = model.n_observations(np.asarray(user_ids, dtype=object))
    out = []
    for u, n in zip(user_ids, n_obs, strict=True):
        t, d = goals[u]
        flag = _flag(t, d, as_of, int(n))
        p = sigma = expected = None
        if flag not in ("no_goal", "deadline_passed"):
            assert t is not None and d is not None
            answer = model.goal_probability([u], time_of(d, fit["window_start"]), t, bounds=ACCURACY_BOUNDS).iloc[0]
            p, sigma, expected = float(answer["p"]), float(answer["sigma"]), float(answer["expected"])
        out.append(GoalAttainment(u, t, d, p, sigma, expected, int(n), flag, "bayesian", int(fit["run_id"])))
    return out


def trend_answers(
    conn: Connection,
    user_ids: list[int],
    *,
    as_of: date,
    lookback_weeks: int,
    target: float | None = None,
    deadline: date | None = None,
) -> list[GoalAttainment]:
    first, last = window(as_of, lookback_weeks)
    weekly = store.load_weekly_accuracy(conn, first_week=first, last_week=last, user_ids=user_ids)
    weekly["t"] = (weekly["week"] - store.day_number(first)) / 7.0
    weekly["y"] = weekly["correct"] / weekly["attempts"]
    by_user = dict(tuple(weekly.groupby("user_id")))
    goals = _goals(conn, user_ids, target, deadline)
    out = []
    for u in user_ids:
        t, d = goals[u]
        rows = by_user.get(u, pd.DataFrame({"t": [], "y": []}))
        n = len(rows)
        flag = _flag(t, d, as_of, n)
        p = sigma = expected = None
        if flag == "ok":
            assert t is not None and d is not None
            mean, se = _ols_at(rows["t"].to_numpy(), rows["y"].to_numpy(), time_of(d, first))
            expected = float(np.clip(mean, *ACCURACY_BOUNDS))
            sigma = se
            p = float(ndtr((mean - t) / se)) if se > 0 else float(mean >= t)
        out.append(GoalAttainment(u, t, d, p, sigma, expected, n, flag, "trend"))
    return out


def _ols_at(t: np.ndarray[Any, Any], y: np.ndarray[Any, Any], at: float) -> tuple[float, float]:
    """Least-squares line through (t, y) evaluated at ``at``: (mean, its standard error)."""
    n = len(t)
    tbar = t.mean()
    sxx = float(((t - tbar) ** 2).sum())
    if sxx == 0:
        return float(y.mean()), float(y.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    slope = float(((t - tbar) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * tbar)
    resid = y - (intercept + slope * t)
    s2 = float((resid**2).sum() / max(n - 2, 1))
    mean = intercept + slope * at
    return mean, float(np.sqrt(s2 * (1.0 / n + (at - tbar) ** 2 / sxx)))


def compute_goal_attainment_probability(
    conn: Connection,
    user_id: int,
    settings: Settings,
    *,
    as_of: date,
    target: float | None = None,
    deadline: date | None = None,
    use_bayesian: bool | None = None,
) -> GoalAttainment:
    """The student's goal-attainment probability: the stored Bayesian model when ``METRICS_USE_BAYESIAN`` is true
    (or ``use_bayesian``), else the per-student trend. ``target``/``deadline`` override the stored goal (what-if)."""
    bayesian = settings.metrics_use_bayesian if use_bayesian is None else use_bayesian
    if bayesian:
        return bayesian_answers(conn, [int(user_id)], as_of=as_of, target=target, deadline=deadline)[0]
    return trend_answers(
        conn, [int(user_id)], as_of=as_of, lookback_weeks=settings.lookback_weeks, target=target, deadline=deadline
    )[0]
