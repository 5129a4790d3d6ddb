"""Cox proportional-hazards model on generic survival data (``duration``, ``event``, covariates).

The model: the hazard of row ``i`` at time ``t`` is ``h(t | x_i) = h0(t) * exp(beta . (x_i - xbar))``. ``beta``
maximises the (optionally L2-penalised) partial log-likelihood; tied event times use Efron's approximation (default) or
Breslow's. The numbers agree with R's ``survival::coxph`` (see ``tests/test_survival_engine.py`` and the golden files
under ``tests/data/survival``).

**Partial likelihood.** Sort by time; let ``tau_k`` be the distinct event times, ``D_k`` the ``d_k`` rows with an
event at ``tau_k``, ``R_k`` the rows still at risk (``duration >= tau_k``), ``w_i = exp(eta_i)``,
``eta_i = beta . x_i``, ``S0_k = sum_{R_k} w``, ``A0_k = sum_{D_k} w``. Efron:

    l(beta) = sum_k [ sum_{i in D_k} eta_i - sum_{l=0}^{d_k-1} log(S0_k - (l/d_k) A0_k) ]

(Breslow drops the ``(l/d_k) A0_k`` term). Newton-Raphson with step-halving maximises it; the gradient and the
information are assembled from sums per distinct time (sorting once, cumulative sums, one weighted Gram matrix):
``O(n log n + n p^2)`` time and ``O(n p)`` memory. It stops, like R, when ``|1 - l_old / l_new| <= tol``.

**Penalty.** With ``penalizer = lam > 0`` the maximised objective is

    l(beta) - (lam * n / 2) * sum_j (s_j * beta_j)^2        (s_j = sample SD (ddof=1) of covariate j)

i.e. a ridge on the per-SD coefficients, so the fit does not depend on the units of the covariates. This is
exactly lifelines' ``CoxPHFitter(penalizer=lam, l1_ratio=0)`` and R's
``coxph(Surv(t, e) ~ ridge(x1, ..., xp, theta = n * lam, scale = TRUE))``. Standard errors of a penalised fit are,
as in both, ``sqrt(diag(H^-1))`` with ``H`` the penalised information; ``log_likelihood_`` is the partial
log-likelihood without the penalty (R's ``loglik``), ``penalty_`` the penalty at the estimate.

**Scale.** Covariates are centred and divided by their SD internally (``standardize=True``) for numerical
stability only: coefficients, standard errors (from the inverse information on the original scale, as R's), hazard
ratios and the baseline are reported for the covariates as given. ``hazard_ratios_`` are per unit of each covariate.

**Centring and the baseline.** Like R, the linear predictor is centred at the training means,
``lp(x) = (x - means_) . coef_``, and the baseline is that of a subject at the means:
``S(t | x) = exp(-H0(t) * exp(lp(x)))``. ``H0`` is the estimator R's ``survfit(coxph)`` uses: a jump at each event
time of ``sum_{l=0}^{d_k-1} 1 / (S0_k - (l/d_k) A0_k)`` (Efron ties; with ``w`` centred as above) or
``d_k / S0_k`` (Breslow), constant between and after the event times. (R's ``coxph`` leaves covariates whose values
all lie in {-1, 0, 1} uncentred, so its ``fit$means``, ``predict(type = "lp")`` and default baseline differ from ours
for binary covariates by a constant; every ``S(t | x)`` is the same.)

**Concordance.** :func:`concordance_index` is Harrell's C, higher score = earlier event: a pair is comparable when
the shorter duration ends in an event (a row censored at the same time as an event counts as surviving longer; two
events at the same time are not comparable); tied scores count 1/2. ``concordance_`` is its value for the training
data and the fitted linear predictor.

**Errors.** Bad input raises :class:`InvalidInputError` naming the column (``details["problems"]``): non-finite
values, durations <= 0, events other than 0/1, constant, non-numeric or collinear covariates; also a likelihood with no
finite maximum (R's "coefficient may be infinite") and non-convergence. No events, or no subject outliving the first
event, raises :class:`InsufficientDataError`; using a model before ``fit`` raises :class:`NotFittedError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd

from learnpulse.engines.base import check_fitted, envelope, float_vector, open_envelope
from learnpulse.errors import InsufficientDataError, InvalidInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ArrayLike = npt.ArrayLike

ENGINE = "coxph"
FORMAT_VERSION = 1
_MAX_HALVINGS = 40
_COLLINEAR_EIGEN = 1e-10

__all__ = ["CoxPH", "concordance_index"]


# --- input checks ------------------------------------------------------------------------------------------------


def _invalid(message: str, problems: list[dict[str, Any]]) -> InvalidInputError:
    return InvalidInputError(message, {"problems": problems})


def _durations_events(durations: ArrayLike, events: ArrayLike, *, positive: bool) -> tuple[FloatArray, FloatArray]:
    t = float_vector(durations, "durations")
    e = float_vector(events, "events")
    if len(t) != len(e):
        raise _invalid(
            f"durations and events differ in length ({len(t)} != {len(e)})",
            [{"column": "events", "reason": "length differs from durations"}],
        )
    if positive and (t <= 0).any():
        rows = np.flatnonzero(t <= 0)
        raise _invalid(
            f"durations must be positive: {len(rows)} value(s) <= 0 (first {t[rows[0]]!r} at row {int(rows[0])})",
            [{"column": "durations", "row": int(rows[0]), "reason": "not positive", "count": len(rows)}],
        )
    not01 = (e != 0) & (e != 1)
    if not01.any():
        rows = np.flatnonzero(not01)
        raise _invalid(
            f"events must be 0 (censored) or 1 (event): {len(rows)} other value(s) "
            f"(first {e[rows[0]]!r} at row {int(rows[0])})",
            [{"column": "events", "row": int(rows[0]), "reason": "not 0 or 1", "count": len(rows)}],
        )
    return t, e


def _frame_matrix(covariates: pd.DataFrame | ArrayLike, names: list[str] | None) -> tuple[FloatArray, list[str]]:
    """Covariates as a finite ``(n, p)`` float matrix and their names (``names`` given: select/check those)."""
    if isinstance(covariates, pd.DataFrame):
        frame = covariates
        if names is None:
            names = [str(c) for c in frame.columns]
            if len(set(names)) != len(names):
                raise _invalid("covariate names must be unique", [{"column": "covariates", "reason": "duplicates"}])
        else:
            by_name = {str(c): c for c in frame.columns}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise _invalid(
                    f"covariates lack the model's column(s): {', '.join(missing)}",
                    [{"column": n, "reason": "missing"} for n in missing],
                )
            frame = frame[[by_name[n] for n in names]]
        columns: list[FloatArray] = []
        for name, col in zip(names, frame.columns, strict=True):
            series = frame[col]
            if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
                raise _invalid(
                    f"covariate {name!r} is not numeric (dtype {series.dtype})",
                    [{"column": name, "reason": f"not numeric ({series.dtype})"}],
                )
            columns.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
        x = np.column_stack(columns) if columns else np.empty((len(frame), 0))
    else:
        try:
            x = np.asarray(covariates, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise _invalid("covariates must be numeric", [{"column": "covariates", "reason": "not numeric"}]) from exc
        if x.ndim == 1 and names is not None and len(names) == x.shape[0]:
            x = x[None, :]
        if x.ndim != 2:
            raise _invalid("covariates must be two-dimensional", [{"column": "covariates", "reason": f"{x.shape}"}])
        if names is None:
            names = [f"x{j}" for j in range(x.shape[1])]
        elif x.shape[1] != len(names):
            raise _invalid(
                f"covariates have {x.shape[1]} column(s), the model {len(names)}",
                [{"column": "covariates", "reason": "wrong number of columns"}],
            )
    x = np.ascontiguousarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        problems: list[dict[str, Any]] = []
        for j in cols:
            rows = np.flatnonzero(bad[:, j])
            problems.append(
                {"column": names[j], "row": int(rows[0]), "reason": "missing or non-finite", "count": len(rows)}
            )
        listed = ", ".join(f"{p['column']!r} ({p['count']} rows, first row {p['row']})" for p in problems)
        raise _invalid(f"covariates have missing or non-finite values: {listed}", problems)
    return x, names


# --- the partial likelihood ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Design:
    """Rows sorted by duration, with the tie structure the likelihood needs."""

    z: FloatArray  # (n, p) internal covariates ((x - centre) / scale), rows in time order
    starts: IntArray  # first row of each distinct time (G)
    group: IntArray  # distinct-time index of each row (n)
    ev_rows: IntArray  # rows with an event (n_ev), in time order
    ev_first: IntArray  # first position in ev_rows of each distinct event time (K)
    ev_group: IntArray  # distinct-time index of each distinct event time (K)
    ev_k: IntArray  # distinct-event-time index of each event (n_ev)
    frac: FloatArray  # Efron's l / d_k of each event (0 for Breslow)
    z_ev_sum: FloatArray  # (p,) sum of z over the events
    event_times: FloatArray  # (K) the distinct event times
    order: IntArray  # sorted row -> input row


def _design(t: FloatArray, e: FloatArray, z: FloatArray, ties: str) -> _Design:
    order = np.argsort(t, kind="stable").astype(np.int64)
    ts, es = t[order], e[order] > 0
    zs = np.ascontiguousarray(z[order])
    new = np.empty(len(ts), dtype=bool)
    new[0] = True
    np.not_equal(ts[1:], ts[:-1], out=new[1:])
    starts = np.flatnonzero(new).astype(np.int64)
    group = (np.cumsum(new) - 1).astype(np.int64)
    ev_rows = np.flatnonzero(es).astype(np.int64)
    ev_group_all = group[ev_rows]
    ev_group, ev_first, d = np.unique(ev_group_all, return_index=True, return_counts=True)
    ev_k = np.repeat(np.arange(len(ev_group), dtype=np.int64), d)
    if ties == "efron":
        rank = np.arange(len(ev_rows), dtype=np.float64) - np.repeat(ev_first, d)
        frac = rank / np.repeat(d, d)
    else:
        frac = np.zeros(len(ev_rows))
    return _Design(
        z=zs,
        starts=starts,
        group=group,
        ev_rows=ev_rows,
        ev_first=ev_first.astype(np.int64),
        ev_group=ev_group.astype(np.int64),
        ev_k=ev_k,
        frac=frac,
        z_ev_sum=zs[ev_rows].sum(axis=0),
        event_times=ts[starts[ev_group]],
        order=order,
    )


@dataclass(frozen=True)
class _Eval:
    loglik: float  # partial log-likelihood, no penalty
    objective: float  # loglik - penalty
    grad: FloatArray  # gradient of the objective
    info: FloatArray  # information (minus Hessian) of the objective
    hazard_jump: FloatArray  # (K) baseline hazard jumps for w = exp(z . gamma)


def _revcumsum(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.cumsum(a[::-1], axis=0)[::-1]


def _evaluate(des: _Design, gamma: FloatArray, pen: FloatArray, with_info: bool = True) -> _Eval:
    """Efron/Breslow partial log-likelihood, gradient and information at ``gamma`` (internal scale).

    Per distinct event time ``k`` and event ``l`` in it: ``phi = S0_k - f A0_k`` (``f = l/d_k``). Then
    ``grad = sum_ev z - sum_k (a_k S1_k - b_k A1_k)`` with ``a_k = sum_l 1/phi``, ``b_k = sum_l f/phi``, and
    ``info = Z' diag(u) Z - sum_k [a2_k S1 S1' - b2_k (S1 A1' + A1 S1') + c2_k A1 A1']`` where ``u_j = w_j (sum of a_k
    over event times <= t_j) - [j is an event] w_j b_k(j)`` and ``a2, b2, c2`` sum ``1/phi^2, f/phi^2, f^2/phi^2``.
    """
    z = des.z
    eta = z @ gamma
    shift = float(eta.max())
    w = np.exp(eta - shift)
    wz = z * w[:, None]
    s0 = _revcumsum(np.add.reduceat(w, des.starts))[des.ev_group]  # (K)
    s1 = _revcumsum(np.add.reduceat(wz, des.starts, axis=0))[des.ev_group]  # (K, p)
    w_ev = w[des.ev_rows]
    a0 = np.add.reduceat(w_ev, des.ev_first)
    a1 = np.add.reduceat(wz[des.ev_rows], des.ev_first, axis=0)
    k = des.ev_k
    f = des.frac
    phi = s0[k] - f * a0[k]
    inv = 1.0 / phi
    n_k = len(des.ev_first)
    a = np.bincount(k, inv, n_k)
    b = np.bincount(k, f * inv, n_k)
    with np.errstate(divide="ignore"):
        loglik = float(eta[des.ev_rows].sum() - len(des.ev_rows) * shift - np.log(phi).sum())
    penalty = 0.5 * float(np.sum(pen * gamma * gamma))
    grad = des.z_ev_sum - (s1 * a[:, None]).sum(axis=0) + (a1 * b[:, None]).sum(axis=0) - pen * gamma
    info = np.zeros((len(gamma), len(gamma)))
    if with_info:
        inv2 = inv * inv
        a2 = np.bincount(k, inv2, n_k)
        b2 = np.bincount(k, f * inv2, n_k)
        c2 = np.bincount(k, f * f * inv2, n_k)
        cum_a = np.zeros(len(des.starts))
        cum_a[des.ev_group] = a
        q = np.cumsum(cum_a)[des.group]
        q[des.ev_rows] -= b[k]
        info = z.T @ (wz * q[:, None])
        cross = (s1 * b2[:, None]).T @ a1
        info -= (s1 * a2[:, None]).T @ s1 - cross - cross.T + (a1 * c2[:, None]).T @ a1
        info = 0.5 * (info + info.T) + np.diag(pen)
    return _Eval(
        loglik=loglik,
        objective=loglik - penalty,
        grad=grad,
        info=info,
        hazard_jump=np.asarray(a * math.exp(-shift), dtype=np.float64),
    )


def _solve_pd(info: FloatArray, rhs: FloatArray) -> FloatArray | None:
    """``info^-1 rhs`` if ``info`` is finite and positive definite (Cholesky succeeds), else None."""
    if not np.isfinite(info).all():
        return None
    try:
        np.linalg.cholesky(info)
        return cast(FloatArray, np.linalg.solve(info, rhs))
    except np.linalg.LinAlgError:
        return None


# --- the estimator ------------------------------------------------------------------------------------------------


class CoxPH:
    """Cox proportional-hazards regression (Efron or Breslow ties, optional ridge penalty).

    Hyper-parameters (scikit-learn style; checked by ``fit``):

    - ``penalizer``: ridge strength ``lam >= 0`` on the per-SD coefficients (see the module docstring for the exact
      objective and its lifelines / R equivalents).
    - ``ties``: ``"efron"`` (R's default) or ``"breslow"``.
    - ``standardize``: centre and scale covariates internally (numerics only; results are on the original scale).
    - ``max_iter``, ``tol``: Newton-Raphson iterations and R's convergence rule ``|1 - l_old / l_new| <= tol``.
    - ``alpha``: the intervals are ``1 - alpha`` Wald intervals.
    """

    def __init__(
        self,
        *,
        penalizer: float = 0.0,
        ties: Literal["efron", "breslow"] = "efron",
        standardize: bool = True,
        max_iter: int = 50,
        tol: float = 1e-9,
        alpha: float = 0.05,
    ) -> None:
        self.penalizer = penalizer
        self.ties = ties
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.alpha = alpha

    # learned state (None until fit)
    feature_names_: list[str] | None = None
    coef_: FloatArray | None = None
    variance_matrix_: FloatArray | None = None
    se_: FloatArray | None = None
    hazard_ratios_: FloatArray | None = None
    ci_lower_: FloatArray | None = None
    ci_upper_: FloatArray | None = None
    z_: FloatArray | None = None
    p_values_: FloatArray | None = None
    log_likelihood_: float | None = None
    log_likelihood_null_: float | None = None
    penalty_: float | None = None
    n_: int | None = None
    events_: int | None = None
    concordance_: float | None = None
    means_: FloatArray | None = None
    scales_: FloatArray | None = None
    baseline_times_: FloatArray | None = None
    baseline_cumulative_hazard_: FloatArray | None = None
    n_iter_: int | None = None

    def __repr__(self) -> str:
        return (
            f"CoxPH(penalizer={self.penalizer!r}, ties={self.ties!r}, standardize={self.standardize!r}, "
            f"max_iter={self.max_iter!r}, tol={self.tol!r}, alpha={self.alpha!r})"
        )

    def get_params(self) -> dict[str, Any]:
        return {
            "penalizer": self.penalizer,
            "ties": self.ties,
            "standardize": self.standardize,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "alpha": self.alpha,
        }

    def _check_params(self) -> None:
        problems: list[dict[str, Any]] = []
        if not (isinstance(self.penalizer, int | float) and math.isfinite(self.penalizer) and self.penalizer >= 0):
            problems.append(
                {"parameter": "penalizer", "reason": f"must be a finite number >= 0, got {self.penalizer!r}"}
            )
        if self.ties not in ("efron", "breslow"):
            problems.append({"parameter": "ties", "reason": f"must be 'efron' or 'breslow', got {self.ties!r}"})
        if not (isinstance(self.max_iter, int | np.integer) and self.max_iter >= 1):
            problems.append({"parameter": "max_iter", "reason": f"must be an integer >= 1, got {self.max_iter!r}"})
        if not (isinstance(self.tol, int | float) and 0 < self.tol < 1):
            problems.append({"parameter": "tol", "reason": f"must be in (0, 1), got {self.tol!r}"})
        if not (isinstance(self.alpha, int | float) and 0 < self.alpha < 1):
            problems.append({"parameter": "alpha", "reason": f"must be in (0, 1), got {self.alpha!r}"})
        if problems:
            raise InvalidInputError(
                "invalid CoxPH parameters: " + "; ".join(f"{p['parameter']} {p['reason']}" for p in problems),
                {"problems": problems},
            )

    # --- fitting ----------------------------------------------------------------------------------------------

    def fit(self, durations: ArrayLike, events: ArrayLike, covariates: pd.DataFrame | ArrayLike) -> CoxPH:
        """Fit on one row per subject: ``durations > 0``, ``events`` 1 (event) / 0 (censored), numeric covariates."""
        self._check_params()
        t, e = _durations_events(durations, events, positive=True)
        x, names = _frame_matrix(covariates, None)
        n, p = x.shape
        if n != len(t):
            raise _invalid(
                f"covariates have {n} rows, durations {len(t)}",
                [{"column": "covariates", "reason": "row count differs from durations"}],
            )
        if p == 0:
            raise _invalid("need at least one covariate", [{"column": "covariates", "reason": "no columns"}])
        n_events = int(e.sum())
        if n_events == 0:
            raise InsufficientDataError(
                f"no events among the {n} rows: the hazard ratios are not identifiable", {"rows": n, "events": 0}
            )
        first_event = t[e > 0].min()
        if not ((t > first_event).any() or ((t == first_event) & (e == 0)).any()):
            raise InsufficientDataError(
                f"no row outlives the first event (at {float(first_event)!r}): no risk set compares subjects",
                {"rows": n, "events": n_events},
            )
        means = x.mean(axis=0)
        scales = x.std(axis=0, ddof=1) if n > 1 else np.zeros(p)
        constant = [names[j] for j in range(p) if not (scales[j] > 0) or np.ptp(x[:, j]) == 0]
        if constant:
            raise _invalid(
                f"covariate(s) {', '.join(map(repr, constant))} are constant: their effect cannot be estimated",
                [{"column": c, "reason": "constant"} for c in constant],
            )
        centre = means if self.standardize else np.zeros(p)
        unit = scales if self.standardize else np.ones(p)
        z = (x - centre) / unit
        self._check_collinear(x, scales, names)

        des = _design(t, e, z, self.ties)
        del z
        pen = float(self.penalizer) * n * (scales / unit) ** 2
        gamma, cur, n_iter, ll_null = self._newton(des, pen, names)

        coef = gamma / unit
        inverse = _solve_pd(cur.info, np.eye(p))
        if inverse is None:
            raise _invalid(
                "the information matrix is singular at the estimate (collinear covariates?)",
                [{"column": "covariates", "reason": "singular information"}],
            )
        variance = inverse / np.outer(unit, unit)
        # baseline: jumps for w = exp((x - means) . coef) = exp(z . gamma - offset)
        offset = float(((means - centre) / unit) @ gamma)
        jumps = cur.hazard_jump * math.exp(offset)

        self.feature_names_ = names
        self.coef_ = coef
        self.variance_matrix_ = 0.5 * (variance + variance.T)
        self.log_likelihood_ = cur.loglik
        self.log_likelihood_null_ = ll_null
        self.penalty_ = cur.loglik - cur.objective
        self.n_ = n
        self.events_ = n_events
        self.means_ = means
        self.scales_ = scales
        self.baseline_times_ = des.event_times
        self.baseline_cumulative_hazard_ = np.cumsum(jumps)
        self.n_iter_ = n_iter
        self._set_inference()
        self.concordance_ = concordance_index(t, e, (x - means) @ coef)
        return self

    def _check_collinear(self, x: FloatArray, scales: FloatArray, names: list[str]) -> None:
        p = x.shape[1]
        if p < 2:
            return
        corr = np.cov(x, rowvar=False) / np.outer(scales, scales)
        values, vectors = np.linalg.eigh(corr)
        if values[0] > _COLLINEAR_EIGEN * max(values[-1], 1.0):
            return
        v = vectors[:, 0]
        involved = [names[j] for j in np.argsort(-np.abs(v)) if abs(v[j]) > 1e-3]
        raise _invalid(
            f"covariates {', '.join(map(repr, involved))} are collinear (one is a linear combination of the others)",
            [{"column": c, "reason": "collinear"} for c in involved],
        )

    def _newton(self, des: _Design, pen: FloatArray, names: list[str]) -> tuple[FloatArray, _Eval, int, float]:
        p = des.z.shape[1]
        gamma = np.zeros(p)
        cur = _evaluate(des, gamma, pen)
        ll_null = cur.loglik
        for it in range(1, self.max_iter + 1):
            step = _solve_pd(cur.info, cur.grad)
            if step is None:
                raise _invalid(
                    "the information matrix is not positive definite: the data carry no information on some "
                    "covariate (collinear covariates, or one that varies only outside the risk sets of the events)",
                    [{"column": "covariates", "reason": "singular information"}],
                )
            for _ in range(_MAX_HALVINGS):
                cand_gamma = gamma + step
                cand = _evaluate(des, cand_gamma, pen)
                slack = 1e-13 * abs(cur.objective)
                if math.isfinite(cand.objective) and cand.objective >= cur.objective - slack:
                    break
                step = 0.5 * step  # step-halving, as R does when the likelihood drops
            else:
                raise self._not_converged(it, "step-halving could not increase the partial likelihood", names)
            change = abs(cand.objective - cur.objective)
            gamma, cur = cand_gamma, cand
            if change <= self.tol * abs(cand.objective) or change == 0.0:
                self._check_finite_maximum(cur, gamma, names)
                return gamma, cur, it, ll_null
        raise self._not_converged(self.max_iter, f"no convergence in max_iter={self.max_iter} iterations", names)

    def _check_finite_maximum(self, cur: _Eval, gamma: FloatArray, names: list[str]) -> None:
        """Like R's "coefficient may be infinite": a Newton step that is still large means a monotone likelihood."""
        step = _solve_pd(cur.info, cur.grad)
        if step is None:
            step = np.full(len(gamma), np.inf)
        loose = math.sqrt(self.tol)
        diverging = [names[j] for j in range(len(gamma)) if abs(step[j]) > loose * max(1.0, abs(gamma[j]))]
        if diverging:
            raise _invalid(
                "the partial likelihood has no finite maximum in "
                f"{', '.join(map(repr, diverging))} (monotone likelihood, e.g. every event in one group of the "
                "covariate): the coefficient is infinite; drop the covariate or use penalizer > 0",
                [{"column": c, "reason": "infinite coefficient (monotone likelihood)"} for c in diverging],
            )

    def _not_converged(self, iterations: int, why: str, names: list[str]) -> InvalidInputError:
        return InvalidInputError(
            f"Cox model did not converge: {why} (after {iterations} iterations); check for covariates that separate "
            "events from non-events or raise max_iter",
            {"problems": [{"column": ", ".join(names), "reason": "not converged"}], "iterations": iterations},
        )

    def _set_inference(self) -> None:
        """Standard errors, hazard ratios, Wald intervals and p-values from ``coef_`` and ``variance_matrix_``."""
        coef, variance = self.coef_, self.variance_matrix_
        assert coef is not None and variance is not None
        se = np.sqrt(np.diag(variance))
        q = NormalDist().inv_cdf(1.0 - self.alpha / 2.0)
        self.se_ = se
        self.hazard_ratios_ = np.exp(coef)
        self.ci_lower_ = np.exp(coef - q * se)
        self.ci_upper_ = np.exp(coef + q * se)
        self.z_ = coef / se
        self.p_values_ = np.array([math.erfc(abs(v) / math.sqrt(2.0)) for v in coef / se])  # 2 * (1 - Phi(|z|))

    # --- results ----------------------------------------------------------------------------------------------

    def summary(self) -> pd.DataFrame:
        """One row per covariate: coef, se, hazard ratio with its ``1 - alpha`` interval, z, p, mean, sd."""
        check_fitted(self, "coef_")
        return pd.DataFrame(
            {
                "coef": self.coef_,
                "se": self.se_,
                "hazard_ratio": self.hazard_ratios_,
                "hr_lower": self.ci_lower_,
                "hr_upper": self.ci_upper_,
                "z": self.z_,
                "p": self.p_values_,
                "mean": self.means_,
                "sd": self.scales_,
            },
            index=pd.Index(list(self.feature_names_ or []), name="covariate"),
        )

    def _x(self, covariates: pd.DataFrame | ArrayLike) -> FloatArray:
        check_fitted(self, "coef_")
        x, _ = _frame_matrix(covariates, self.feature_names_)
        return x

    def linear_predictor(self, covariates: pd.DataFrame | ArrayLike) -> FloatArray:
        """``(x - means_) . coef_`` per row (centred like R's ``predict(fit, type = "lp")``)."""
        x = self._x(covariates)
        assert self.means_ is not None and self.coef_ is not None
        return (x - self.means_) @ self.coef_

    def contributions(self, covariates: pd.DataFrame | ArrayLike) -> pd.DataFrame:
        """``coef_j * (x_j - mean_j)`` per row and covariate; each row sums to :meth:`linear_predictor`."""
        x = self._x(covariates)
        assert self.means_ is not None and self.coef_ is not None
        index = covariates.index if isinstance(covariates, pd.DataFrame) else None
        return pd.DataFrame((x - self.means_) * self.coef_, columns=self.feature_names_, index=index)

    def baseline_cumulative_hazard(self, times: ArrayLike) -> FloatArray:
        """``H0(t)`` (at the training means) per time: right-continuous steps, 0 before the first event time."""
        check_fitted(self, "coef_")
        assert self.baseline_times_ is not None and self.baseline_cumulative_hazard_ is not None
        tt = float_vector(np.atleast_1d(np.asarray(times, dtype=np.float64)), "times")
        idx = np.searchsorted(self.baseline_times_, tt, side="right")
        return cast(FloatArray, np.concatenate(([0.0], self.baseline_cumulative_hazard_))[idx])

    def predict_survival(self, covariates: pd.DataFrame | ArrayLike, times: ArrayLike) -> FloatArray:
        """``S(t | x) = exp(-H0(t) exp(lp(x)))``: shape ``(rows, len(times))``; constant after the last event time."""
        risk = np.exp(self.linear_predictor(covariates))
        h0 = self.baseline_cumulative_hazard(times)
        return cast(FloatArray, np.exp(-np.outer(risk, h0)))

    def predict_event_probability(
        self, covariates: pd.DataFrame | ArrayLike, *, at: float | ArrayLike, horizon: float | ArrayLike
    ) -> FloatArray:
        """``P(T <= at + horizon | T > at, x) = 1 - S(at + horizon | x) / S(at | x)`` per row.

        ``at`` and ``horizon`` are scalars or one value per row (e.g. each subject's time since entry).
        """
        risk = np.exp(self.linear_predictor(covariates))
        n = len(risk)
        at_v = float_vector(np.broadcast_to(np.asarray(at, dtype=np.float64), (n,)), "at")
        h_v = float_vector(np.broadcast_to(np.asarray(horizon, dtype=np.float64), (n,)), "horizon")
        if (at_v < 0).any() or (h_v < 0).any():
            raise _invalid("at and horizon must be >= 0", [{"column": "at/horizon", "reason": "negative"}])
        dh = self.baseline_cumulative_hazard(at_v + h_v) - self.baseline_cumulative_hazard(at_v)
        return cast(FloatArray, -np.expm1(-dh * risk))

    # --- serialisation ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The fitted model as plain JSON types (exact round trip through :meth:`from_json`)."""
        check_fitted(self, "coef_")

        def floats(a: FloatArray | None) -> list[float]:
            assert a is not None
            return [float(v) for v in a]

        assert self.variance_matrix_ is not None
        return envelope(
            ENGINE,
            FORMAT_VERSION,
            {
                "params": self.get_params(),
                "feature_names": list(self.feature_names_ or []),
                "coef": floats(self.coef_),
                "variance_matrix": [floats(r) for r in self.variance_matrix_],
                "means": floats(self.means_),
                "scales": floats(self.scales_),
                "baseline_times": floats(self.baseline_times_),
                "baseline_cumulative_hazard": floats(self.baseline_cumulative_hazard_),
                "log_likelihood": self.log_likelihood_,
                "log_likelihood_null": self.log_likelihood_null_,
                "penalty": self.penalty_,
                "n": self.n_,
                "events": self.events_,
                "concordance": self.concordance_,
                "n_iter": self.n_iter_,
            },
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CoxPH:
        """Rebuild a fitted model from :meth:`to_json` output."""
        body = open_envelope(data, ENGINE, {FORMAT_VERSION})
        try:
            model = cls(**body["params"])
            model._check_params()
            names = [str(v) for v in body["feature_names"]]
            p = len(names)

            def arr(key: str, shape: tuple[int, ...]) -> FloatArray:
                a = np.asarray(body[key], dtype=np.float64)
                if a.shape != shape or not np.isfinite(a).all():
                    raise ValueError(f"{key}: expected finite values of shape {shape}, got {a.shape}")
                return a

            k = len(body["baseline_times"])
            model.feature_names_ = names
            model.coef_ = arr("coef", (p,))
            model.variance_matrix_ = arr("variance_matrix", (p, p))
            model.means_ = arr("means", (p,))
            model.scales_ = arr("scales", (p,))
            model.baseline_times_ = arr("baseline_times", (k,))
            model.baseline_cumulative_hazard_ = arr("baseline_cumulative_hazard", (k,))
            model.log_likelihood_ = float(body["log_likelihood"])
            model.log_likelihood_null_ = float(body["log_likelihood_null"])
            model.penalty_ = float(body["penalty"])
            model.n_ = int(body["n"])
            model.events_ = int(body["events"])
            model.concordance_ = float(body["concordance"])
            model.n_iter_ = int(body["n_iter"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed serialised {ENGINE} model: {exc}", {"engine": ENGINE}) from exc
        model._set_inference()
        return model


# --- concordance --------------------------------------------------------------------------------------------------


def _pairs(counts: IntArray) -> int:
    return int((counts * (counts - 1) // 2).sum())


def _later_smaller_or_equal(r: IntArray, query: npt.NDArray[np.bool_]) -> tuple[int, int]:
    """Sum over query positions ``i`` of ``#{j > i: r_j < r_i}`` and ``#{j > i: r_j == r_i}``.

    Bottom-up merge sort on ``v = 2 r + query`` (the flag travels with the value): at level ``k`` each block of
    ``2^k`` positions is sorted; the queries of every left block are counted against the sibling right block by
    binary search (``2r <= v' < 2r + 2`` means ``r' == r``), then siblings merge. ``O(n log^2 n)``, vectorised.
    """
    n = len(r)
    big = np.int64(2 * n + 2)
    v = 2 * r + query.astype(np.int64)
    pos = np.arange(n, dtype=np.int64)
    less = equal = 0
    k = 0
    while (1 << k) < n:
        pair = pos >> (k + 1)
        right = ((pos >> k) & 1).astype(bool)
        keys = pair * big + v  # ascending within each block, blocks in order: rkeys and lkeys are sorted
        rkeys = keys[right]
        lkeys = keys[~right]
        lkeys = lkeys[(lkeys & 1) == 1]  # the queries in left blocks
        lo = np.searchsorted(rkeys, lkeys - 1)  # right-block values < 2r (r' < r) ...
        hi = np.searchsorted(rkeys, lkeys + 1)  # ... and < 2r + 2 (r' <= r)
        first = (lkeys // big) << k  # right-block entries of the earlier pairs (all full)
        less += int((lo - first).sum())
        equal += int((hi - lo).sum())
        v = np.sort(keys, kind="stable") - pair * big  # merge the sibling blocks
        k += 1
    return less, equal


def concordance_index(durations: ArrayLike, events: ArrayLike, scores: ArrayLike) -> float:
    """Harrell's C of ``scores`` (higher = earlier event) against right-censored ``durations``/``events``.

    Comparable pairs: the shorter duration ends in an event; a censored row with the same duration as an event counts
    as the longer one; two events at the same time are not comparable. Concordant: the event has the higher score;
    tied scores count 1/2. Equals ``lifelines.utils.concordance_index(durations, -scores, events)`` and R's
    ``survival::concordance`` (``timewt = "n"``). ``O(n log^2 n)``.
    """
    t, e = _durations_events(durations, events, positive=False)
    s = float_vector(scores, "scores")
    if len(s) != len(t):
        raise _invalid(
            f"scores and durations differ in length ({len(s)} != {len(t)})",
            [{"column": "scores", "reason": "length differs from durations"}],
        )
    n = len(t)
    score_rank = np.unique(s, return_inverse=True)[1].astype(np.int64).ravel()
    time_rank = np.unique(t, return_inverse=True)[1].astype(np.int64).ravel()
    levels = np.int64(score_rank.max() + 1) if n else np.int64(1)
    # time ascending; at one time events before censored rows; then score descending
    key = (2 * time_rank + (e == 0)) * levels + (levels - 1 - score_rank)
    order = np.argsort(key)
    t_o, e_o, r = t[order], e[order] > 0, score_rank[order]
    less, equal = _later_smaller_or_equal(r, e_o)
    after = int((n - 1 - np.flatnonzero(e_o)).sum())
    # pairs of events at the same time: counted above but not comparable (events there are in descending score)
    ev_t, ev_r = t_o[e_o], r[e_o]
    if len(ev_t):
        same_t = np.concatenate(([True], ev_t[1:] != ev_t[:-1]))
        same_tr = same_t | np.concatenate(([True], ev_r[1:] != ev_r[:-1]))
        tie_pairs = _pairs(np.diff(np.append(np.flatnonzero(same_t), len(ev_t))))
        tie_score_pairs = _pairs(np.diff(np.append(np.flatnonzero(same_tr), len(ev_t))))
    else:
        tie_pairs = tie_score_pairs = 0
    pairs = after - tie_pairs
    if pairs <= 0:
        raise InsufficientDataError(
            "no comparable pairs: the concordance index is undefined", {"rows": n, "events": int(e.sum())}
        )
    concordant = less - (tie_pairs - tie_score_pairs)
    tied = equal - tie_score_pairs
    return (concordant + 0.5 * tied) / pairs
