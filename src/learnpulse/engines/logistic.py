"""Logistic regression by maximum likelihood (Newton-Raphson), with model-based standard errors and odds ratios.

``logit P(y = 1 | x) = intercept + (x - means) . coef``. Used by the churn model for the first day of the landmark
clock (:mod:`learnpulse.churn`). scikit-learn's ``LogisticRegression`` gives the same coefficients (a test checks
it, to ~1e-6) but no standard errors, which the stored model reports as odds-ratio intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from learnpulse.errors import InsufficientDataError, InvalidInputError

FloatArray = npt.NDArray[np.float64]
MAX_ITER = 50
TOL = 1e-10
HALVINGS = 40


def softplus(z: FloatArray) -> FloatArray:
    """``ln(1 + e^z)`` without overflow: ``-ln(1 - p)`` for ``p = expit(z)``."""
    return cast(FloatArray, np.logaddexp(0.0, z))


def _expit(z: FloatArray) -> FloatArray:
    return cast(FloatArray, np.exp(-softplus(-z)))


def _normal_p(z: FloatArray) -> FloatArray:
    """Two-sided p-value of a standard normal statistic: ``erfc(|z| / sqrt 2)``."""
    return np.array([math.erfc(abs(float(v)) / math.sqrt(2.0)) for v in z])


@dataclass(frozen=True, eq=False)  # numpy fields: compare to_json() instead
class Logit:
    """Maximum-likelihood logistic regression of a 0/1 outcome: ``logit P(t = 1 | x) = intercept +
    (x - means) . coef``. ``coef`` are log odds ratios per unit of each feature; ``intercept`` is the log-odds at the
    training means; ``variance`` is the inverse information of ``(intercept, coef)`` (model-based)."""

    features: tuple[str, ...]
    means: FloatArray
    scales: FloatArray  # training SDs (ddof=1): the internal standardisation
    intercept: float
    coef: FloatArray
    variance: FloatArray  # (p + 1, p + 1)
    log_likelihood: float
    n: int
    events: int
    n_iter: int

    @classmethod
    def fit(cls, x: FloatArray, y: npt.NDArray[Any], features: Sequence[str]) -> Logit:
        """Fit on a feature matrix ``x`` (rows x features, no constant column) and 0/1 outcomes ``y``.

        Newton-Raphson on standardised features ``z = (x - mean) / sd`` with step-halving maximises
        ``l = sum(y * eta - ln(1 + e^eta))``, ``eta = b0 + z . g``; it stops when ``|l_new - l_old| <= 1e-10 |l_new|``.
        The score is ``[1 z]' (y - p)``, the information ``[1 z]' diag(p (1 - p)) [1 z]``. A likelihood without a
        finite maximum (an outcome separated by the features) or a singular information is an
        :class:`InvalidInputError`; one outcome class only is an :class:`InsufficientDataError`.
        """
        yv = np.asarray(y, dtype=np.float64)
        events = int(yv.sum())
        if events == 0 or events == len(yv):
            raise InsufficientDataError(
                f"the outcome is {'never' if events == 0 else 'always'} observed in {len(yv)} rows: its "
                "odds ratios are not identifiable",
                {"rows": len(yv), "events": events},
            )
        means = x.mean(axis=0)
        scales = x.std(axis=0, ddof=1)
        if not (scales > 0).all():
            constant = [features[int(j)] for j in np.flatnonzero(~(scales > 0))]
            raise InvalidInputError(
                f"constant feature(s) {', '.join(constant)}",
                {"problems": [{"column": c, "reason": "constant"} for c in constant]},
            )
        z = np.column_stack([np.ones(len(yv)), (x - means) / scales])
        beta = np.zeros(z.shape[1])
        beta[0] = math.log(events / (len(yv) - events))

        def loglik(b: FloatArray) -> float:
            eta = z @ b
            return float(yv @ eta - softplus(eta).sum())

        current = loglik(beta)
        n_iter = 0
        while True:
            n_iter += 1
            if n_iter > MAX_ITER:
                raise _separation(features, f"no convergence in {MAX_ITER} iterations")
            p = _expit(z @ beta)
            info = z.T @ (z * (p * (1.0 - p))[:, None])
            step = _solve(info, z.T @ (yv - p), features)
            for _ in range(HALVINGS):
                candidate = loglik(beta + step)
                if math.isfinite(candidate) and candidate >= current - 1e-13 * abs(current):
                    break
                step = 0.5 * step  # the likelihood dropped: a shorter step along the same direction
            else:
                raise _separation(features, "step-halving could not increase the likelihood")
            beta, change, current = beta + step, abs(candidate - current), candidate
            if change <= TOL * abs(current):
                break
        p = _expit(z @ beta)
        info = z.T @ (z * (p * (1.0 - p))[:, None])
        # Like the Cox engine's check: a Newton step that is still large means the maximum is at infinity.
        last = _solve(info, z.T @ (yv - p), features)
        if (np.abs(last) > 1e-4 * np.maximum(1.0, np.abs(beta))).any():
            raise _separation(features, "the likelihood has no finite maximum")
        unit = np.concatenate(([1.0], scales))
        variance = _solve(info, np.eye(len(beta)), features) / np.outer(unit, unit)
        return cls(
            features=tuple(features),
            means=means,
            scales=scales,
            intercept=float(beta[0]),
            coef=beta[1:] / scales,
            variance=0.5 * (variance + variance.T),
            log_likelihood=current,
            n=len(yv),
            events=events,
            n_iter=n_iter,
        )

    def log_odds(self, x: FloatArray) -> FloatArray:
        """``intercept + (x - means) . coef`` per row of the feature matrix ``x`` (columns in ``features`` order)."""
        out: FloatArray = self.intercept + (x - self.means) @ self.coef
        return out

    def summary(self, alpha: float = 0.05) -> pd.DataFrame:
        """One row per feature: coef (log odds ratio), se, odds ratio with its ``1 - alpha`` interval, z, p, mean,
        sd."""
        se = np.sqrt(np.diag(self.variance))[1:]
        q = NormalDist().inv_cdf(1.0 - alpha / 2.0)
        return pd.DataFrame(
            {
                "coef": self.coef,
                "se": se,
                "odds_ratio": np.exp(self.coef),
                "or_lower": np.exp(self.coef - q * se),
                "or_upper": np.exp(self.coef + q * se),
                "z": self.coef / se,
                "p": _normal_p(self.coef / se),
                "mean": self.means,
                "sd": self.scales,
            },
            index=pd.Index(list(self.features), name="covariate"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "means": [float(v) for v in self.means],
            "scales": [float(v) for v in self.scales],
            "intercept": self.intercept,
            "coef": [float(v) for v in self.coef],
            "variance_matrix": [[float(v) for v in r] for r in self.variance],
            "log_likelihood": self.log_likelihood,
            "n": self.n,
            "events": self.events,
            "n_iter": self.n_iter,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Logit:
        features = tuple(str(v) for v in data["features"])
        p = len(features)
        return cls(
            features=features,
            means=finite_array(data["means"], (p,), "means"),
            scales=finite_array(data["scales"], (p,), "scales"),
            intercept=float(data["intercept"]),
            coef=finite_array(data["coef"], (p,), "coef"),
            variance=finite_array(data["variance_matrix"], (p + 1, p + 1), "variance_matrix"),
            log_likelihood=float(data["log_likelihood"]),
            n=int(data["n"]),
            events=int(data["events"]),
            n_iter=int(data["n_iter"]),
        )


def _solve(info: FloatArray, rhs: FloatArray, features: Sequence[str]) -> FloatArray:
    try:
        factor = np.linalg.cholesky(info)
    except np.linalg.LinAlgError:
        raise InvalidInputError(
            "the information matrix is singular (collinear features?)",
            {"problems": [{"column": ", ".join(features), "reason": "singular information"}]},
        ) from None
    return cast(FloatArray, np.linalg.solve(factor.T, np.linalg.solve(factor, rhs)))


def _separation(features: Sequence[str], why: str) -> InvalidInputError:
    return InvalidInputError(
        f"the logistic regression did not converge: {why} (a feature may separate a 0/1 outcomes from the other rows)",
        {"problems": [{"column": ", ".join(features), "reason": "not converged"}]},
    )


def finite_array(values: Any, shape: tuple[int, ...], name: str) -> FloatArray:
    a = np.asarray(values, dtype=np.float64)
    if a.shape != shape or not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values of shape {shape}, got {a.shape}")
    return a
