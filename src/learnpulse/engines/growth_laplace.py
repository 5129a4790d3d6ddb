"""Per-unit Gaussian approximations of the binomial growth model's likelihood, used to reparameterise its sampler.

For unit ``i`` with coefficients ``c_i = (intercept, slope)`` on the logit scale and rows ``j`` (time ``t_ij``,
``y_ij`` successes of ``n_ij`` trials), the log likelihood ``sum_j [y_ij eta_ij - n_ij log(1 + e^eta_ij)]``,
``eta_ij = c_i . (1, t_ij)``, is concave. Under a normal prior ``c_i ~ N(b, S)`` its posterior mode ``m_i`` is found by
Newton's method for all units at once (2 x 2 systems, sums by ``bincount``), with ``b`` and ``S`` moment estimates
of the population (two passes: a weak prior, then the population those modes imply). At ``m_i`` the likelihood is
approximated by the Gaussian with information ``Q_i`` (its negative Hessian there) and information-weighted
location ``r_i = Q_i m_i + S^-1 (m_i - b)`` (the score balance at the mode).

Given the population parameters ``h = (b, Sigma)``, unit ``i``'s conditional posterior is then approximately
``N(mu_i(h), P_i(h)^-1)`` with ``P_i = Q_i + Sigma^-1`` and ``mu_i = P_i^-1 (r_i + Sigma^-1 b)`` (exact for a
Gaussian likelihood), and the sampler works in ``w_i`` with ``c_i = mu_i(h) + U_i(h)^-T w_i``, ``U_i U_i' = P_i``:
a change of variables that is exact whatever the approximation (its log Jacobian, ``-sum_i log det U_i(h)``, is added
to the density), under which each ``w_i`` is close to standard normal *and* nearly independent of ``h``: the funnel
between the slopes' SD and the slopes, which neither the centred nor brms's non-centred form avoids when each
unit's data pin its slope down only partly, is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    """Per unit: the mode ``mode`` (units, 2) under the moment-estimated prior, the likelihood's information ``q``
    (units, 3: entries 00, 01, 11) and location ``r`` (units, 2) there; and the population mean ``b`` (2,) and
    covariance ``cov`` (2, 2) of the moment estimates."""

    mode: FloatArray
    q: FloatArray
    r: FloatArray
    b: FloatArray
    cov: FloatArray


def conditional_map(xp: Any, w: Any, h: dict[str, Any], q: Any, r: Any) -> tuple[Any, Any, Any]:
    """``c = mu(h) + U(h)^-T w`` (see the module docstring) and its log Jacobian ``-sum log det U`` per draw.

    ``xp``: ``numpy`` or ``jax.numpy`` (the sampler and the draws share this one function). ``w``: (..., units, 2);
    ``h``: ``b0, b1, tau0, l10, l11`` (``Sigma = L L'``, ``L = [[tau0, 0], [l10, l11]]``), each shaped (..., 1) or
    scalar; ``q``: (units, 3); ``r``: (units, 2), all of one float dtype, in which ``c`` is computed. Returns ``c0``,
    ``c1`` (..., units) and the log Jacobian (...), summed in double."""
    tau0, l10, l11 = h["tau0"], h["l10"], h["l11"]
    # Sigma^-1 = L^-T L^-1 for the lower-triangular L.
    s00 = 1.0 / (tau0 * tau0) + (l10 * l10) / (tau0 * tau0 * l11 * l11)
    s01 = -l10 / (tau0 * l11 * l11)
    s11 = 1.0 / (l11 * l11)
    p00, p01, p11 = q[:, 0] + s00, q[:, 1] + s01, q[:, 2] + s11
    rhs0 = r[:, 0] + s00 * h["b0"] + s01 * h["b1"]
    rhs1 = r[:, 1] + s01 * h["b0"] + s11 * h["b1"]
    det = p00 * p11 - p01 * p01
    mu0 = (p11 * rhs0 - p01 * rhs1) / det
    mu1 = (p00 * rhs1 - p01 * rhs0) / det
    u00 = xp.sqrt(p00)
    u10 = p01 / u00
    u11 = xp.sqrt(p11 - u10 * u10)
    x1 = w[..., 1] / u11  # solve U' x = w (U' upper triangular)
    x0 = (w[..., 0] - u10 * x1) / u00
    # Summed in double whatever the working precision: ~10^5 terms.
    log_jacobian = -xp.sum((xp.log(u00) + xp.log(u11)).astype("float64"), axis=-1)
    return mu0 + x0, mu1 + x1, log_jacobian


def _inverse_2x2(a: FloatArray, b: FloatArray, d: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Entries (00, 01, 11) of the inverse of the symmetric matrices [[a, b], [b, d]]."""
    det = a * d - b * b
    return d / det, -b / det, a / det


def mean_inverse(info: FloatArray) -> FloatArray:
    """The average (2, 2) of the inverses of symmetric 2 x 2 matrices given by their entries (units, 3: 00, 01, 11):
    e.g. the mean posterior covariance from per-unit information matrices."""
    i00, i01, i11 = _inverse_2x2(info[:, 0], info[:, 1], info[:, 2])
    return np.array([[i00.mean(), i01.mean()], [i01.mean(), i11.mean()]])


def unit_modes(  # noqa: PLR0917 - the data's columns, as unit_laplace receives them
    code: IntArray, time: FloatArray, y: FloatArray, trials: FloatArray, n_units: int, b: FloatArray, cov: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Modes (units, 2) and negative Hessians (units, 3: entries 00, 01, 11) of every unit's log posterior under the
    prior ``N(b, cov)`` (capped Newton steps from ``b``)."""
    prior = np.array(_inverse_2x2(cov[0, 0], cov[0, 1], cov[1, 1]))
    x = (np.ones_like(time), time, time * time)  # the row weights of the 00, 01 and 11 entries

    def information(c: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Each row's residual ``y - n p`` and each unit's negative Hessian (units, 3), prior included, at ``c``."""
        p = expit(c[code, 0] + c[code, 1] * time)
        weight = trials * p * (1.0 - p)
        return y - trials * p, np.stack([np.bincount(code, weight * v, n_units) for v in x], axis=1) + prior

    c = np.tile(b, (n_units, 1))
    for _ in range(_NEWTON_ITERATIONS):
        resid, hess = information(c)
        d0, d1 = c[:, 0] - b[0], c[:, 1] - b[1]
        g0 = np.bincount(code, resid, n_units) - (prior[0] * d0 + prior[1] * d1)
        g1 = np.bincount(code, resid * time, n_units) - (prior[1] * d0 + prior[2] * d1)
        i00, i01, i11 = _inverse_2x2(hess[:, 0], hess[:, 1], hess[:, 2])
        step = np.stack([i00 * g0 + i01 * g1, i01 * g0 + i11 * g1], axis=1)
        size = np.abs(step).max(axis=1, keepdims=True)
        c += step * np.minimum(1.0, _MAX_STEP / np.maximum(size, 1e-300))
        if float(size.max()) < _TOLERANCE:
            break
    return c, information(c)[1]


def _population(mode: FloatArray, hess: FloatArray, floor: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Moment estimates: ``b`` = mean of the modes, ``S`` = their covariance less the average posterior covariance
    (the modes scatter by both), its eigenvalues kept above ``floor``'s so that ``S`` stays a valid prior."""
    within = mean_inverse(hess)
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
    mode, hess = unit_modes(code, time, y, trials, n_units, b, weak)
    b, cov = _population(mode, hess, floor)
    mode, hess = unit_modes(code, time, y, trials, n_units, b, cov)
    p00, p01, p11 = _inverse_2x2(cov[0, 0], cov[0, 1], cov[1, 1])
    q = hess - np.array([p00, p01, p11])  # the likelihood's part of the negative Hessian
    d0, d1 = mode[:, 0] - b[0], mode[:, 1] - b[1]
    r = np.stack(
        [
            q[:, 0] * mode[:, 0] + q[:, 1] * mode[:, 1] + p00 * d0 + p01 * d1,
            q[:, 1] * mode[:, 0] + q[:, 2] * mode[:, 1] + p01 * d0 + p11 * d1,
        ],
        axis=1,
    )
    return UnitLaplace(mode=mode, q=q, r=r, b=b, cov=cov)
