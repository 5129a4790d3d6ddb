"""Two-parameter logistic (2PL) IRT: item calibration by marginal maximum likelihood, EAP ability scoring, linking of
successive calibrations onto one scale, and the 0-100 learning index ``I_t``.

**Model.** Person ``i`` answers item ``j`` correctly with probability

    P_j(theta) = 1 / (1 + exp(-a_j (theta - b_j)))          (discrimination a_j, difficulty b_j)

given the ability ``theta_i``; answers are independent given ``theta`` (a person may answer an item several times:
each answer counts). Internally items use the slope-intercept form ``a_j theta + d_j`` with ``d_j = -a_j b_j``
(better conditioned than ``(a, b)``). The input is the sparse list of responses (``person``, ``item``,
``correct``); the students x items matrix is never formed densely: it is held as SciPy CSR matrices of correct and
incorrect answer counts, so memory and time are linear in the number of responses.

**Calibration: marginal maximum likelihood by EM (Bock & Aitkin, 1981).** Abilities are integrated out over the
population ``theta ~ N(0, 1)`` (which fixes the scale of a calibration; but see *Population*) with a fixed grid of
``Q = quadrature_points`` equally spaced nodes ``x_q`` on ``[-quadrature_range, quadrature_range]`` and weights
``w_q proportional to exp(-x_q^2 / 2)`` (normalised). An equally spaced grid is a trapezoid rule, which is spectrally
accurate for smooth integrands while the node spacing is below about 1.5 posterior SDs; Gauss-Hermite nodes, by
contrast, sit far apart in the tails, where the narrow posteriors of students with many answers can lie. With
``c1_ij``/``c0_ij`` the counts of correct/incorrect answers of ``i`` to ``j``:

    E-step:  L_iq = sum_j [c1_ij log P_j(x_q) + c0_ij log(1 - P_j(x_q))] + log w_q,   post_iq = softmax_q(L_iq)
             log-likelihood = sum_i logsumexp_q L_iq
    M-step:  r1_jq = sum_i c1_ij post_iq,  r0_jq = sum_i c0_ij post_iq;  for every item at once, Newton steps (with
             step-halving) on  sum_q [r1_jq log P_j(x_q) + r0_jq log(1 - P_j(x_q))]  over (a_j, d_j)

Both steps are two sparse-times-dense products (``O(responses x Q)``); the M-step works on ``items x Q`` arrays.
EM stops when no item's ``a`` or ``d`` moves by more than ``tol`` in one iteration (or after ``max_iter``
iterations: then ``converged_`` is False and a ``RuntimeWarning`` is issued). ``log_likelihood_`` is the marginal
log-likelihood at the estimate (with the quadrature).

Optionally (``a_prior_log_sd``), a log-normal prior ``log a_j ~ N(a_prior_log_mean, a_prior_log_sd^2)`` is added to
each item's objective (maximum a posteriori, as BILOG/mirt offer) to keep sparse items' slopes finite and positive.
The default is no prior: plain MML, the estimator girth's ``twopl_mml`` computes.

**Population.** ``latent="normal"`` (default) keeps ``N(0, 1)``. ``latent="empirical"`` estimates the population as a
histogram on the nodes along with the items (Bock & Aitkin's own proposal; Woods' "empirical histogram"): after each
E-step the weights become the mean posterior ``w_q = mean_i post_iq``, smoothed by a Gaussian kernel of SD
``histogram_smoothing`` (0.1 by default: the EMS algorithm of Silverman et al., 1990; without it the histogram creeps
for thousands of iterations toward the spiky, discrete nonparametric maximum, on small data especially; on the default
simulated school it converges in about 40 iterations instead of 150, while recovery barely moves: ability correlation
0.911 instead of 0.912). The scale is then fixed by moving to ``z = (theta - mu) / s`` (``mu``, ``s`` the histogram's
mean and SD): items ``a s`` and ``d + a mu``, the density ``s f(mu + s z)`` interpolated back onto the nodes. A
population that is a mixture of learner types, as in the simulated school, is then not forced into a normal: slopes are
less biased, and EAP uses the right prior.

**Items left out.** An item with fewer than ``min_responses`` answers (``too_few_responses``) or whose answers are all
correct or all incorrect (``no_variance``: its MML estimate is infinite) is flagged, left out of the calibration,
and gets no parameters (NaN); its answers are ignored when scoring.

**Standard errors.** From the observed information of the marginal log-likelihood with respect to each item's own
``(a_j, d_j)`` at the estimate, by Louis' (1982) formula, per person-item pair:

    I_j = sum_i ( E_i[n_ij P_j (1 - P_j) v v'] - Var_i[(c1_ij - n_ij P_j) v] ),   v = (theta, 1), n = c1 + c0

with ``E_i``/``Var_i`` over person ``i``'s posterior (all of ``i``'s answers). This is the item's diagonal block of
the full information matrix: the other items are held at their estimates, whose uncertainty is ignored (the full
matrix has ``2 x items`` rows and couples every pair of items a student answered). It equals minus the numerical
Hessian of the marginal log-likelihood in the item's own parameters, and on simulated data ``(estimate - truth) / SE``
has SD 0.97-1.04 (tests, bench). ``se_a = sqrt(I^-1_aa)``; ``se_b`` by the delta method on ``b = -d / a``. With the
prior, the prior's curvature is added (posterior SDs). With ``latent="empirical"`` the histogram is held fixed.

**Scoring (EAP).** For any persons and any subset of calibrated items, ``theta_hat = E[theta | answers]`` and the
posterior SD, with the calibration's population as prior (``N(prior_mean_, prior_sd_^2)``, or the histogram; after
:func:`link`, the population on the linked scale), on a grid of ``score_points`` nodes over ``prior_mean_ +-
score_range * prior_sd_`` (spacing 0.15 SD by default): one sparse product for all persons, in chunks of persons.

**Linking.** A calibration's scale is that of its own population, so successive calibrations are put on the scale
of a base calibration through anchor items (calibrated, unflagged, in both): ``theta_base = A theta_new + B``,
``a* = a / A``, ``b* = A b + B``. :func:`link` estimates ``(A, B)`` by Stocking & Lord (1983) (default: minimise the
squared difference of the anchors' test characteristic curves, weighted by the base population, over a grid) or by
mean/sigma (``A = sd(b_base) / sd(b_new)``, ``B = mean(b_base) - A mean(b_new)``) and returns the transformed model
and the anchors' drift.

**Learning index.** :func:`learning_index` maps ``theta`` on the (linked) base scale to ``I = clip(50 + 10 theta, 0,
100)`` (see there for why).

**Errors.** Bad input raises :class:`InvalidInputError` naming the column (``details["problems"]``); fewer than three
items left to calibrate raises :class:`InsufficientDataError`; using a model before ``fit`` raises
:class:`NotFittedError`.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from learnpulse.engines.base import check_fitted, envelope, open_envelope
from learnpulse.errors import InsufficientDataError, InvalidInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
ArrayLike = npt.ArrayLike

ENGINE = "irt_2pl"
FORMAT_VERSION = 1

FLAG_TOO_FEW = "too_few_responses"
FLAG_NO_VARIANCE = "no_variance"

LEARNING_INDEX_CENTRE = 50.0
LEARNING_INDEX_SCALE = 10.0

MIN_ITEMS = 3  # below three items the 2PL marginal likelihood does not identify the slopes
_M_NEWTON_STEPS = 8  # Newton iterations per M-step (warm-started, so a couple usually suffice)
_MAX_HALVINGS = 30
_PERSON_CHUNK = 65_536  # persons per scoring chunk: bounds the (persons x grid) arrays

__all__ = [
    "FLAG_NO_VARIANCE",
    "FLAG_TOO_FEW",
    "IRT2PL",
    "LEARNING_INDEX_CENTRE",
    "LEARNING_INDEX_SCALE",
    "Linking",
    "learning_index",
    "link",
]


# --- input checks ------------------------------------------------------------------------------------------------


def _invalid(message: str, problems: list[dict[str, Any]]) -> InvalidInputError:
    return InvalidInputError(message, {"problems": problems})


def _first_bad(mask: npt.NDArray[np.bool_], name: str, reason: str, what: str) -> InvalidInputError:
    rows = np.flatnonzero(mask)
    return _invalid(
        f"{name} has {len(rows)} {what} (first at row {int(rows[0])})",
        [{"column": name, "row": int(rows[0]), "reason": reason, "count": len(rows)}],
    )


def _label_array(values: ArrayLike, name: str) -> np.ndarray[Any, Any]:
    """Identifiers as a 1-D array of int64 or of str (floats only if whole numbers); missing values are refused."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise _invalid(f"{name} must be one-dimensional", [{"column": name, "reason": f"shape {arr.shape}"}])
    kind = arr.dtype.kind
    if kind in "iu":
        return arr.astype(np.int64, copy=False)
    if kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise _first_bad(bad, name, "missing or not a whole number", "missing or non-integer identifier(s)")
        return arr.astype(np.int64)
    if kind == "U":
        return arr.astype(object)
    if kind == "O":
        missing = np.asarray(pd.isna(arr), dtype=bool)
        if missing.any():
            raise _first_bad(missing, name, "missing", "missing identifier(s)")
        inferred = pd.api.types.infer_dtype(arr, skipna=False)
        if inferred == "integer":
            return arr.astype(np.int64)
        if inferred == "string":
            return arr
    raise _invalid(
        f"{name} must hold integer or string identifiers (got {arr.dtype})",
        [{"column": name, "reason": f"identifiers of type {arr.dtype} (integers or strings expected)"}],
    )


def _correct_array(values: ArrayLike, n: int) -> FloatArray:
    try:
        y = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise _invalid("correct must be 0/1 or boolean", [{"column": "correct", "reason": "not numeric"}]) from exc
    if y.ndim != 1:
        raise _invalid("correct must be one-dimensional", [{"column": "correct", "reason": f"shape {y.shape}"}])
    if len(y) != n:
        raise _invalid(
            f"correct has {len(y)} values, person and item {n}",
            [{"column": "correct", "reason": "length differs from person/item"}],
        )
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        raise _first_bad(bad, "correct", "not 0/1 (or missing)", "value(s) other than 0/1")
    return y


def _responses(persons: ArrayLike, items: ArrayLike, correct: ArrayLike) -> tuple[Any, Any, FloatArray]:
    p = _label_array(persons, "person")
    j = _label_array(items, "item")
    if len(p) != len(j):
        raise _invalid(
            f"person and item differ in length ({len(p)} != {len(j)})",
            [{"column": "item", "reason": "length differs from person"}],
        )
    return p, j, _correct_array(correct, len(p))


def _factorize(labels: np.ndarray[Any, Any]) -> tuple[IntArray, np.ndarray[Any, Any]]:
    """Codes 0..K-1 in sorted label order, and the sorted labels (hash-based: O(n) plus sorting the K labels)."""
    codes, uniques = pd.factorize(labels, sort=True)
    return codes.astype(np.int64, copy=False), np.asarray(uniques)


def _label_json(labels: np.ndarray[Any, Any]) -> list[int] | list[str]:
    if labels.dtype.kind in "iu":
        return [int(v) for v in labels]
    return [str(v) for v in labels]


def _labels_from_json(values: Any, name: str) -> np.ndarray[Any, Any]:
    if not isinstance(values, list):
        raise ValueError(f"{name} must be a list")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=object)
    raise ValueError(f"{name} must be all integers or all strings")


# --- the sparse response design -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Design:
    """Answer counts of ``n_persons`` persons on ``n_items`` items, as CSR matrices (never dense).

    ``y1``/``y0``: correct/incorrect counts (persons x items, only non-zero entries). For the standard errors, every
    answered (person, item) pair in item-major order: item ``j``'s pairs are ``item_ptr[j]:item_ptr[j+1]``, with the
    person and the counts of correct and of all answers.
    """

    y1: sp.csr_matrix
    y0: sp.csr_matrix
    item_ptr: IntArray
    pair_person: IntArray
    pair_c1: FloatArray
    pair_n: FloatArray


def _csr_from_sorted(row: IntArray, col: IntArray, data: FloatArray, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix from entries already in (row, col) order without duplicates (no sort needed)."""
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((data, col, indptr), shape=shape)


def _design(
    person: IntArray, item: IntArray, y: FloatArray, n_persons: int, n_items: int, *, for_fit: bool = True
) -> _Design:
    # Sum duplicate answers exactly in one pass: an int64 entry packs (correct count << 32) + answer count.
    packed = (y.astype(np.int64) << 32) + 1
    counts = sp.csr_matrix((packed, (person, item)), shape=(n_persons, n_items))
    counts.sum_duplicates()
    data = np.asarray(counts.data, dtype=np.int64)
    c1 = (data >> 32).astype(np.float64)
    n = (data & 0xFFFFFFFF).astype(np.float64)
    col = np.asarray(counts.indices, dtype=np.int64)
    row = np.repeat(np.arange(n_persons, dtype=np.int64), np.diff(counts.indptr))
    has1, has0 = c1 > 0, n > c1
    y1 = _csr_from_sorted(row[has1], col[has1], c1[has1], (n_persons, n_items))
    y0 = _csr_from_sorted(row[has0], col[has0], (n - c1)[has0], (n_persons, n_items))
    if not for_fit:  # scoring needs only the count matrices
        empty = np.empty(0, dtype=np.int64)
        return _Design(y1, y0, empty, empty, np.empty(0), np.empty(0))
    del row, col
    # item-major pairs: transpose a matrix whose entries are the pair numbers (a counting sort, O(pairs))
    counts.data = np.arange(len(data), dtype=np.int64)
    by_item = counts.T.tocsr()
    del counts, data
    order = np.asarray(by_item.data, dtype=np.int64)
    return _Design(
        y1=y1,
        y0=y0,
        item_ptr=np.asarray(by_item.indptr, dtype=np.int64),
        pair_person=np.asarray(by_item.indices, dtype=np.int64),
        pair_c1=c1[order],
        pair_n=n[order],
    )


def _grid(points: int, half_range: float, mean: float = 0.0, sd: float = 1.0) -> tuple[FloatArray, FloatArray]:
    """Equally spaced nodes over ``mean +- half_range * sd`` and normal log-weights summing to one."""
    z = np.linspace(-half_range, half_range, points)
    log_w = -0.5 * z * z
    log_w -= float(np.log(np.exp(log_w - log_w.max()).sum()) + log_w.max())
    return mean + sd * z, log_w


def _log_probs(a: FloatArray, d: FloatArray, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``log P_j(x_q)`` and ``log(1 - P_j(x_q))`` (items x nodes), without overflow."""
    z = a[:, None] * x[None, :] + d[:, None]
    return cast(FloatArray, log_expit(z)), cast(FloatArray, log_expit(-z))


def _posterior(
    y1: sp.csr_matrix, y0: sp.csr_matrix, log_p: FloatArray, log_q: FloatArray, log_w: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Posterior weights over the grid per person (rows sum to one) and each person's log marginal likelihood."""
    post = np.asarray(y1 @ log_p, dtype=np.float64)
    post += y0 @ log_q
    post += log_w[None, :]
    top = post.max(axis=1)
    post -= top[:, None]
    np.exp(post, out=post)
    total = post.sum(axis=1)
    post /= total[:, None]
    return post, top + np.log(total)


# --- the M-step ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prior:
    """Log-normal prior on a (``sd`` None: no prior)."""

    log_mean: float
    log_sd: float | None

    def value(self, a: FloatArray) -> FloatArray:
        if self.log_sd is None:
            return np.zeros_like(a)
        with np.errstate(invalid="ignore", divide="ignore"):
            la = np.log(a)
            out = -0.5 * ((la - self.log_mean) / self.log_sd) ** 2 - la
        return np.where(a > 0, out, -np.inf)

    def gradient(self, a: FloatArray) -> FloatArray:
        if self.log_sd is None:
            return np.zeros_like(a)
        s2 = self.log_sd**2
        return -(np.log(a) - self.log_mean + s2) / (s2 * a)

    def curvature(self, a: FloatArray) -> FloatArray:
        """Minus the second derivative of the log prior (may be negative far out in the right tail)."""
        if self.log_sd is None:
            return np.zeros_like(a)
        s2 = self.log_sd**2
        return (1.0 - (np.log(a) - self.log_mean + s2)) / (s2 * a * a)


def _item_objective(
    a: FloatArray, d: FloatArray, r1: FloatArray, n: FloatArray, x: FloatArray, *, prior: _Prior
) -> Any:
    """Per item: ``sum_q [r1 log P + (n - r1) log(1 - P)] + log prior(a)`` = ``sum_q [r1 z - n log(1 + e^z)]``."""
    z = a[:, None] * x[None, :] + d[:, None]
    return (r1 * z - n * np.logaddexp(0.0, z)).sum(axis=1) + prior.value(a)


def _m_step(
    a: FloatArray, d: FloatArray, r1: FloatArray, r0: FloatArray, x: FloatArray, *, prior: _Prior
) -> tuple[FloatArray, FloatArray]:
    """Maximise every item's expected complete-data log-likelihood (a weighted logistic regression on the grid).

    Newton on ``(a, d)`` for all items at once (2x2 systems solved in closed form), warm-started at the current
    values; a step that lowers an item's objective is halved (for that item only).
    """
    n = r1 + r0
    x2 = x * x
    a, d = a.copy(), d.copy()
    f = _item_objective(a, d, r1, n, x, prior=prior)
    for _ in range(_M_NEWTON_STEPS):
        p = expit(a[:, None] * x[None, :] + d[:, None])
        resid = r1 - n * p
        ga = resid @ x + prior.gradient(a)
        gd = resid.sum(axis=1)
        w = n * p * (1.0 - p)
        # a positive-definite stand-in for the prior's curvature keeps the step an ascent direction
        haa = w @ x2 + np.maximum(prior.curvature(a), 0.0)
        had = w @ x
        hdd = w.sum(axis=1)
        det = haa * hdd - had * had
        ok = det > 1e-300
        safe = np.where(ok, det, 1.0)
        da = np.where(ok, (hdd * ga - had * gd) / safe, 0.0)
        dd = np.where(ok, (haa * gd - had * ga) / safe, 0.0)
        if float(max(np.abs(da).max(initial=0.0), np.abs(dd).max(initial=0.0))) < 1e-10:
            break
        todo = np.ones(len(a), dtype=bool)
        for _ in range(_MAX_HALVINGS):
            cand_a, cand_d = a + da, d + dd
            cand_f = _item_objective(cand_a, cand_d, r1, n, x, prior=prior)
            better = todo & np.isfinite(cand_f) & (cand_f >= f - 1e-12 * np.abs(f))
            a = np.where(better, cand_a, a)
            d = np.where(better, cand_d, d)
            f = np.where(better, cand_f, f)
            todo &= ~better
            if not todo.any():
                break
            da, dd = np.where(todo, 0.5 * da, 0.0), np.where(todo, 0.5 * dd, 0.0)
    return a, d


def _smoother(x: FloatArray, h: float) -> FloatArray:
    """Gaussian-kernel smoothing (SD ``h``) of a histogram on the nodes ``x``; columns sum to one (mass is kept)."""
    if h <= 0:
        return np.eye(len(x))
    k = np.exp(-0.5 * ((x[:, None] - x[None, :]) / h) ** 2)
    return cast(FloatArray, k / k.sum(axis=0, keepdims=True))


def _standardise(
    a: FloatArray, d: FloatArray, mass: FloatArray, x: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Fix the scale of an empirical-histogram calibration: mean 0 and SD 1.

    ``mass`` is the histogram (the mean posterior) on the nodes ``x``, with mean ``mu`` and SD ``s``. On the scale
    ``z = (theta - mu) / s`` the items are ``a s`` and ``d + a mu``, and the density is ``s f(mu + s z)``, which is
    interpolated (linearly) back onto the fixed nodes. Returns the items and the log-weights (floored, so that no
    node is impossible).
    """
    mu = float(mass @ x)
    s = math.sqrt(max(float(mass @ (x * x)) - mu * mu, 1e-12))
    dens = np.interp(mu + s * x, x, mass, left=0.0, right=0.0)
    dens = np.maximum(dens / dens.sum(), 1e-12)
    return a * s, d + a * mu, np.log(dens / dens.sum())


# --- standard errors ----------------------------------------------------------------------------------------------


def _louis_information(
    des: _Design, post: FloatArray, a: FloatArray, d: FloatArray, x: FloatArray, *, prior: _Prior
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per item: the observed information ``(I_aa, I_ad, I_dd)`` of ``(a, d)`` (Louis' formula).

    For each answered pair, with ``g(x) = c1 - n P_j(x)`` and ``v = (x, 1)``, the pair adds
    ``E[n P (1 - P) v v'] - E[g^2 v v'] + E[g v] E[g v]'`` (expectations over the person's posterior). Per item, the
    first two terms need the node sums ``sum_i post_iq (n, c1^2, c1 n, n^2)_ij`` and the last the per-pair
    ``E[P]``, ``E[P x]``, ``E[x]``: two small matrix products on the item's rows of the posterior.
    """
    n_items = len(a)
    prob = expit(a[:, None] * x[None, :] + d[:, None])
    x2 = x * x
    i_aa = np.zeros(n_items)
    i_ad = np.zeros(n_items)
    i_dd = np.zeros(n_items)
    for j in range(n_items):
        lo, hi = int(des.item_ptr[j]), int(des.item_ptr[j + 1])
        c1, n = des.pair_c1[lo:hi], des.pair_n[lo:hi]
        w = post[des.pair_person[lo:hi]]  # (pairs of j, Q)
        p = prob[j]
        sums = w.T @ np.stack([n, c1 * c1, c1 * n, n * n], axis=1)  # (Q, 4)
        h = sums[:, 0] * p * (1.0 - p) - (sums[:, 1] - 2.0 * sums[:, 2] * p + sums[:, 3] * p * p)
        moments = w @ np.stack([p, p * x, x], axis=1)  # per pair: E[P], E[P x], E[x]
        eg_d = c1 - n * moments[:, 0]
        eg_a = c1 * moments[:, 2] - n * moments[:, 1]
        i_aa[j] = h @ x2 + eg_a @ eg_a
        i_ad[j] = h @ x + eg_a @ eg_d
        i_dd[j] = h.sum() + eg_d @ eg_d
    i_aa += prior.curvature(a)  # MAP: the information of the posterior
    return i_aa, i_ad, i_dd


def _standard_errors(
    a: FloatArray, d: FloatArray, i_aa: FloatArray, i_ad: FloatArray, i_dd: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``se_a``, ``se_b`` and ``cov(a, b)`` from the (a, d) information, by the delta method for ``b = -d / a``.

    A block that is not positive definite (an item the data do not identify) gives NaN.
    """
    det = i_aa * i_dd - i_ad * i_ad
    ok = (det > 0) & (i_aa > 0)
    safe = np.where(ok, det, 1.0)
    v_aa = np.where(ok, i_dd / safe, np.nan)
    v_ad = np.where(ok, -i_ad / safe, np.nan)
    v_dd = np.where(ok, i_aa / safe, np.nan)
    # b = -d / a: db/da = d / a^2, db/dd = -1 / a
    ga, gd = d / (a * a), -1.0 / a
    v_bb = ga * ga * v_aa + 2.0 * ga * gd * v_ad + gd * gd * v_dd
    cov_ab = ga * v_aa + gd * v_ad
    return np.sqrt(v_aa), np.sqrt(np.maximum(v_bb, 0.0)), cov_ab


# --- the estimator ------------------------------------------------------------------------------------------------


class IRT2PL:
    """The 2PL model calibrated by marginal maximum likelihood (EM), with EAP scoring.

    Hyper-parameters (scikit-learn style; checked by ``fit``):

    - ``min_responses``: items with fewer answers are flagged ``too_few_responses`` and left out.
    - ``quadrature_points``, ``quadrature_range``: the calibration grid (``Q`` equally spaced nodes on
      ``[-range, range]``; the default spacing is 0.25).
    - ``max_iter``, ``tol``: EM iteration cap, and the largest change of any item's ``a`` or ``d = -a b`` (and, with
      the empirical histogram, of any node's weight) in one iteration at which EM stops.
    - ``a_prior_log_mean``, ``a_prior_log_sd``: optional log-normal prior on ``a`` (``a_prior_log_sd=None``, the
      default: none, plain MML).
    - ``latent``: the population of abilities: ``"normal"`` (N(0, 1), the default, as girth and most software) or
      ``"empirical"`` (a histogram on the nodes estimated along with the items, standardised to mean 0 and SD 1).
    - ``histogram_smoothing``: SD of the Gaussian kernel that smooths the histogram at each EM step (``"empirical"``
      only; 0 = none).
    - ``score_points``, ``score_range``: the EAP grid, ``prior_mean_ +- score_range * prior_sd_``.

    Learned state: ``item_ids_`` (every item seen, sorted), ``a_``, ``b_``, ``se_a_``, ``se_b_``, ``cov_ab_`` (NaN
    for flagged items), ``flags_`` (None or why an item was left out), ``n_responses_``, ``n_correct_`` per item;
    ``prior_mean_``, ``prior_sd_`` (mean and SD of the population on this model's scale), ``latent_nodes_``,
    ``latent_weights_`` (the histogram; None for a normal population), ``scale_factor_``, ``scale_shift_`` (the map
    ``theta -> scale_factor_ * theta + scale_shift_`` from the calibration's own scale to this model's: identity
    unless linked), ``log_likelihood_``, ``n_iter_``, ``converged_``, ``n_persons_``, ``n_obs_`` (persons and
    answers used).
    """

    def __init__(
        self,
        *,
        min_responses: int = 30,
        quadrature_points: int = 41,
        quadrature_range: float = 5.0,
        max_iter: int = 500,
        tol: float = 1e-4,
        a_prior_log_mean: float = 0.0,
        a_prior_log_sd: float | None = None,
        score_points: int = 81,
        score_range: float = 6.0,
        latent: Literal["normal", "empirical"] = "normal",
        histogram_smoothing: float = 0.1,
    ) -> None:
        self.min_responses = min_responses
        self.quadrature_points = quadrature_points
        self.quadrature_range = quadrature_range
        self.max_iter = max_iter
        self.tol = tol
        self.a_prior_log_mean = a_prior_log_mean
        self.a_prior_log_sd = a_prior_log_sd
        self.score_points = score_points
        self.score_range = score_range
        self.latent = latent
        self.histogram_smoothing = histogram_smoothing

    # learned state (None until fit)
    item_ids_: np.ndarray[Any, Any] | None = None
    a_: FloatArray | None = None
    b_: FloatArray | None = None
    se_a_: FloatArray | None = None
    se_b_: FloatArray | None = None
    cov_ab_: FloatArray | None = None
    flags_: list[str | None] | None = None
    n_responses_: IntArray | None = None
    n_correct_: IntArray | None = None
    prior_mean_: float | None = None
    prior_sd_: float | None = None
    scale_factor_: float | None = None
    scale_shift_: float | None = None
    latent_nodes_: FloatArray | None = None
    latent_weights_: FloatArray | None = None
    log_likelihood_: float | None = None
    n_iter_: int | None = None
    converged_: bool | None = None
    n_persons_: int | None = None
    n_obs_: int | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"IRT2PL({args})"

    def get_params(self) -> dict[str, Any]:
        return {
            "min_responses": self.min_responses,
            "quadrature_points": self.quadrature_points,
            "quadrature_range": self.quadrature_range,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "a_prior_log_mean": self.a_prior_log_mean,
            "a_prior_log_sd": self.a_prior_log_sd,
            "score_points": self.score_points,
            "score_range": self.score_range,
            "latent": self.latent,
            "histogram_smoothing": self.histogram_smoothing,
        }

    def _check_params(self) -> None:
        problems: list[dict[str, Any]] = []

        def integer(name: str, low: int) -> None:
            v = getattr(self, name)
            if not (isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= low):
                problems.append({"parameter": name, "reason": f"must be an integer >= {low}, got {v!r}"})

        def positive(name: str) -> None:
            v = getattr(self, name)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                problems.append({"parameter": name, "reason": f"must be a finite number > 0, got {v!r}"})

        integer("min_responses", 1)
        integer("quadrature_points", 5)
        integer("max_iter", 1)
        integer("score_points", 5)
        positive("quadrature_range")
        positive("tol")
        positive("score_range")
        if self.a_prior_log_sd is not None:
            positive("a_prior_log_sd")
        v = self.a_prior_log_mean
        if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
            problems.append({"parameter": "a_prior_log_mean", "reason": f"must be a finite number, got {v!r}"})
        v = self.histogram_smoothing
        if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            problems.append({"parameter": "histogram_smoothing", "reason": f"must be a finite number >= 0, got {v!r}"})
        if self.latent not in ("normal", "empirical"):
            problems.append({"parameter": "latent", "reason": f"must be 'normal' or 'empirical', got {self.latent!r}"})
        if problems:
            raise InvalidInputError(
                "invalid IRT2PL parameters: " + "; ".join(f"{p['parameter']} {p['reason']}" for p in problems),
                {"problems": problems},
            )

    def _prior(self) -> _Prior:
        sd = None if self.a_prior_log_sd is None else float(self.a_prior_log_sd)
        return _Prior(float(self.a_prior_log_mean), sd)

    # --- fitting ----------------------------------------------------------------------------------------------

    def fit(self, persons: ArrayLike, items: ArrayLike, correct: ArrayLike) -> IRT2PL:
        """Calibrate on a list of answers: one row per answer, ``persons``/``items`` integer or string ids,
        ``correct`` 0/1 (or bool). Returns ``self`` with the item parameters, their SEs and the flags set."""
        self._check_params()
        person_lab, item_lab, y = _responses(persons, items, correct)
        if len(y) == 0:
            raise InsufficientDataError("no responses to calibrate on", {"responses": 0})
        item_code, item_ids = _factorize(item_lab)
        n_all = len(item_ids)
        n_resp = np.bincount(item_code, minlength=n_all).astype(np.int64)
        n_corr = np.bincount(item_code, y, minlength=n_all).round().astype(np.int64)
        flags: list[str | None] = [None] * n_all
        too_few = n_resp < self.min_responses
        no_var = ~too_few & ((n_corr == 0) | (n_corr == n_resp))
        for j in np.flatnonzero(too_few):
            flags[j] = FLAG_TOO_FEW
        for j in np.flatnonzero(no_var):
            flags[j] = FLAG_NO_VARIANCE
        usable = ~(too_few | no_var)
        n_usable = int(usable.sum())
        if n_usable < MIN_ITEMS:
            raise InsufficientDataError(
                f"only {n_usable} item(s) have at least min_responses={self.min_responses} answers with both correct "
                f"and incorrect ones; the 2PL needs at least {MIN_ITEMS}",
                {
                    "items": n_all,
                    "usable_items": n_usable,
                    "too_few_responses": int(too_few.sum()),
                    "no_variance": int(no_var.sum()),
                    "min_responses": self.min_responses,
                },
            )
        keep = usable[item_code]
        usable_code = np.cumsum(usable) - 1  # item code -> column among usable items
        person_code, person_ids = _factorize(person_lab[keep])
        des = _design(person_code, usable_code[item_code[keep]], y[keep], len(person_ids), n_usable)
        n_obs = int(keep.sum())
        del person_lab, item_lab, item_code, y, keep, person_code

        a, d, ll, n_iter, converged, post, x, log_w = self._em(des, n_corr[usable] / n_resp[usable])
        prior = self._prior()
        i_aa, i_ad, i_dd = _louis_information(des, post, a, d, x, prior=prior)
        se_a, se_b, cov_ab = _standard_errors(a, d, i_aa, i_ad, i_dd)

        def spread(values: FloatArray) -> FloatArray:
            out = np.full(n_all, np.nan)
            out[usable] = values
            return out

        self.item_ids_ = item_ids
        self.a_ = spread(a)
        self.b_ = spread(-d / a)
        self.se_a_ = spread(se_a)
        self.se_b_ = spread(se_b)
        self.cov_ab_ = spread(cov_ab)
        self.flags_ = flags
        self.n_responses_ = n_resp
        self.n_correct_ = n_corr
        self.prior_mean_ = 0.0
        self.prior_sd_ = 1.0
        self.scale_factor_ = 1.0
        self.scale_shift_ = 0.0
        self.latent_nodes_ = self.latent_weights_ = None
        if self.latent == "empirical":
            mass = np.exp(log_w)
            self.latent_nodes_ = x
            self.latent_weights_ = mass
            # standardised at every step, so these are 0 and 1 up to the last step's interpolation
            self.prior_mean_ = float(mass @ x)
            self.prior_sd_ = math.sqrt(float(mass @ (x * x)) - self.prior_mean_**2)
        self.log_likelihood_ = ll
        self.n_iter_ = n_iter
        self.converged_ = converged
        self.n_persons_ = len(person_ids)
        self.n_obs_ = n_obs
        if not converged:
            warnings.warn(
                f"IRT2PL: EM did not converge in max_iter={self.max_iter} iterations (tol={self.tol}); the "
                "estimates are those of the last iteration",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    def _em(
        self, des: _Design, p_correct: FloatArray
    ) -> tuple[FloatArray, FloatArray, float, int, bool, FloatArray, FloatArray, FloatArray]:
        """EM from a fixed start; returns a, d, log-likelihood, iterations, converged, the final posterior, the nodes
        and the final log-weights of the population (normal, or the empirical histogram)."""
        x, log_w = _grid(self.quadrature_points, float(self.quadrature_range))
        empirical = self.latent == "empirical"
        smooth = _smoother(x, float(self.histogram_smoothing)) if empirical else None
        prior = self._prior()
        n_items = des.y1.shape[1]
        a = np.full(n_items, 1.0 if prior.log_sd is None else math.exp(prior.log_mean))
        # marginal logit of a 2PL item over N(0, 1) is about d / sqrt(1 + (pi/8) a^2): invert it for a start
        logit = np.log(p_correct / (1.0 - p_correct))
        d = logit * np.sqrt(1.0 + (math.pi / 8.0) * a * a)
        converged = False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):  # noqa: B007 - n_iter is reported after the loop
            log_p, log_q = _log_probs(a, d, x)
            post, _ = _posterior(des.y1, des.y0, log_p, log_q, log_w)
            # y.T is a CSC view: its product streams through post once and scatters into the small (items x Q)
            # result, which stays in cache (4-5x faster than a CSR transpose, which gathers rows of post at random)
            r1 = np.asarray(des.y1.T @ post, dtype=np.float64)
            r0 = np.asarray(des.y0.T @ post, dtype=np.float64)
            mass = smooth @ post.mean(axis=0) if smooth is not None else None
            del post
            new_a, new_d = _m_step(a, d, r1, r0, x, prior=prior)
            change = 0.0
            if mass is not None:
                new_a, new_d, new_log_w = _standardise(new_a, new_d, mass, x)
                change = float(np.abs(np.exp(new_log_w) - np.exp(log_w)).max())
                log_w = new_log_w
            change = max(change, float(np.abs(new_a - a).max()), float(np.abs(new_d - d).max()))
            a, d = new_a, new_d
            if change < self.tol:
                converged = True
                break
        # the posterior and likelihood at the final estimate (for the standard errors and log_likelihood_)
        log_p, log_q = _log_probs(a, d, x)
        post, ll_person = _posterior(des.y1, des.y0, log_p, log_q, log_w)
        return a, d, float(ll_person.sum()), n_iter, converged, post, x, log_w

    # --- results ----------------------------------------------------------------------------------------------

    def item_parameters(self) -> pd.DataFrame:
        """One row per item seen in ``fit`` (sorted by id): ``item_id, a, b, se_a, se_b, cov_ab, n_responses,
        p_correct, flag`` (``flag`` None for calibrated items; flagged items have NaN parameters)."""
        check_fitted(self, "a_")
        assert self.n_responses_ is not None and self.n_correct_ is not None
        n = self.n_responses_
        return pd.DataFrame(
            {
                "item_id": self.item_ids_,
                "a": self.a_,
                "b": self.b_,
                "se_a": self.se_a_,
                "se_b": self.se_b_,
                "cov_ab": self.cov_ab_,
                "n_responses": n,
                "p_correct": self.n_correct_ / np.maximum(n, 1),
                "flag": pd.Series(self.flags_, dtype=object),
            }
        )

    def calibrated_items(self) -> np.ndarray[Any, Any]:
        """Ids of the items that have parameters (not flagged)."""
        check_fitted(self, "a_")
        assert self.item_ids_ is not None and self.a_ is not None
        return self.item_ids_[np.isfinite(self.a_)]

    def score(
        self,
        persons: ArrayLike,
        items: ArrayLike,
        correct: ArrayLike,
        *,
        unknown_items: Literal["error", "ignore"] = "error",
    ) -> pd.DataFrame:
        """EAP ability and posterior SD for every person in the answers (one row per answer, as in ``fit``).

        Uses the answers to calibrated items; answers to flagged items are ignored, and to items the model has
        never seen either raise :class:`InvalidInputError` (``unknown_items="error"``) or are ignored. Returns one
        row per person, sorted by id: ``person, theta, sd, n_responses`` (answers used; a person with none gets
        NaN ``theta`` and ``sd``). ``theta = sum_q x_q post_q``, ``sd^2 = sum_q x_q^2 post_q - theta^2`` on the
        scoring grid under the population of the calibration: ``N(prior_mean_, prior_sd_^2)``, or with
        ``latent="empirical"`` the estimated histogram (linearly interpolated between its nodes).
        """
        check_fitted(self, "a_")
        assert self.item_ids_ is not None and self.a_ is not None and self.b_ is not None
        assert self.prior_mean_ is not None and self.prior_sd_ is not None
        if unknown_items not in ("error", "ignore"):
            raise _invalid(
                f"unknown_items must be 'error' or 'ignore', got {unknown_items!r}",
                [{"column": "unknown_items", "reason": "not 'error' or 'ignore'"}],
            )
        person_lab, item_lab, y = _responses(persons, items, correct)
        person_code, person_ids = _factorize(person_lab)
        n_persons = len(person_ids)
        pos = self._item_positions(item_lab)
        if unknown_items == "error" and (pos < 0).any():
            unknown = pd.unique(item_lab[pos < 0])
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise _invalid(
                f"{len(unknown)} item(s) unknown to the model: {shown} (pass unknown_items='ignore' to skip them)",
                [{"column": "item", "reason": "unknown item", "count": len(unknown), "items": _label_json(unknown)}],
            )
        calibrated = np.isfinite(self.a_)
        use = pos >= 0
        use[use] = calibrated[pos[use]]
        cols = pos[use]
        n_used = np.bincount(person_code[use], minlength=n_persons).astype(np.int64)

        x, log_w = self._score_grid()
        a = np.where(calibrated, self.a_, 0.0)
        d = np.where(calibrated, -self.a_ * self.b_, 0.0)
        log_p, log_q = _log_probs(a, d, x)
        des = _design(person_code[use], cols, y[use], n_persons, len(self.item_ids_), for_fit=False)
        theta = np.full(n_persons, np.nan)
        sd = np.full(n_persons, np.nan)
        for start in range(0, n_persons, _PERSON_CHUNK):
            stop = min(start + _PERSON_CHUNK, n_persons)
            post, _ = _posterior(des.y1[start:stop], des.y0[start:stop], log_p, log_q, log_w)
            mean = post @ x
            var = post @ (x * x) - mean * mean
            theta[start:stop] = mean
            sd[start:stop] = np.sqrt(np.maximum(var, 0.0))
        none = n_used == 0
        theta[none] = np.nan
        sd[none] = np.nan
        return pd.DataFrame({"person": person_ids, "theta": theta, "sd": sd, "n_responses": n_used})

    def _score_grid(self) -> tuple[FloatArray, FloatArray]:
        """Nodes and log prior weights of the EAP grid (``prior_mean_ +- score_range * prior_sd_``)."""
        assert self.prior_mean_ is not None and self.prior_sd_ is not None
        x, log_w = _grid(int(self.score_points), float(self.score_range), self.prior_mean_, self.prior_sd_)
        if self.latent_weights_ is None or self.latent_nodes_ is None:
            return x, log_w
        nodes, mass = self.latent_nodes_, self.latent_weights_
        dens = np.interp(x, nodes, mass / np.gradient(nodes), left=0.0, right=0.0)
        dens = np.maximum(dens / dens.sum(), 1e-12)  # the histogram's floor: no ability is impossible
        return x, np.log(dens / dens.sum())

    def _item_positions(self, item_lab: np.ndarray[Any, Any]) -> IntArray:
        """Index of each answer's item in ``item_ids_`` (-1 if the model has not seen it)."""
        assert self.item_ids_ is not None
        ids = self.item_ids_
        if (ids.dtype.kind in "iu") != (item_lab.dtype.kind in "iu"):
            return np.full(len(item_lab), -1, dtype=np.int64)
        pos = np.asarray(pd.Index(ids).get_indexer(item_lab), dtype=np.int64)
        return pos

    # --- scale ------------------------------------------------------------------------------------------------

    def rescaled(self, A: float, B: float) -> IRT2PL:
        """A copy on the scale ``theta' = A theta + B`` (``A > 0``): ``a' = a / A``, ``b' = A b + B``, the population
        ``N(A mu + B, (A sigma)^2)``; SEs scale alike (the linking constants are taken as known). Every
        probability, and every EAP up to the same map, is unchanged."""
        check_fitted(self, "a_")
        if not (math.isfinite(A) and A > 0 and math.isfinite(B)):
            raise _invalid(
                f"a scale change needs A > 0 and finite B (got A={A!r}, B={B!r})",
                [{"column": "A", "reason": "not a finite positive number"}],
            )
        assert self.a_ is not None and self.b_ is not None and self.se_a_ is not None and self.se_b_ is not None
        assert self.cov_ab_ is not None and self.prior_mean_ is not None and self.prior_sd_ is not None
        assert self.scale_factor_ is not None and self.scale_shift_ is not None
        out = IRT2PL(**self.get_params())
        out.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k.endswith("_")}))
        out.a_ = self.a_ / A
        out.b_ = A * self.b_ + B
        out.se_a_ = self.se_a_ / A
        out.se_b_ = A * self.se_b_
        out.cov_ab_ = self.cov_ab_  # cov(a / A, A b + B) = cov(a, b)
        out.prior_mean_ = A * self.prior_mean_ + B
        out.prior_sd_ = A * self.prior_sd_
        out.scale_factor_ = A * self.scale_factor_
        out.scale_shift_ = A * self.scale_shift_ + B
        if self.latent_nodes_ is not None:
            out.latent_nodes_ = A * self.latent_nodes_ + B
        return out

    # --- serialisation ----------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The fitted model as plain JSON types (NaN as null; exact round trip through :meth:`from_json`)."""
        check_fitted(self, "a_")
        assert self.item_ids_ is not None and self.n_responses_ is not None and self.n_correct_ is not None

        def floats(values: FloatArray | None) -> list[float | None]:
            assert values is not None
            return [float(v) if math.isfinite(v) else None for v in values]

        return envelope(
            ENGINE,
            FORMAT_VERSION,
            {
                "params": self.get_params(),
                "item_ids": _label_json(self.item_ids_),
                "a": floats(self.a_),
                "b": floats(self.b_),
                "se_a": floats(self.se_a_),
                "se_b": floats(self.se_b_),
                "cov_ab": floats(self.cov_ab_),
                "flags": list(self.flags_ or []),
                "n_responses": [int(v) for v in self.n_responses_],
                "n_correct": [int(v) for v in self.n_correct_],
                "prior_mean": self.prior_mean_,
                "prior_sd": self.prior_sd_,
                "scale_factor": self.scale_factor_,
                "scale_shift": self.scale_shift_,
                "latent_nodes": None if self.latent_nodes_ is None else floats(self.latent_nodes_),
                "latent_weights": None if self.latent_weights_ is None else floats(self.latent_weights_),
                "log_likelihood": self.log_likelihood_,
                "n_iter": self.n_iter_,
                "converged": self.converged_,
                "n_persons": self.n_persons_,
                "n_obs": self.n_obs_,
            },
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IRT2PL:
        """Rebuild a fitted model from :meth:`to_json` output."""
        body = open_envelope(data, ENGINE, {FORMAT_VERSION})
        try:
            model = cls(**body["params"])
            model._check_params()
            ids = _labels_from_json(body["item_ids"], "item_ids")
            k = len(ids)
            if len(pd.unique(ids)) != k:
                raise ValueError("item_ids are not unique")

            def arr(key: str) -> FloatArray:
                values = body[key]
                if not isinstance(values, list) or len(values) != k:
                    raise ValueError(f"{key}: expected a list of {k} values")
                out = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
                if np.isinf(out).any():
                    raise ValueError(f"{key}: infinite value")
                return out

            flags = body["flags"]
            if not isinstance(flags, list) or len(flags) != k:
                raise ValueError(f"flags: expected a list of {k} values")
            if any(f not in (None, FLAG_TOO_FEW, FLAG_NO_VARIANCE) for f in flags):
                raise ValueError("flags: unknown flag")
            model.item_ids_ = ids
            model.a_ = arr("a")
            model.b_ = arr("b")
            model.se_a_ = arr("se_a")
            model.se_b_ = arr("se_b")
            model.cov_ab_ = arr("cov_ab")
            model.flags_ = [None if f is None else str(f) for f in flags]
            if not np.array_equal(np.isfinite(model.a_), np.array([f is None for f in flags], dtype=bool)):
                raise ValueError("a: must be given exactly for the unflagged items")
            model.n_responses_ = np.asarray(body["n_responses"], dtype=np.int64).reshape(k)
            model.n_correct_ = np.asarray(body["n_correct"], dtype=np.int64).reshape(k)
            model.prior_mean_ = float(body["prior_mean"])
            model.prior_sd_ = float(body["prior_sd"])
            model.scale_factor_ = float(body["scale_factor"])
            model.scale_shift_ = float(body["scale_shift"])
            model.log_likelihood_ = float(body["log_likelihood"])
            model.n_iter_ = int(body["n_iter"])
            model.converged_ = bool(body["converged"])
            model.n_persons_ = int(body["n_persons"])
            model.n_obs_ = int(body["n_obs"])
            if not (model.prior_sd_ > 0 and model.scale_factor_ > 0):
                raise ValueError("prior_sd and scale_factor must be positive")
            if (body["latent_nodes"] is None) != (model.latent != "empirical") or (
                (body["latent_weights"] is None) != (body["latent_nodes"] is None)
            ):
                raise ValueError("latent_nodes and latent_weights are given exactly for latent='empirical'")
            if body["latent_nodes"] is not None:
                nodes = np.asarray(body["latent_nodes"], dtype=np.float64)
                mass = np.asarray(body["latent_weights"], dtype=np.float64)
                if (
                    nodes.ndim != 1
                    or nodes.shape != mass.shape
                    or not (np.isfinite(nodes).all() and np.isfinite(mass).all())
                ):
                    raise ValueError("latent_nodes and latent_weights: finite lists of one length")
                if len(nodes) < 2 or (np.diff(nodes) <= 0).any() or (mass < 0).any():
                    raise ValueError("latent_nodes must increase and latent_weights be >= 0")
                model.latent_nodes_, model.latent_weights_ = nodes, mass
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"malformed serialised {ENGINE} model: {exc}", {"engine": ENGINE}) from exc
        return model


# --- linking ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linking:
    """The result of :func:`link`: ``theta_base = A theta_new + B``.

    ``model`` is the new calibration on the base scale; ``anchors`` the item ids used; ``drift`` one row per anchor:
    ``item_id, a_base, a_linked, b_base, b_linked, drift_a (= a_linked - a_base), drift_b``.
    """

    A: float
    B: float
    method: str
    anchors: np.ndarray[Any, Any]
    model: IRT2PL
    drift: pd.DataFrame


def _tcc(a: FloatArray, b: FloatArray, theta: FloatArray) -> FloatArray:
    """Test characteristic curve: ``sum_j P_j(theta_k)`` per node."""
    return cast(FloatArray, expit(a[None, :] * (theta[:, None] - b[None, :])).sum(axis=1))


def link(
    new: IRT2PL,
    base: IRT2PL,
    *,
    method: Literal["stocking_lord", "mean_sigma"] = "stocking_lord",
    anchors: ArrayLike | None = None,
) -> Linking:
    """Put ``new`` on the scale of ``base`` through anchor items (default: every item calibrated in both).

    - ``mean_sigma``: ``A = sd(b_base) / sd(b_new)``, ``B = mean(b_base) - A mean(b_new)`` over the anchors.
    - ``stocking_lord`` (default): ``(A, B)`` minimising ``sum_k w_k (T_base(t_k) - T_new*(t_k))^2``, the squared gap
      between the anchors' test characteristic curves ``T(t) = sum_j P_j(t)`` with the new items transformed to
      ``a / A, A b + B``, over 41 nodes ``t_k`` of the base population ``N(prior_mean_, prior_sd_^2)`` with normal
      weights ``w_k``; BFGS on ``(log A, B)`` from the mean/sigma values. It uses ``a`` and ``b`` together, so one
      poorly estimated ``b`` moves it less than mean/sigma.

    Raises :class:`InsufficientDataError` with fewer than two anchors (or anchors whose ``b`` do not vary), and
    :class:`InvalidInputError` for requested anchors that are not calibrated in both models.
    """
    check_fitted(new, "a_")
    check_fitted(base, "a_")
    if method not in ("stocking_lord", "mean_sigma"):
        raise _invalid(
            f"method must be 'stocking_lord' or 'mean_sigma', got {method!r}",
            [{"column": "method", "reason": "unknown linking method"}],
        )
    new_ids = pd.Index(new.calibrated_items())
    base_ids = pd.Index(base.calibrated_items())
    if anchors is None:
        if (new_ids.dtype.kind in "iu") != (base_ids.dtype.kind in "iu"):
            common = pd.Index([])
        else:
            common = new_ids.intersection(base_ids).sort_values()
        ids = np.asarray(common)
    else:
        ids = np.asarray(pd.unique(_label_array(anchors, "anchors")))
        missing = [v for v in ids if v not in new_ids or v not in base_ids]
        if missing:
            raise _invalid(
                f"{len(missing)} anchor item(s) are not calibrated in both models: "
                + ", ".join(map(str, missing[:10])),
                [{"column": "anchors", "reason": "not calibrated in both", "items": _label_json(np.asarray(missing))}],
            )
    if len(ids) < 2:
        raise InsufficientDataError(
            f"linking needs at least 2 anchor items calibrated in both models, found {len(ids)}",
            {"anchors": len(ids)},
        )
    assert new.item_ids_ is not None and base.item_ids_ is not None
    assert new.a_ is not None and new.b_ is not None and base.a_ is not None and base.b_ is not None
    pn = pd.Index(new.item_ids_).get_indexer(ids)
    pb = pd.Index(base.item_ids_).get_indexer(ids)
    a_new, b_new, a_base, b_base = new.a_[pn], new.b_[pn], base.a_[pb], base.b_[pb]
    sd_new = float(np.std(b_new))
    if not sd_new > 0:
        raise InsufficientDataError("the anchors' difficulties do not vary: the scale cannot be linked", {})
    A = float(np.std(b_base)) / sd_new
    B = float(np.mean(b_base)) - A * float(np.mean(b_new))
    if method == "stocking_lord":
        assert base.prior_mean_ is not None and base.prior_sd_ is not None
        theta, log_w = _grid(41, 4.0, base.prior_mean_, base.prior_sd_)
        w = np.exp(log_w)
        target = _tcc(a_base, b_base, theta)

        def loss(v: FloatArray) -> float:
            scale = math.exp(float(v[0]))
            gap = target - _tcc(a_new / scale, scale * b_new + float(v[1]), theta)
            return float(w @ (gap * gap))

        res = minimize(loss, np.array([math.log(A), B]), method="BFGS", options={"gtol": 1e-10})
        if not np.all(np.isfinite(res.x)):
            raise _invalid("Stocking-Lord linking failed to converge", [{"column": "anchors", "reason": "no optimum"}])
        A, B = math.exp(float(res.x[0])), float(res.x[1])
    linked = new.rescaled(A, B)
    assert linked.a_ is not None and linked.b_ is not None
    drift = pd.DataFrame(
        {
            "item_id": ids,
            "a_base": a_base,
            "a_linked": linked.a_[pn],
            "b_base": b_base,
            "b_linked": linked.b_[pn],
        }
    )
    drift["drift_a"] = drift["a_linked"] - drift["a_base"]
    drift["drift_b"] = drift["b_linked"] - drift["b_base"]
    return Linking(A=A, B=B, method=method, anchors=ids, model=linked, drift=drift)


# --- the learning index -------------------------------------------------------------------------------------------


def learning_index(theta: ArrayLike) -> FloatArray:
    """``weekly_kpi.I_t`` from ability on the linked base scale: ``I = clip(50 + 10 theta, 0, 100)`` (NaN stays NaN).

    Why this map: it is linear in ``theta``, so ability growth that is linear in logits (as in the simulated world)
    is a linear trend in ``I_t`` for the forecasts, and equal steps mean equal ability gains anywhere on the scale;
    it does not depend on which items are in the bank this week (100 x expected accuracy over the bank would move
    whenever items are added or retired, and flattens near 0 and 100); after linking, 50 and 10 are the mean and SD
    of the base calibration's population, so ``I_t`` is comparable from week to week (a T-score). The clip only
    binds beyond 5 SDs. The posterior SD maps to ``10 * sd`` (``LEARNING_INDEX_SCALE``).
    """
    t = np.asarray(theta, dtype=np.float64)
    return cast(FloatArray, np.clip(LEARNING_INDEX_CENTRE + LEARNING_INDEX_SCALE * t, 0.0, 100.0))
