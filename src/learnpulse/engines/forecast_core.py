"""The maths of the forecast engine, batched over many series: prophet's linear-trend model, its MAP fit, its
forecast simulation and the residual anomaly rule. NumPy (and ``scipy.special``) only; no pandas, no prophet.

Everything here works on *padded batches*: ``n`` series in rows, each series' points in the first ``L_i`` columns
of a ``(n, T)`` array (sorted by time), the rest padding that a weight ``w = 0`` keeps out of every sum.

**The model** (prophet's ``prophet.stan`` with ``trend_indicator = 0`` and no regressors; all on prophet's scales:
``y_s = y / y_scale`` with ``y_scale = max |y|`` ("absmax"; 1 if that is 0), ``t = (ds - start) / t_scale`` with
``start = min ds`` and ``t_scale = max ds - min ds``, so ``t`` runs over [0, 1])::

    trend(t) = k t + m + sum_j delta_j (t - c_j)_+        (c_j: changepoint times; (x)_+ = max(x, 0))
    y_s ~ N(trend(t), sigma^2),  k ~ N(0, 5),  m ~ N(0, 5),  delta_j ~ Laplace(0, tau),  sigma ~ N+(0, 0.5)

``(k + sum_{c_j <= t} delta_j) t + (m - sum_{c_j <= t} c_j delta_j)`` is prophet's form of the same line.
Changepoints are prophet's: with ``L`` points, ``h = floor(L * changepoint_range)`` and
``S = min(n_changepoints, h - 1)``, they are the times of points ``round(linspace(0, h - 1, S + 1))[1:]``; with
``S = 0`` prophet keeps one dummy changepoint at ``t = 0`` (its column equals ``t``) and folds its ``delta`` into
``k`` after the fit, and so do we.

**The log-posterior** is the one Stan optimises and reports as ``lp__`` (``~`` statements drop constants; the
optimiser works without the Jacobian of ``sigma > 0``), with ``lambda = 1 / tau``::

    lp = -(k^2 + m^2) / 50 - lambda sum_j |delta_j| - 2 sigma^2 - L log sigma - RSS / (2 sigma^2)

(``RSS = sum_i (y_s,i - trend(t_i))^2``; prophet's ``beta ~ N(0, 1)`` on its all-zero dummy regressor adds
``-beta^2 / 2``, which is 0 at the optimum ``beta = 0``.)

**The MAP fit.** For fixed ``beta = (k, m, delta)`` the best ``sigma`` solves ``4 sigma^4 + L sigma^2 = RSS``:
``sigma^2 = 2 RSS / (L + sqrt(L^2 + 16 RSS))``, so ``sigma`` is profiled out and we minimise
``Phi(beta) = F(beta) + lambda ||delta||_1`` with ``F`` smooth. ``F``'s gradient is ``-X^T r / sigma^2 + R beta``
(``X`` the design ``[t, 1, (t - c_j)_+]``, ``r`` the residuals, ``R = diag(1/25, 1/25, 0, ...)``) and its Hessian
the Schur complement ``X^T X / sigma^2 + R - (2 X^T r / sigma^3)(2 X^T r / sigma^3)^T / (16 + 2 L / sigma^2)``.

The Laplace prior is non-smooth at ``delta_j = 0``; it is handled exactly by an **orthant-wise Newton method**
(OWL-QN's orthant projection with the exact Hessian): at each step the pseudo-gradient of ``Phi`` (the gradient of
``F`` plus ``lambda sign(delta_j)``, or for ``delta_j = 0`` the one-sided derivative that allows descent, else 0)
defines the orthant the step may explore; a Newton step on the free coordinates (Hessian eigenvalues replaced by
their absolute values, floored, so every step descends) is projected back onto that orthant (a ``delta_j`` that
would change sign becomes exactly 0), with Armijo back-tracking on ``Phi``. ``Phi`` is linear on each orthant, so
once the signs settle this is plain Newton on a smooth function: quadratic convergence, and the zeros of ``delta``
are exact zeros (prophet's Stan Newton leaves them at about 1e-9). It runs on all series at once (batched
``solve``; ``eigh`` only for the few series whose Hessian is not positive definite) and drops series from the batch
as they converge. Weights ``w`` let a refit leave points out without changing the design (used by the anomaly
rule).

**Forecast uncertainty** is prophet's vectorised simulation (``Prophet._sample_uncertainty`` for linear growth), in
scaled units: for the ``H`` future points, ``d = mean(diff(t_future))`` (``H = 1``: the history's mean spacing),
``p = S d`` the chance of a trend change per step, ``b = mean |delta| + 1e-8``; per sample, ``s_h = 1[U_h < p]
Laplace(0, b)``, ``s'_h = (s_{h-1} + s_h) / 2`` (``s_0 = 0``), trend shift ``= d cumsum(cumsum(s'))``; a sample is
``(trend + shift + N(0, sigma^2)) y_scale``; the bounds are the ``(1 -+ width) / 2`` quantiles (linear
interpolation, as ``numpy.percentile``). Seeded per series (``default_rng([seed, key])``), so a series gets the
same draws whatever batch it is in. In-sample bounds have no trend term: there the simulation is a Monte-Carlo
estimate of ``yhat -+ z sigma y_scale`` (``z`` the normal quantile), which we use exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.special import expit, ndtri

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

PRIOR_SD_K = 5.0  # k ~ N(0, 5)
PRIOR_SD_M = 5.0  # m ~ N(0, 5)
PRIOR_SD_SIGMA = 0.5  # sigma_obs ~ N+(0, 0.5)
SIGMA_FLOOR = 1e-9  # prophet's sigma_obs for a constant series; also our floor for an exactly fitted one
MAD_TO_SD = 1.4826  # 1 / Phi^-1(3/4): MAD of a normal sample -> its SD

_ARMIJO = 1e-4
_MAX_HALVINGS = 50
_EIG_FLOOR = 1e-12
_FTOL = 1e-15


# --- design ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """A padded batch on prophet's scales (see the module docstring).

    ``t``, ``y``: ``(n, T)`` scaled times and values (0 in padding); ``observed``: ``(n, T)`` real points;
    ``length``: ``(n,)`` points per series; ``cp``: ``(n, S)`` changepoint times (0 in padding), ``cp_mask``:
    ``(n, S)`` which exist (a dummy changepoint exists); ``dummy_cp``: ``(n,)`` the series has only prophet's dummy
    changepoint at 0; ``y_scale``: ``(n,)``; ``start_ns``, ``t_scale_ns``: ``(n,)`` int64 nanoseconds.
    """

    t: FloatArray
    y: FloatArray
    observed: BoolArray
    length: IntArray
    cp: FloatArray
    cp_mask: BoolArray
    dummy_cp: BoolArray
    y_scale: FloatArray
    start_ns: IntArray
    t_scale_ns: IntArray


def changepoint_positions(length: int, n_changepoints: int, changepoint_range: float) -> IntArray:
    """Indices (into a sorted history of ``length`` points) of prophet's automatic changepoints (may be empty)."""
    hist_size = int(np.floor(length * changepoint_range))
    n_cp = min(n_changepoints, hist_size - 1)
    if n_cp <= 0:
        return np.zeros(0, dtype=np.int64)
    # numpy rounds half to even, as prophet's ``.round()`` does
    return np.asarray(np.linspace(0, hist_size - 1, n_cp + 1).round().astype(np.int64)[1:], dtype=np.int64)


def build_design(
    ds_ns: IntArray, y: FloatArray, length: IntArray, *, n_changepoints: int, changepoint_range: float
) -> Design:
    """Prophet's scaling and changepoints for a padded batch.

    ``ds_ns``: ``(n, T)`` int64 nanoseconds, strictly increasing within each row's first ``length[i]`` entries
    (``length >= 2``); ``y``: ``(n, T)`` finite there. Padding may hold anything.
    """
    n, width = y.shape
    cols = np.arange(width)[None, :]
    observed = cols < length[:, None]
    yv = np.where(observed, y, 0.0)
    y_scale = np.abs(yv).max(axis=1)
    y_scale = np.where(y_scale == 0.0, 1.0, y_scale)
    start = ds_ns[:, 0].astype(np.int64)
    last = np.take_along_axis(ds_ns, (length - 1)[:, None], axis=1)[:, 0]
    t_scale = (last - start).astype(np.int64)
    # pandas computes (ds - start) / t_scale as float64(int64 ns) / float64(int64 ns); so do we
    t = np.where(observed, (ds_ns - start[:, None]).astype(np.float64) / t_scale[:, None].astype(np.float64), 0.0)
    positions = [changepoint_positions(int(L), n_changepoints, changepoint_range) for L in range(width + 1)]
    s_max = max([1, *(len(positions[int(L)]) for L in np.unique(length))])
    cp = np.zeros((n, s_max))
    cp_mask = np.zeros((n, s_max), dtype=bool)
    dummy = np.zeros(n, dtype=bool)
    for L in np.unique(length):
        rows = np.flatnonzero(length == L)
        pos = positions[int(L)]
        if len(pos) == 0:
            dummy[rows] = True
            cp_mask[rows, 0] = True  # prophet's dummy changepoint at t = 0
        else:
            cp[np.ix_(rows, np.arange(len(pos)))] = t[np.ix_(rows, pos)]
            cp_mask[rows, : len(pos)] = True
    return Design(
        t=t,
        y=yv / y_scale[:, None],
        observed=observed,
        length=length.astype(np.int64),
        cp=cp,
        cp_mask=cp_mask,
        dummy_cp=dummy,
        y_scale=y_scale,
        start_ns=start,
        t_scale_ns=t_scale,
    )


def design_matrix(t: FloatArray, cp: FloatArray, cp_mask: BoolArray) -> FloatArray:
    """``(n, T, 2 + S)``: columns ``t``, ``1``, ``(t - c_j)_+`` (0 for missing changepoints)."""
    hinge = np.maximum(t[:, :, None] - cp[:, None, :], 0.0) * cp_mask[:, None, :]
    return np.concatenate([t[:, :, None], np.ones_like(t)[:, :, None], hinge], axis=2)


def trend(t: FloatArray, *, k: FloatArray, m: FloatArray, delta: FloatArray, cp: FloatArray) -> FloatArray:
    """Scaled trend at ``t`` ``(n, T)`` for each series' ``k, m`` ``(n,)``, ``delta``, ``cp`` ``(n, S)``.

    Missing changepoints must carry ``delta = 0``.
    """
    hinge = np.maximum(t[:, :, None] - cp[:, None, :], 0.0)
    return np.asarray(k[:, None] * t + m[:, None] + np.einsum("nts,ns->nt", hinge, delta), dtype=np.float64)


def log_posterior(
    t: FloatArray,
    y: FloatArray,
    w: FloatArray,
    *,
    k: FloatArray,
    m: FloatArray,
    delta: FloatArray,
    cp: FloatArray,
    sigma: FloatArray,
    tau: float,
) -> FloatArray:
    """Stan's ``lp__`` of prophet's model (constants dropped, no Jacobian) for each series; ``w`` weights points."""
    r = (y - trend(t, k=k, m=m, delta=delta, cp=cp)) * w
    rss = (r * r).sum(axis=1)
    n_obs = w.sum(axis=1)
    return np.asarray(
        -(k * k) / (2 * PRIOR_SD_K**2)
        - (m * m) / (2 * PRIOR_SD_M**2)
        - np.abs(delta).sum(axis=1) / tau
        - sigma * sigma / (2 * PRIOR_SD_SIGMA**2)
        - n_obs * np.log(sigma)
        - rss / (2 * sigma * sigma),
        dtype=np.float64,
    )


# --- MAP fit --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapFit:
    """Result of :func:`map_fit` per series: ``beta`` ``(n, 2 + S)`` = (k, m, delta...), ``sigma``, ``lp``
    (``lp__``), ``converged``, ``iterations``."""

    beta: FloatArray
    sigma: FloatArray
    lp: FloatArray
    converged: BoolArray
    iterations: IntArray


@dataclass
class _State:
    phi: FloatArray  # objective = -lp at the profiled sigma
    g: FloatArray  # gradient of the smooth part F
    u: FloatArray  # X^T r
    s2: FloatArray  # profiled sigma^2
    floored: BoolArray  # sigma hit SIGMA_FLOOR (then sigma is a constant, no Schur term)


def _profile_sigma2(rss: FloatArray, n_obs: FloatArray) -> tuple[FloatArray, BoolArray]:
    # the positive root of 4 s^4 + L s^2 - RSS = 0, in a form without cancellation for small RSS
    s2 = 2.0 * rss / (n_obs + np.sqrt(n_obs * n_obs + 16.0 * rss))
    floored = s2 < SIGMA_FLOOR**2
    return np.where(floored, SIGMA_FLOOR**2, s2), floored


def _evaluate(
    X: FloatArray, y: FloatArray, w: FloatArray, *, n_obs: FloatArray, beta: FloatArray, lam: float, ridge: FloatArray
) -> _State:
    r = (y - np.einsum("ntp,np->nt", X, beta)) * w
    rss = (r * r).sum(axis=1)
    s2, floored = _profile_sigma2(rss, n_obs)
    l1 = np.abs(beta[:, 2:]).sum(axis=1)
    phi = (
        0.5 * (ridge * beta * beta).sum(axis=1)
        + lam * l1
        + s2 / (2 * PRIOR_SD_SIGMA**2)
        + 0.5 * n_obs * np.log(s2)
        + rss / (2.0 * s2)
    )
    u = np.einsum("ntp,nt->np", X, r)
    g = -u / s2[:, None] + ridge[None, :] * beta
    return _State(phi=phi, g=g, u=u, s2=s2, floored=floored)


def _pseudo_gradient(beta: FloatArray, g: FloatArray, lam: float, l1_cols: BoolArray) -> FloatArray:
    """Minimum-norm subgradient of ``F + lambda ||delta||_1`` (``l1_cols``: the penalised, existing columns)."""
    sign = np.sign(beta)
    at_zero = np.where(g + lam < 0, g + lam, np.where(g - lam > 0, g - lam, 0.0))
    pg_l1 = np.where(sign != 0, g + lam * sign, at_zero)
    return np.where(l1_cols, pg_l1, g)


def map_fit(
    X: FloatArray,
    y: FloatArray,
    w: FloatArray,
    *,
    cp_mask: BoolArray,
    tau: float,
    beta0: FloatArray,
    max_iter: int = 200,
    gtol: float = 1e-9,
) -> MapFit:
    """Maximise prophet's log-posterior for every series of the batch (orthant-wise Newton; module docstring).

    ``X``: ``(n, T, p)`` design (:func:`design_matrix`), ``y``: ``(n, T)`` scaled values, ``w``: ``(n, T)`` 0/1
    weights (padding and left-out points 0), ``cp_mask``: ``(n, p - 2)`` existing changepoints (``delta`` of the
    others stays 0), ``beta0``: ``(n, p)`` start. Converged: the pseudo-gradient's largest entry is at most ``gtol``,
    or the objective stops decreasing (by more than 1e-15 relative, twice running) while it is at most
    ``sqrt(gtol)`` (the gradient's own rounding error can exceed ``gtol`` when ``sigma`` is small).
    """
    n, _, p = X.shape
    lam = 1.0 / tau
    ridge = np.zeros(p)
    ridge[0], ridge[1] = 1.0 / PRIOR_SD_K**2, 1.0 / PRIOR_SD_M**2
    exists = np.concatenate([np.ones((n, 2), dtype=bool), cp_mask], axis=1)
    l1_cols = np.concatenate([np.zeros((n, 2), dtype=bool), cp_mask], axis=1)
    n_obs = w.sum(axis=1)
    XtX = np.einsum("ntp,nt,ntq->npq", X, w, X)
    beta = np.where(exists, beta0, 0.0)
    converged = np.zeros(n, dtype=bool)
    iterations = np.zeros(n, dtype=np.int64)
    stall = np.zeros(n, dtype=np.int64)
    act = np.arange(n)
    st = _evaluate(X, y, w, n_obs=n_obs, beta=beta, lam=lam, ridge=ridge)
    phi_all, s2_all = st.phi.copy(), st.s2.copy()
    eye = np.eye(p)
    for _ in range(max_iter):
        if len(act) == 0:
            break
        Xa, ya, wa, na, ba = X[act], y[act], w[act], n_obs[act], beta[act]
        l1a, exa = l1_cols[act], exists[act]
        pg = _pseudo_gradient(ba, st.g, lam, l1a)
        pg = np.where(exa, pg, 0.0)
        done = np.abs(pg).max(axis=1) <= gtol
        # free coordinates: k, m, non-zero deltas, and zero deltas whose one-sided slope allows descent
        free = exa & ((~l1a) | (ba != 0) | (pg != 0))
        orthant = np.where(ba != 0, np.sign(ba), -np.sign(pg))
        # Hessian of the profiled smooth part (Schur complement of sigma)
        s2 = st.s2
        schur = np.where(st.floored, 0.0, 4.0 / (s2 * s2 * (16.0 * s2 + 2.0 * na)))
        H = (
            XtX[act] / s2[:, None, None]
            + np.diag(ridge)[None]
            - schur[:, None, None] * np.einsum("np,nq->npq", st.u, st.u)
        )
        both = free[:, :, None] & free[:, None, :]
        Hf = np.where(both, H, 0.0) + eye[None] * (~free)[:, :, None]
        rhs = np.where(free, -pg, 0.0)
        d = np.where(free, _newton_direction(Hf, rhs), 0.0)
        # keep the step in the orthant (a zero delta may only leave 0 in the direction its pseudo-gradient allows)
        d = _respect_orthant(H, pg, ba, d, free=free, l1=l1a, orthant=orthant)
        slope = (pg * d).sum(axis=1)
        bad = slope >= 0
        if bad.any():  # cannot happen with an exact eigen-step unless alignment removed it all: steepest descent
            d[bad] = np.where(free[bad], -pg[bad], 0.0)
        # Armijo back-tracking with projection onto the orthant
        alpha = np.ones(len(act))
        new_beta = ba.copy()
        new_phi, new_g, new_u = st.phi.copy(), st.g.copy(), st.u.copy()
        new_s2, new_floored = st.s2.copy(), st.floored.copy()
        accepted = np.zeros(len(act), dtype=bool)
        for _h in range(_MAX_HALVINGS):
            idx = np.flatnonzero(~done & ~accepted)
            if len(idx) == 0:
                break
            trial = ba[idx] + alpha[idx, None] * d[idx]
            crossed = l1a[idx] & (orthant[idx] != 0) & (np.sign(trial) != orthant[idx])
            trial = np.where(crossed | ~exa[idx], 0.0, trial)
            ts = _evaluate(Xa[idx], ya[idx], wa[idx], n_obs=na[idx], beta=trial, lam=lam, ridge=ridge)
            ok = ts.phi <= st.phi[idx] + _ARMIJO * (pg[idx] * (trial - ba[idx])).sum(axis=1)
            rows = idx[ok]
            new_beta[rows] = trial[ok]
            new_phi[rows], new_g[rows], new_u[rows] = ts.phi[ok], ts.g[ok], ts.u[ok]
            new_s2[rows], new_floored[rows] = ts.s2[ok], ts.floored[ok]
            accepted[rows] = True
            alpha[idx[~ok]] *= 0.5
        # no decrease (none found, or one within rounding, twice in a row): at the optimum up to rounding, or stuck
        gain = st.phi - new_phi
        flat = gain <= _FTOL * (1.0 + np.abs(st.phi))
        stall[act] = np.where(flat, stall[act] + 1, 0)
        stalled = ~done & (~accepted | (stall[act] >= 2))
        small = np.abs(pg).max(axis=1) <= math.sqrt(gtol)
        finished = done | (stalled & small)
        failed = stalled & ~small
        beta[act] = new_beta
        iterations[act] += (~done).astype(np.int64)
        converged[act[finished]] = True
        phi_all[act] = new_phi
        s2_all[act] = new_s2
        keep = ~(finished | failed)
        act = act[keep]
        st = _State(phi=new_phi[keep], g=new_g[keep], u=new_u[keep], s2=new_s2[keep], floored=new_floored[keep])
    # an exactly fitted series has no maximum (the posterior grows without bound as sigma -> 0): sigma stops at
    # SIGMA_FLOOR with the exact trend, which is as converged as it gets
    converged |= s2_all <= SIGMA_FLOOR**2
    return MapFit(beta=beta, sigma=np.sqrt(s2_all), lp=-phi_all, converged=converged, iterations=iterations)


def _respect_orthant(
    H: FloatArray,
    pg: FloatArray,
    beta: FloatArray,
    d: FloatArray,
    *,
    free: BoolArray,
    l1: BoolArray,
    orthant: FloatArray,
) -> FloatArray:
    """Turn the Newton step ``d`` into one that stays in the orthant: every delta whose step would leave it (a
    non-zero delta crossing 0, or a zero delta moving against its pseudo-gradient) is held on 0 (``d = -delta``: it
    lands exactly on 0 at step 1) and the other free coordinates take the Newton step given that, i.e. the minimiser
    of the local quadratic model on that face; repeated while further deltas would leave (at most ``p`` times).
    Projecting instead (OWL-QN's way) leaves a step the model did not predict, the Armijo test fails at step 1 and
    back-tracking shrinks such deltas only geometrically. Rows where this stops descending keep OWL-QN's step.
    """
    aligned = np.where(l1 & (beta == 0) & (np.sign(d) != orthant), 0.0, d)
    out = aligned.copy()
    fixed = np.zeros_like(free)
    trying = np.ones(len(d), dtype=bool)
    cur = d.copy()
    for _ in range(beta.shape[1]):
        leaving = l1 & free & ~fixed & (orthant != 0) & (np.sign(beta + cur) != orthant)
        rows = np.flatnonzero(trying & leaving.any(axis=1))
        if len(rows) == 0:
            break
        fixed[rows] |= leaving[rows]
        fx, fr = fixed[rows], free[rows] & ~fixed[rows]
        d_fixed = np.where(fx, -beta[rows], 0.0)
        Hr = H[rows]
        rhs = np.where(fr, -pg[rows] - np.einsum("npq,nq->np", Hr, d_fixed), 0.0)
        both = fr[:, :, None] & fr[:, None, :]
        Hf = np.where(both, Hr, 0.0) + np.eye(H.shape[1])[None] * (~fr)[:, :, None]
        d_new = np.where(fr, _newton_direction(Hf, rhs), d_fixed)
        descends = (pg[rows] * d_new).sum(axis=1) < 0
        cur[rows] = d_new
        trying[rows[~descends]] = False
    # rows that ended inside the orthant with a descent step use it; the others OWL-QN's aligned step
    inside = ~(l1 & free & ~fixed & (orthant != 0) & (np.sign(beta + cur) != orthant)).any(axis=1)
    use = trying & inside & ((pg * cur).sum(axis=1) < 0)
    out[use] = cur[use]
    return out


def _newton_direction(H: FloatArray, rhs: FloatArray) -> FloatArray:
    """``H^-1 rhs``; for the series where that is not a descent step with positive curvature (``H`` not positive
    definite along it), ``|H|^-1 rhs`` with ``H``'s eigenvalues replaced by their floored absolute values."""
    try:
        d = np.linalg.solve(H, rhs[:, :, None])[:, :, 0]
        curv = np.einsum("np,npq,nq->n", d, H, d)
        bad = ~(np.isfinite(curv) & (curv > 0) & ((rhs * d).sum(axis=1) > 0))
    except np.linalg.LinAlgError:  # an exactly singular matrix somewhere: take the eigen route for all
        d = np.zeros_like(rhs)
        bad = np.ones(len(H), dtype=bool)
    if bad.any():
        vals, vecs = np.linalg.eigh(H[bad])
        mag = np.abs(vals)
        mag = np.maximum(mag, _EIG_FLOOR * np.maximum(mag.max(axis=1, keepdims=True), 1e-300))
        coef = np.einsum("npk,np->nk", vecs, rhs[bad]) / mag
        d[bad] = np.einsum("npk,nk->np", vecs, coef)
    return np.asarray(d, dtype=np.float64)


def initial_beta(design: Design, w: FloatArray) -> FloatArray:
    """Prophet's start: the line through the first and last (weighted-in) points, ``delta = 0``."""
    n, width = design.t.shape
    cols = np.arange(width)[None, :]
    inside = w > 0
    first = np.where(inside, cols, width).min(axis=1)
    last = np.where(inside, cols, -1).max(axis=1)
    rows = np.arange(n)
    t0, t1 = design.t[rows, first], design.t[rows, last]
    y0, y1 = design.y[rows, first], design.y[rows, last]
    k = (y1 - y0) / np.where(t1 > t0, t1 - t0, 1.0)
    m = y0 - k * t0
    beta = np.zeros((n, 2 + design.cp.shape[1]))
    beta[:, 0], beta[:, 1] = k, m
    return beta


# --- forecast simulation ----------------------------------------------------------------------------------------


def interval_z(width: float) -> float:
    """Normal quantile of the upper bound of a central ``width`` interval."""
    return float(ndtri((1.0 + width) / 2.0))


def _linear_quantiles(samples: FloatArray, probs: tuple[float, ...]) -> FloatArray:
    """``numpy.percentile`` (linear interpolation) along the last axis, by partial sorting; ``(len(probs), ...)``."""
    ns = samples.shape[-1]
    pos = [(ns - 1) * q for q in probs]
    lo = [math.floor(p) for p in pos]
    kth = sorted({i for lo_i in lo for i in (lo_i, min(lo_i + 1, ns - 1))})
    part = np.partition(samples, kth, axis=-1)
    out = []
    for p, lo_i in zip(pos, lo, strict=True):
        hi_i = min(lo_i + 1, ns - 1)
        a, b = part[..., lo_i], part[..., hi_i]
        out.append(a + (p - lo_i) * (b - a))
    return np.stack(out)


def simulate_future(
    t_future: FloatArray,
    base: FloatArray,
    *,
    delta: FloatArray,
    cp_count: IntArray,
    sigma: FloatArray,
    y_scale: FloatArray,
    hist_step: FloatArray,
    keys: IntArray,
    seed: int,
    samples: int,
    width: float,
    block: int = 256,
) -> tuple[FloatArray, FloatArray]:
    """Lower and upper forecast bounds ``(n, H)`` by prophet's trend-change + noise simulation (module docstring).

    ``t_future``: ``(n, H)`` scaled future times; ``base``: ``(n, H)`` scaled trend there; ``delta``: ``(n, S)``
    (0 where absent); ``cp_count``: ``(n,)`` prophet's ``len(changepoints_t)`` (the dummy counts); ``hist_step``:
    ``(n,)`` mean spacing of the history's ``t`` (used when ``H = 1``); ``keys``: ``(n,)`` per-series seeds.
    """
    n, horizon = t_future.shape
    lower = np.empty((n, horizon))
    upper = np.empty((n, horizon))
    q = ((1.0 - width) / 2.0, (1.0 + width) / 2.0)
    mean_abs = np.abs(delta).sum(axis=1) / cp_count + 1e-8
    step = np.diff(t_future, axis=1).mean(axis=1) if horizon > 1 else hist_step
    chance = cp_count * step
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        m = rows.stop - rows.start
        u = np.empty((m, 2, samples, horizon))
        z = np.empty((m, samples, horizon))
        for i in range(m):
            rng = np.random.default_rng([seed, int(keys[rows.start + i])])
            rng.random(out=u[i])
            rng.standard_normal(out=z[i])
        change = u[:, 0] < chance[rows, None, None]
        # Laplace(0, b) by inversion of a uniform: -b sign(v) log(1 - 2|v|), v = U - 1/2
        v = u[:, 1] - 0.5
        shift = -mean_abs[rows, None, None] * np.sign(v) * np.log1p(-2.0 * np.abs(v)) * change
        shifted = np.concatenate([np.zeros((m, samples, 1)), shift[:, :, :-1]], axis=2)
        slope = (shifted + shift) / 2.0
        dev = np.cumsum(np.cumsum(slope, axis=2), axis=2) * step[rows, None, None]
        sims = (base[rows, None, :] + dev + sigma[rows, None, None] * z) * y_scale[rows, None, None]
        qs = _linear_quantiles(np.swapaxes(sims, 1, 2), q)
        lower[rows], upper[rows] = qs[0], qs[1]
    return lower, upper


# --- anomaly rule -----------------------------------------------------------------------------------------------


def robust_scale(resid: FloatArray, w: FloatArray, floor: FloatArray) -> FloatArray:
    """``max(1.4826 * MAD, floor)`` of each row's residuals where ``w > 0`` (MAD about the median)."""
    masked = np.where(w > 0, resid, np.nan)
    med = np.nanmedian(masked, axis=1)
    mad = np.nanmedian(np.abs(masked - med[:, None]), axis=1)
    return np.asarray(np.maximum(MAD_TO_SD * mad, floor), dtype=np.float64)


def answer_score(
    level: FloatArray, point: IntArray, a: FloatArray, b: FloatArray, correct: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Score ``U`` and Fisher information ``I`` ``(n, T)`` of each point's binary answers at the value ``level``.

    ``level``: ``(n, T)`` the value each point is judged at (y units); one entry per answer: ``point`` (flat index
    into ``(n, T)``), the item's ``a``, ``b`` on y's scale and ``correct`` (0/1), under ``P(correct | v) = 1 / (1 +
    exp(-a (v - b)))``. With ``p = P(correct | level)``: ``U = sum a (correct - p)`` (the derivative of the answers'
    log-likelihood at ``level``) and ``I = sum a^2 p (1 - p)`` (minus its second derivative, which for this model is
    also the Fisher information). Points without answers get ``U = I = 0``.
    """
    size = level.size
    p = expit(a * (level.reshape(-1)[point] - b))
    u = np.bincount(point, weights=a * (correct - p), minlength=size)
    info = np.bincount(point, weights=a * a * p * (1.0 - p), minlength=size)
    return np.asarray(u, dtype=np.float64).reshape(level.shape), np.asarray(info, dtype=np.float64).reshape(level.shape)
