"""Study (issue 5): would a growth mixture, latent learner types informed by cluster-segments, make P calibrated?

Not a speed benchmark and not a candidate implementation: a measurement of what the model structure would buy, for
the model decision that `bench/growth_calibration.py` shows is needed (the brms formula meets the calibration bar
only when fitted within the true learner types).

Model (binomial family, logit link, the job's weekly data and goals): student ``i``'s coefficients ``c_i =
(intercept, slope)`` come from one of ``K`` bivariate normal populations ``N(mu_k, Sigma_k)``; the membership prior
is ``pi_{k|s}`` for a student in cluster-segments segment ``s``. Fitted by EM with point estimates of the
populations (empirical Bayes, not full Bayes):

- E-step, per student and component, a Laplace approximation (Newton on the 2-D log posterior) of ``p(c_i | y_i,
  k)`` (mean ``m_ik``, covariance ``V_ik``) and of the marginal likelihood ``p(y_i | k)``; responsibilities
  ``r_ik`` proportional to ``pi_{k|s_i} p(y_i | k)``;
- M-step: ``mu_k``, ``Sigma_k`` from the responsibility-weighted moments of ``m_ik`` and ``V_ik``; ``pi_{k|s}`` the
  mean responsibilities in segment ``s``, mixed with the uniform ``(1 - floor) pi + floor / K`` (without the floor
  EM drives a segment's prior for a type it rarely holds to zero, and that segment's students of that type are then
  read as the segment's usual type whatever their trajectory).

``P_i = sum_k r_ik Phi((x_T' m_ik - logit(target)) / sqrt(x_T' V_ik x_T))``, ``x_T = (1, t_deadline)``; the expected
accuracy and sigma for z from 400 draws of the mixture. Variants: **known types** (membership fixed to the true
type: checks this machinery against the NUTS per-type fit of growth_calibration.py), **segments** (fixed to the
segment), **mixture** (``K`` = the number of segments, the prior learned and floored) and **growth only** (the
mixture with a uniform prior: what the trajectories alone tell; EM still starts from the segments' split, as every
variant does, since a uniform start would leave the components identical), each also screened as in
growth_calibration.py (weeks far below the student's line under their most likely component dropped, then refitted).

    .venv/bin/python bench/growth_mixture.py [--students 6000] [--seed N] [--floor 0.1] [--screen-z -3]
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm

import growth_calibration as calibration
from learnpulse.engines.growth_laplace import unit_modes
from learnpulse.jobs import fit_bayesian_growth as job

Array = np.ndarray[Any, Any]
DRAWS = 400
EM_ITERATIONS = 60


class Grid:
    """The window's rows as the job gives them to the engine (``fit_bayesian_growth.weekly_data``), with each row's
    student index ``code`` into ``users``."""

    def __init__(self, weekly: pd.DataFrame, first: date) -> None:
        data = job.weekly_data(weekly, first, "binomial")
        self.users, self.code = np.unique(data["unit"], return_inverse=True)
        self.time, self.y, self.trials = data["time"], data["y"], data["trials"]


def laplace(grid: Grid, mu: Array, cov: Array) -> tuple[Array, Array, Array]:
    """Per student, the Laplace approximation of the posterior of c under the prior N(mu, cov) (modes and curvatures
    from ``growth_laplace.unit_modes``, the engine's own): mode (n, 2), covariance (n, 2, 2) and log marginal
    likelihood (n,) (up to the binomial coefficients, the same for every component)."""
    n_units = len(grid.users)
    mode, info = unit_modes(grid.code, grid.time, grid.y, grid.trials, n_units, mu, cov)
    assert np.isfinite(mode).all(), "a Laplace mode is not finite"
    hessian = np.stack([info[:, [0, 1]], info[:, [1, 2]]], axis=1)  # (n, 2, 2) negative Hessian
    p = np.clip(expit(mode[grid.code, 0] + mode[grid.code, 1] * grid.time), 1e-12, 1 - 1e-12)
    loglik = np.bincount(grid.code, grid.y * np.log(p) + (grid.trials - grid.y) * np.log1p(-p), n_units)
    d = mode - mu
    log_prior = -0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    log_ml = loglik + log_prior + np.log(2 * np.pi) - 0.5 * np.log(info[:, 0] * info[:, 2] - info[:, 1] ** 2)
    return mode, np.linalg.inv(hessian), log_ml


def em(
    grid: Grid, segment: Array, k: int, *, fixed: Array | None, floor: float
) -> tuple[Array, Array, Array, Array, Array]:
    """The mixture's fit: (mu (K, 2), Sigma (K, 2, 2), m (K, n, 2), V (K, n, 2, 2), r (n, K)). ``fixed``:
    responsibilities held fixed (one-hot), else learned with the membership prior per ``segment`` code."""
    # start: every student's Laplace mode under one vague prior, grouped by segment (segment code mod K)
    m0, v0, _ = laplace(grid, np.array([0.0, 0.05]), np.diag([4.0, 0.04]))
    r = fixed if fixed is not None else np.eye(k)[segment % k] * 0.8 + 0.2 / k
    m, v = np.broadcast_to(m0, (k, *m0.shape)), np.broadcast_to(v0, (k, *v0.shape))
    mu, sigma = np.empty((k, 2)), np.empty((k, 2, 2))
    for _ in range(EM_ITERATIONS):
        for j in range(k):
            w = r[:, j] / r[:, j].sum()
            mu[j] = w @ m[j]
            d = m[j] - mu[j]
            sigma[j] = np.einsum("n,ni,nj->ij", w, d, d) + np.einsum("n,nij->ij", w, v[j]) + 1e-8 * np.eye(2)
        parts = [laplace(grid, mu[j], sigma[j]) for j in range(k)]
        m, v = np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
        if fixed is None:
            log_ml = np.stack([p[2] for p in parts], 1)
            prior = np.stack([r[segment == s].mean(0) for s in range(segment.max() + 1)])
            log_post = np.log((1 - floor) * prior[segment] + floor / k) + log_ml
            r = np.exp(log_post - log_post.max(1, keepdims=True))
            r /= r.sum(1, keepdims=True)
    return mu, sigma, m, v, r


def goal_rows(s: calibration.School, grid: Grid, m: Array, v: Array, r: Array, *, seed: int = 0) -> pd.DataFrame:
    """P, the expected accuracy at the deadline and sigma for the students with a live goal."""
    goals = s.goals.drop_duplicates("user_id").set_index("user_id").reindex(grid.users)
    live = goals["target"].notna().to_numpy()
    users = grid.users[live]
    t_goal = job.time_of(pd.Series(list(goals["deadline"][live])), s.first)
    x = np.stack([np.ones_like(t_goal), t_goal], 1)
    mean = np.einsum("kni,ni->kn", m[:, live], x)
    sd = np.sqrt(np.einsum("ni,knij,nj->kn", x, v[:, live], x))
    threshold = logit(goals["target"].to_numpy(dtype=np.float64)[live])
    p = (r[live].T * norm.sf((threshold - mean) / sd)).sum(0)
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(r[live], 1)
    component = (rng.random((len(users), DRAWS, 1)) > cumulative[:, None, :-1]).sum(2)
    eta = np.take_along_axis(mean.T, component, 1) + np.take_along_axis(sd.T, component, 1) * rng.standard_normal(
        (len(users), DRAWS)
    )
    accuracy = expit(eta)
    return pd.DataFrame(
        {"p": p, "expected": accuracy.mean(1), "sigma": accuracy.std(1)}, index=pd.Index(users, name="user_id")
    )


def fit_once(
    s: calibration.School, weekly: pd.DataFrame, variant: str, *, floor: float
) -> tuple[Grid, Array, Array, Array, int]:
    """The variant's EM fit on ``weekly``: (grid, m, V, r, K)."""
    grid = Grid(weekly, s.first)
    if variant == "known types":
        _, codes = np.unique(s.truth["learner_type"].reindex(grid.users).to_numpy(), return_inverse=True)
    else:
        segments = weekly.drop_duplicates("user_id").set_index("user_id")["segment"].reindex(grid.users)
        _, codes = np.unique(segments.to_numpy(), return_inverse=True)
    if variant in ("known types", "segments"):
        k = int(codes.max()) + 1  # segments: the students the clustering left out form a group of their own
        fixed: Array | None = np.eye(k)[codes]
    else:  # as many types as the clustering found
        k, fixed = int((np.unique(weekly["segment"]) >= 0).sum()), None
    _, _, m, v, r = em(grid, codes, k, fixed=fixed, floor=1.0 if variant == "growth only" else floor)
    return grid, m, v, r, k


def fit_variant(
    s: calibration.School, variant: str, *, floor: float, screen_z: float
) -> tuple[calibration.Answers, calibration.Answers, int]:
    """The variant fitted, and refitted without the student-weeks below ``screen_z`` against the student's line under
    their most likely component: (unscreened, screened) answers and K. The screened seconds include the first fit."""
    started = time.perf_counter()
    grid, m, v, r, k = fit_once(s, s.weekly, variant, floor=floor)
    rows = goal_rows(s, grid, m, v, r)
    plain = calibration.Answers(rows, time.perf_counter() - started, np.zeros(len(s.weekly), dtype=bool))
    best = m[r.argmax(1), np.arange(len(grid.users))]
    low = calibration.below(s.weekly, expit(best[grid.code, 0] + best[grid.code, 1] * grid.time), screen_z)
    grid, m, v, r, _ = fit_once(s, s.weekly[~low], variant, floor=floor)
    screened = calibration.Answers(goal_rows(s, grid, m, v, r), time.perf_counter() - started, low)
    return plain, screened, k


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--students", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--floor", type=float, default=0.1)
    parser.add_argument("--screen-z", type=float, default=-3.0)
    parser.add_argument("--variants", default="known types,segments,mixture,growth only")
    args = parser.parse_args(argv)
    s = calibration.school(args.students, args.seed)
    print(f"world: {args.students} students, {len(s.goals)} live goals; membership prior floor {args.floor}")
    for variant in args.variants.split(","):
        plain, screened, k = fit_variant(s, variant, floor=args.floor, screen_z=args.screen_z)
        label = f"binomial, EM mixture: {variant} (K={k})"
        calibration.report(label, s, plain.rows, plain.dropped, plain.seconds)
        calibration.report(
            f"{label}, screened (z < {args.screen_z:g})", s, screened.rows, screened.dropped, screened.seconds
        )


if __name__ == "__main__":
    main()
