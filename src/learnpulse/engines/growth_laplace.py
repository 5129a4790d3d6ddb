"""Per-unit Laplace approximation of the binomial growth model, used to reparameterise its NUTS sampler.

For unit ``i`` with coefficients ``c_i = (intercept, slope)`` on the logit scale, rows ``j`` (time ``t_ij``,
``y_ij`` successes of ``n_ij`` trials) and a normal prior ``c_i ~ N(b, S)``:

    log p(c_i | y_i) = sum_j [y_ij eta_ij - n_ij log(1 + e^eta_ij)] - (c_i - b)' S^-1 (c_i - b) / 2 + const,
    eta_ij = c_i . (1, t_ij),

a concave function whose mode ``m_i`` and Hessian ``-H_i`` are found by Newton's method for all units at once
(2 x 2 systems, sums by ``bincount``). ``b`` and ``S`` are moment estimates of the population (two passes: a weak
prior, then the population those modes imply). ``L_i = chol(H_i^-1)`` is then the shape of each unit's posterior,
so ``c_i = m_i + L_i w_i`` makes every unit's coordinates ``w_i`` roughly standard normal whatever its history.
This is only a change of variables for the sampler (affine, constant Jacobian): the posterior is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import expit

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_MAX_STEP = 2.0  # logit units: Newton steps are capped so that units with all-or-nothing answers cannot overshoot
_NEWTON_ITERATIONS = 50
_TOLERANCE = 1e-10


@dataclass(frozen=True)
class UnitLaplace:
    """Per-unit modes ``mode`` (units, 2) and Cholesky factors ``chol`` (units, 2, 2, lower) of the posterior
    covariances at those modes, and the population mean ``b`` (2,) and covariance ``cov`` (2, 2) they imply."""

    mode: FloatArray
    chol: FloatArray
    b: FloatArray
    cov: FloatArray

    def coefficients(self, w: FloatArray) -> FloatArray:
        """``c = m + L w`` for ``w`` shaped (..., units, 2)."""
        c0 = self.mode[:, 0] + self.chol[:, 0, 0] * w[..., 0]
        c1 = self.mode[:, 1] + self.chol[:, 1, 0] * w[..., 0] + self.chol[:, 1, 1] * w[..., 1]
        return np.stack([c0, c1], axis=-1)


def _inverse_2x2(a: FloatArray, b: FloatArray, d: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Entries (00, 01, 11) of the inverse of the symmetric matrices [[a, b], [b, d]]."""
    det = a * d - b * b
    return d / det, -b / det, a / det


def _newton(  # noqa: PLR0917 - the data's columns, as unit_laplace receives them
    code: IntArray, time: FloatArray, y: FloatArray, trials: FloatArray, n_units: int, b: FloatArray, cov: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Modes (units, 2) and negative Hessians (units, 3: entries 00, 01, 11) of every unit's log posterior under the
    prior ``N(b, cov)``."""
    p00, p01, p11 = _inverse_2x2(cov[0, 0], cov[0, 1], cov[1, 1])
    c = np.tile(b, (n_units, 1))
    t2 = time * time
    for _ in range(_NEWTON_ITERATIONS):
        p = expit(c[code, 0] + c[code, 1] * time)
        resid, weight = y - trials * p, trials * p * (1.0 - p)
        d0, d1 = c[:, 0] - b[0], c[:, 1] - b[1]
        g0 = np.bincount(code, resid, n_units) - (p00 * d0 + p01 * d1)
        g1 = np.bincount(code, resid * time, n_units) - (p01 * d0 + p11 * d1)
        h00 = np.bincount(code, weight, n_units) + p00
        h01 = np.bincount(code, weight * time, n_units) + p01
        h11 = np.bincount(code, weight * t2, n_units) + p11
        i00, i01, i11 = _inverse_2x2(h00, h01, h11)
        step = np.stack([i00 * g0 + i01 * g1, i01 * g0 + i11 * g1], axis=1)
        size = np.abs(step).max(axis=1, keepdims=True)
        c += step * np.minimum(1.0, _MAX_STEP / np.maximum(size, 1e-300))
        if float(size.max()) < _TOLERANCE:
            break
    p = expit(c[code, 0] + c[code, 1] * time)
    weight = trials * p * (1.0 - p)
    hess = np.stack(
        [
            np.bincount(code, weight, n_units) + p00,
            np.bincount(code, weight * time, n_units) + p01,
            np.bincount(code, weight * t2, n_units) + p11,
        ],
        axis=1,
    )
    return c, hess


def _population(mode: FloatArray, hess: FloatArray, floor: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Moment estimates: ``b`` = mean of the modes, ``S`` = their covariance less the average posterior covariance
    (the modes scatter by both), its eigenvalues kept above ``floor``'s so that ``S`` stays a valid prior."""
    i00, i01, i11 = _inverse_2x2(hess[:, 0], hess[:, 1], hess[:, 2])
    within = np.array([[i00.mean(), i01.mean()], [i01.mean(), i11.mean()]])
    scatter = np.cov(mode, rowvar=False) if len(mode) > 1 else np.zeros((2, 2))
    values, vectors = np.linalg.eigh(scatter - within)
    floor_values = np.linalg.eigvalsh(floor)
    values = np.maximum(values, floor_values.min())
    return mode.mean(axis=0), (vectors * values) @ vectors.T


def unit_laplace(  # noqa: PLR0917 - one argument per data column, as the engine holds them
    code: IntArray, time: FloatArray, y: FloatArray, trials: FloatArray, n_units: int, intercept: float
) -> UnitLaplace:
    """Inputs: each row's unit index ``code`` (0..n_units-1), ``time``, successes ``y`` of ``trials``; ``intercept``
    a starting guess of the population intercept (logit). Output: :class:`UnitLaplace`."""
    span = max(float(np.ptp(time)), 1.0)
    # Weak first prior: logit SD 2.5 for the intercept and for the change over the whole time span.
    weak = np.diag([2.5**2, (2.5 / span) ** 2])
    # A lower bound for S: 1% of the weak prior's SDs, so near-zero variance estimates cannot collapse the whitening.
    floor = weak * 1e-4
    b = np.array([intercept, 0.0])
    mode, hess = _newton(code, time, y, trials, n_units, b, weak)
    b, cov = _population(mode, hess, floor)
    mode, hess = _newton(code, time, y, trials, n_units, b, cov)
    i00, i01, i11 = _inverse_2x2(hess[:, 0], hess[:, 1], hess[:, 2])
    chol = np.zeros((n_units, 2, 2))
    chol[:, 0, 0] = np.sqrt(i00)
    chol[:, 1, 0] = i01 / chol[:, 0, 0]
    chol[:, 1, 1] = np.sqrt(np.maximum(i11 - chol[:, 1, 0] ** 2, 1e-300))
    return UnitLaplace(mode=mode, chol=chol, b=b, cov=cov)
