"""Learner segments: k-means (default) or a Gaussian mixture over per-student features, with automatic k, stable
segment ids across runs and readable names.

Generic input: a frame with one row per unit (student) and one numeric column per feature (any names; the naming
rule below recognises the features of :mod:`learnpulse.segment_features`). Output: a segment id per row with its
distance to the segment's centre (and, for ``gmm``, the membership probability).

**Space.** Columns named in ``log_features`` are replaced by ``log1p(x)`` (heavy-tailed counts). Every column is then
robustly scaled, ``z = (x - median) / IQR`` with medians and inter-quartile ranges over all fitted rows (what
scikit-learn's ``RobustScaler`` does). A column whose IQR is 0 (over half its values tied) is divided by
``1.349 * SD`` instead (the IQR of a normal with that SD), and a constant column by 1 (it then adds nothing to any
distance). Distances below are Euclidean in this space, so one IQR of any feature weighs the same.

**k-means and the choice of k** (``method="kmeans"``). With ``n_clusters=None`` every ``k`` in
``k_min .. k_max`` (2..10) is a candidate. Each candidate is fitted by Lloyd's k-means (k-means++ starts,
``n_init`` (3) of them, the best inertia kept) on a seeded uniform random *fit sample* of ``fit_sample_size`` rows
(50,000; all rows when there are fewer) and scored by the mean silhouette width

    s(i) = (b_i - a_i) / max(a_i, b_i),   a_i = mean distance to the own cluster, b_i = to the nearest other

over a seeded random *score sample* of ``score_sample_size`` rows (5,000) drawn from the fit sample, the same
rows for every candidate so their scores are comparable. The chosen ``k`` has the highest silhouette (ties: the
smaller ``k``). Then one Lloyd run on *all* rows starts from the chosen candidate's centres and refines them
(``final_max_iter``), and every row goes to its nearest centre.

Why this scales: the full silhouette is ``O(n^2 p)`` (1,000,000 students: 5 x 10^11 distances per candidate); on
the score sample it is a fixed ``O(m^2 p)`` whatever ``n``. Per-row silhouettes have an SD of about 0.2, so the mean
over ``m = 5,000`` rows has a standard error near 0.003, and the candidates are scored on the same rows, so their
differences are more precise still: far below the gaps between candidates that matter. Candidate fits cost
``O(f k p)`` per iteration on the fit sample, also independent of ``n``: a uniform sample of 50,000 rows puts about
``50,000 x share`` rows in every cluster (2,500 for a 5% segment), so centres found on it are within about
``1/sqrt(rows)`` within-cluster SDs of the full-data centres, and the final pass on all rows (``O(n k p)`` per
iteration, started next to its optimum so it needs few iterations) removes even that. Only the scaling, the final
pass and the assignment touch all ``n`` rows. ``timings_`` records the seconds of each stage.

**Gaussian mixture** (``method="gmm"``): candidates are scikit-learn ``GaussianMixture`` fits (``covariance_type``
``full`` or ``diag``, ``reg_covar`` added to the diagonal in the scaled space) on the fit sample, scored by
``BIC = -2 log L + q log(f)`` on the fit sample (``q`` free parameters, ``f`` sample rows); the lowest BIC wins
(ties: the smaller ``k``). A final EM run on all rows starts from the chosen candidate. A row's segment is its most
probable component; ``probability`` is that posterior membership probability and ``distance`` the Euclidean
distance to the component's mean.

**Determinism.** Every random choice comes from ``random_state``: the samples from ``SeedSequence(random_state)``,
the candidate with ``k`` clusters from ``SeedSequence([random_state, k])``. The same data and settings give the same
segments. After fitting, segments are put in a canonical order (largest first; ties by the centre's coordinates),
which gives them ids ``1..k``.

**Stable ids** (:func:`align_segments`): a new run's segments are matched to the previous run's by optimal
assignment (``scipy.optimize.linear_sum_assignment``) on the distances between centres, both mapped into the *new*
run's scaled space from their original units, measured as the root mean square over features
``d = ||c_new - c_old|| / sqrt(p)`` (IQRs per feature). A pair farther apart than ``max_distance`` (0.5: half an IQR
per feature) is not a match. A matched segment keeps the previous id and name; the others are *new* and get fresh
ids above every id the lineage has issued (``id_counter_``), so an id is never reused; previous segments left
unmatched have *vanished*. The two runs must have the same features (otherwise nothing matches).

**Names** (:func:`segment_names`) come from a segment's profile: its centre in the scaled space, i.e. how many IQRs
each feature lies above or below the population median. Features are grouped into aspects (``ASPECTS``; the mean of
the signed z over the aspect's features present): *level* (accuracy, I_t), *trend* (their trends), *volume*
(attempts, active days, minutes per week), *regularity* (minus burstiness) and *breadth* (topics). The noun:
trend >= 0.75 "improvers", trend <= -0.75 "decliners", else level >= 0.3 "high-achievers", level <= -0.3
"strugglers", else "learners" ("mid-level learners" without an adjective). The adjective, first that applies: volume
<= -0.5 "casual", regularity <= -0.5 "irregular", regularity >= 0.15 "steady" (burstiness is bounded below by 0,
so a regular group can only sit a little below the median), volume >= 0.5 "intensive". Names are unique within a
run: when several segments get the same name, the first in canonical order keeps it and each other one gets the
aspect on which it differs most from that one, e.g. "steady high-achievers (more active)"; a number is appended
if that still clashes (or the profiles are identical on every aspect).

**Errors.** No rows or fewer rows than clusters raise :class:`InsufficientDataError`; missing, non-finite or
non-numeric values raise :class:`InvalidInputError` naming the columns (``details["problems"]``); using a model
before ``fit`` raises :class:`NotFittedError`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from learnpulse.engines.base import check_fitted, envelope, open_envelope
from learnpulse.errors import InsufficientDataError, InvalidInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ENGINE = "segments"
FORMAT_VERSION = 1
METHODS = ("kmeans", "gmm")
COVARIANCE_TYPES = ("full", "diag")
DEFAULT_MAX_DISTANCE = 0.5
IQR_OF_UNIT_NORMAL = 1.349
_CHUNK_ROWS = 65_536

__all__ = [
    "ASPECTS",
    "DEFAULT_MAX_DISTANCE",
    "SegmentMatch",
    "SegmentModel",
    "align_segments",
    "aspect_scores",
    "segment_names",
]

# --- naming --------------------------------------------------------------------------------------------------

ASPECTS: dict[str, dict[str, float]] = {
    "level": {"accuracy_level": 1.0, "i_t_level": 1.0},
    "trend": {"accuracy_trend": 1.0, "i_t_trend": 1.0},
    "volume": {"attempts_per_week": 1.0, "active_days_per_week": 1.0, "study_minutes_per_week": 1.0},
    "regularity": {"burstiness": -1.0},
    "breadth": {"topics_practised": 1.0, "topic_effective_number": 1.0},
}
"""Aspect -> {feature: sign}: an aspect's score is the mean of ``sign * z`` over its features present."""

TREND_THRESHOLD = 0.75
LEVEL_THRESHOLD = 0.3
VOLUME_THRESHOLD = 0.5
IRREGULAR_THRESHOLD = -0.5
STEADY_THRESHOLD = 0.15
_QUALIFIERS = {
    "level": ("higher accuracy", "lower accuracy"),
    "trend": ("improving faster", "improving slower"),
    "volume": ("more active", "less active"),
    "regularity": ("more regular", "less regular"),
    "breadth": ("broader", "narrower"),
}


def aspect_scores(z: FloatArray, feature_names: Sequence[str]) -> dict[str, FloatArray]:
    """Per aspect of ``ASPECTS``, the mean signed z of its features over the rows of ``z`` (0 when none present)."""
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    position = {name: j for j, name in enumerate(feature_names)}
    out: dict[str, FloatArray] = {}
    for aspect, members in ASPECTS.items():
        cols = [(position[f], sign) for f, sign in members.items() if f in position]
        if cols:
            out[aspect] = np.mean([sign * z[:, j] for j, sign in cols], axis=0)
        else:
            out[aspect] = np.zeros(z.shape[0])
    return out


def _base_name(scores: Mapping[str, float]) -> str:
    trend, level = scores["trend"], scores["level"]
    volume, regularity = scores["volume"], scores["regularity"]
    if trend >= TREND_THRESHOLD:
        noun = "improvers"
    elif trend <= -TREND_THRESHOLD:
        noun = "decliners"
    elif level >= LEVEL_THRESHOLD:
        noun = "high-achievers"
    elif level <= -LEVEL_THRESHOLD:
        noun = "strugglers"
    else:
        noun = "learners"
    if volume <= -VOLUME_THRESHOLD:
        adjective = "casual"
    elif regularity <= IRREGULAR_THRESHOLD:
        adjective = "irregular"
    elif regularity >= STEADY_THRESHOLD:
        adjective = "steady"
    elif volume >= VOLUME_THRESHOLD:
        adjective = "intensive"
    else:
        adjective = ""
    if not adjective:
        return "mid-level learners" if noun == "learners" else noun
    return f"{adjective} {noun}"


def segment_names(
    z: FloatArray, feature_names: Sequence[str], *, taken: Mapping[str, FloatArray] | None = None
) -> list[str]:
    """Readable, unique names for the segments whose scaled centres are the rows of ``z`` (in priority order).

    ``taken``: names already in use in this run (segments that kept their previous name) with their scaled centres;
    the new names avoid them. The rule is in the module docstring.
    """
    z = np.atleast_2d(np.asarray(z, dtype=np.float64))
    scores = aspect_scores(z, feature_names)
    owners: dict[str, FloatArray] = {name: np.asarray(c, dtype=np.float64) for name, c in (taken or {}).items()}
    names: list[str] = []
    for i in range(z.shape[0]):
        mine = {aspect: float(values[i]) for aspect, values in scores.items()}
        name = _base_name(mine)
        if name in owners:
            # Qualify by the aspect that separates this segment most from the one holding the name.
            theirs = {a: float(v[0]) for a, v in aspect_scores(owners[name], feature_names).items()}
            aspect = max(_QUALIFIERS, key=lambda a: (abs(mine[a] - theirs[a]), a))
            if abs(mine[aspect] - theirs[aspect]) > 0:
                higher, lower = _QUALIFIERS[aspect]
                name = f"{name} ({higher if mine[aspect] > theirs[aspect] else lower})"
        base, number = name, 2
        while name in owners:
            name = f"{base} {number}"
            number += 1
        owners[name] = z[i]
        names.append(name)
    return names


# --- input checks ------------------------------------------------------------------------------------------------


def _invalid(message: str, problems: list[dict[str, Any]]) -> InvalidInputError:
    return InvalidInputError(message, {"problems": problems})


def _matrix(features: pd.DataFrame | npt.ArrayLike, names: Sequence[str] | None) -> tuple[FloatArray, list[str]]:
    """Features as a finite ``(n, p)`` float matrix and their names (``names`` given: select and check those)."""
    if isinstance(features, pd.DataFrame):
        frame = features
        if names is None:
            names = [str(c) for c in frame.columns]
            if len(set(names)) != len(names):
                raise _invalid("feature names must be unique", [{"column": "features", "reason": "duplicates"}])
            columns = list(frame.columns)
        else:
            by_name = {str(c): c for c in frame.columns}
            missing = [n for n in names if n not in by_name]
            if missing:
                raise _invalid(
                    f"features lack the model's column(s): {', '.join(missing)}",
                    [{"column": n, "reason": "missing"} for n in missing],
                )
            columns = [by_name[n] for n in names]
        arrays: list[FloatArray] = []
        for name, col in zip(names, columns, strict=True):
            series = frame[col]
            if not (pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)):
                raise _invalid(
                    f"feature {name!r} is not numeric (dtype {series.dtype})",
                    [{"column": name, "reason": f"not numeric ({series.dtype})"}],
                )
            arrays.append(series.to_numpy(dtype=np.float64, na_value=np.nan))
        x = np.column_stack(arrays) if arrays else np.empty((len(frame), 0))
        names = list(names)
    else:
        try:
            x = np.asarray(features, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise _invalid("features must be numeric", [{"column": "features", "reason": "not numeric"}]) from exc
        if x.ndim == 1 and names is not None and x.shape[0] == len(names):
            x = x[None, :]
        if x.ndim != 2:
            raise _invalid("features must be two-dimensional", [{"column": "features", "reason": f"{x.shape}"}])
        if names is None:
            names = [f"x{j}" for j in range(x.shape[1])]
        elif x.shape[1] != len(names):
            raise _invalid(
                f"features have {x.shape[1]} column(s), the model {len(names)}",
                [{"column": "features", "reason": "wrong number of columns"}],
            )
        names = list(names)
    if x.shape[1] == 0:
        raise _invalid("no feature columns", [{"column": "features", "reason": "none"}])
    x = np.ascontiguousarray(x, dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        problems: list[dict[str, Any]] = []
        for j in np.flatnonzero(bad.any(axis=0)):
            rows = np.flatnonzero(bad[:, j])
            problems.append(
                {"column": names[j], "row": int(rows[0]), "reason": "missing or non-finite", "count": len(rows)}
            )
        listed = ", ".join(f"{p['column']!r} ({p['count']} rows, first row {p['row']})" for p in problems)
        raise _invalid(f"features have missing or non-finite values: {listed}", problems)
    return x, names


def _seed(random_state: int, *key: int) -> int:
    return int(np.random.SeedSequence([random_state, *key]).generate_state(1)[0])


def _log_resp(z: FloatArray, centers: FloatArray, weights: FloatArray, chol: FloatArray) -> FloatArray:
    """``log(weight_c) + log N(z | mean_c, precision_c = L_c L_c')`` for every row and component."""
    k, p = centers.shape
    out = np.empty((z.shape[0], k))
    for c in range(k):
        if chol[c].ndim == 2:  # full: the Cholesky factor of the precision
            y = (z - centers[c]) @ chol[c]
            log_det = float(np.sum(np.log(np.diag(chol[c]))))
        else:  # diag: 1 / SD per feature
            y = (z - centers[c]) * chol[c]
            log_det = float(np.sum(np.log(chol[c])))
        out[:, c] = -0.5 * (p * math.log(2 * math.pi) + np.sum(y * y, axis=1)) + log_det + math.log(weights[c])
    return out


def _assign(
    method: str, z: FloatArray, centers: FloatArray, weights: FloatArray | None, chol: FloatArray | None
) -> tuple[IntArray, FloatArray, FloatArray]:
    """Per row: cluster index, Euclidean distance to that centre, membership probability (NaN for kmeans).

    kmeans: the nearest centre (``argmin |c|^2 - 2 z.c``; ``|z|^2`` is the same for every centre). gmm: the most
    probable component. Rows go in chunks so memory stays ``O(chunk x k)``.
    """
    n = z.shape[0]
    labels = np.empty(n, dtype=np.int64)
    distance = np.empty(n)
    probability = np.full(n, np.nan)
    c2 = np.sum(centers * centers, axis=1)
    for lo in range(0, n, _CHUNK_ROWS):
        part = z[lo : lo + _CHUNK_ROWS]
        if method == "kmeans":
            lab = np.argmin(c2[None, :] - 2.0 * (part @ centers.T), axis=1)
        else:
            assert weights is not None and chol is not None
            lr = _log_resp(part, centers, weights, chol)
            lab = np.argmax(lr, axis=1)
            top = lr[np.arange(len(lab)), lab]
            probability[lo : lo + len(lab)] = 1.0 / np.sum(np.exp(lr - top[:, None]), axis=1)
        labels[lo : lo + len(lab)] = lab
        diff = part - centers[lab]
        distance[lo : lo + len(lab)] = np.sqrt(np.sum(diff * diff, axis=1))
    return labels, distance, probability


# --- the estimator -----------------------------------------------------------------------------------------------


@dataclass
class SegmentMatch:
    """How a run's segments relate to the previous run's (:func:`align_segments`)."""

    max_distance: float
    segments: list[dict[str, Any]] = field(default_factory=list)  # id, name, previous_id, distance (per segment)
    new: list[int] = field(default_factory=list)  # ids of segments without a previous match
    vanished: list[int] = field(default_factory=list)  # previous ids without a successor
    comparable: bool = True  # False: the runs' features differ, nothing could match

    def to_json(self) -> dict[str, Any]:
        return {
            "max_distance": self.max_distance,
            "segments": self.segments,
            "new": self.new,
            "vanished": self.vanished,
            "comparable": self.comparable,
        }


class SegmentModel:
    """Segments of units described by numeric features (see the module docstring for every rule).

    Parameters: ``method`` ``kmeans`` | ``gmm``; ``n_clusters`` (None: choose in ``k_min .. k_max``);
    ``log_features`` (columns compared as ``log1p``); ``fit_sample_size`` (rows the candidates are fitted on);
    ``score_sample_size`` (rows the silhouette is computed on); ``n_init`` (starts per candidate); ``max_iter``
    (per candidate); ``final_max_iter`` (the refinement on all rows); ``covariance_type`` and ``reg_covar`` (gmm);
    ``random_state``.

    Learned (after :meth:`fit` or :meth:`from_json`): ``feature_names_``, ``center_`` and ``scale_`` (of the scaled
    space), ``k_``, ``centers_`` (``k x p``, scaled), ``centers_original_`` (the same in the features' units),
    ``sizes_``, ``segment_ids_``, ``names_``, ``id_counter_``, ``selection_`` (per candidate: ``k`` and its score),
    ``criterion_`` (``silhouette``, ``bic`` or ``fixed``), ``silhouette_`` (the chosen fit's, on the score sample),
    ``inertia_`` (kmeans: sum of squared distances of all rows), ``bic_`` (gmm: on the fit sample), ``n_`` rows,
    ``n_fit_`` and ``n_score_`` sample rows; gmm also ``weights_``, ``covariances_``, ``precisions_cholesky_``.
    ``labels_`` (not serialised) is the cluster index (0-based, canonical order) of each fitted row; ``timings_``
    (not serialised) the seconds spent scaling, fitting candidates, scoring them, refining and assigning.
    """

    def __init__(
        self,
        method: str = "kmeans",
        n_clusters: int | None = None,
        *,
        k_min: int = 2,
        k_max: int = 10,
        log_features: Sequence[str] = (),
        fit_sample_size: int = 50_000,
        score_sample_size: int = 5_000,
        n_init: int = 3,
        max_iter: int = 300,
        final_max_iter: int = 100,
        covariance_type: str = "full",
        reg_covar: float = 1e-4,
        random_state: int = 0,
    ) -> None:
        self.method = method
        self.n_clusters = n_clusters
        self.k_min = k_min
        self.k_max = k_max
        self.log_features = tuple(log_features)
        self.fit_sample_size = fit_sample_size
        self.score_sample_size = score_sample_size
        self.n_init = n_init
        self.max_iter = max_iter
        self.final_max_iter = final_max_iter
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.random_state = random_state
        self.feature_names_: list[str] | None = None
        self.center_: FloatArray | None = None
        self.scale_: FloatArray | None = None
        self.k_: int | None = None
        self.centers_: FloatArray | None = None
        self.centers_original_: FloatArray | None = None
        self.sizes_: IntArray | None = None
        self.segment_ids_: list[int] | None = None
        self.names_: list[str] | None = None
        self.id_counter_: int | None = None
        self.selection_: list[dict[str, Any]] | None = None
        self.criterion_: str | None = None
        self.silhouette_: float | None = None
        self.inertia_: float | None = None
        self.bic_: float | None = None
        self.n_: int | None = None
        self.n_fit_: int | None = None
        self.n_score_: int | None = None
        self.weights_: FloatArray | None = None
        self.covariances_: FloatArray | None = None
        self.precisions_cholesky_: FloatArray | None = None
        self.labels_: IntArray | None = None
        self.timings_: dict[str, float] | None = None

    def get_params(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "n_clusters": self.n_clusters,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "log_features": list(self.log_features),
            "fit_sample_size": self.fit_sample_size,
            "score_sample_size": self.score_sample_size,
            "n_init": self.n_init,
            "max_iter": self.max_iter,
            "final_max_iter": self.final_max_iter,
            "covariance_type": self.covariance_type,
            "reg_covar": self.reg_covar,
            "random_state": self.random_state,
        }

    def _check_params(self) -> None:
        problems: list[dict[str, Any]] = []

        def bad(name: str, reason: str) -> None:
            problems.append({"column": name, "reason": reason})

        if self.method not in METHODS:
            bad("method", f"{self.method!r} is not one of {', '.join(METHODS)}")
        if self.n_clusters is not None and self.n_clusters < 1:
            bad("n_clusters", "must be at least 1")
        if self.n_clusters is None and not 2 <= self.k_min <= self.k_max:
            bad("k_min", f"need 2 <= k_min <= k_max (got {self.k_min}, {self.k_max})")
        if self.fit_sample_size < 2:
            bad("fit_sample_size", "must be at least 2")
        if self.score_sample_size < 3:
            bad("score_sample_size", "must be at least 3")
        for name in ("n_init", "max_iter", "final_max_iter"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be at least 1")
        if self.covariance_type not in COVARIANCE_TYPES:
            bad("covariance_type", f"{self.covariance_type!r} is not one of {', '.join(COVARIANCE_TYPES)}")
        if not self.reg_covar >= 0:
            bad("reg_covar", "must be >= 0")
        if problems:
            raise _invalid("invalid segment model settings: " + "; ".join(p["reason"] for p in problems), problems)

    # --- the scaled space ------------------------------------------------------------------------------------

    def _log_mask(self, names: Sequence[str]) -> npt.NDArray[np.bool_]:
        unknown = [f for f in self.log_features if f not in names]
        if unknown:
            raise _invalid(
                f"log_features not among the features: {', '.join(unknown)}",
                [{"column": f, "reason": "log feature missing"} for f in unknown],
            )
        return np.array([n in self.log_features for n in names], dtype=bool)

    def _logged(self, x: FloatArray, names: Sequence[str]) -> FloatArray:
        mask = self._log_mask(names)
        if not mask.any():
            return x
        sub = x[:, mask]
        if (sub <= -1).any():
            cols = [names[int(j)] for j in np.flatnonzero(mask) if (x[:, j] <= -1).any()]
            raise _invalid(
                f"log feature(s) with values <= -1 (log1p undefined): {', '.join(cols)}",
                [{"column": c, "reason": "value <= -1 in a log feature"} for c in cols],
            )
        out = x.copy()
        out[:, mask] = np.log1p(sub)
        return out

    def _scaled(self, features: pd.DataFrame | npt.ArrayLike) -> FloatArray:
        check_fitted(self, "centers_")
        assert self.feature_names_ is not None and self.center_ is not None and self.scale_ is not None
        x, names = _matrix(features, self.feature_names_)
        return (self._logged(x, names) - self.center_) / self.scale_

    def transform(self, features: pd.DataFrame | npt.ArrayLike) -> FloatArray:
        """Rows in the model's scaled space (``log1p`` where configured, then ``(x - median) / IQR``)."""
        return self._scaled(features)

    def inverse_transform(self, z: npt.ArrayLike) -> FloatArray:
        """Points of the scaled space back in the features' units."""
        check_fitted(self, "centers_")
        assert self.feature_names_ is not None and self.center_ is not None and self.scale_ is not None
        x = np.atleast_2d(np.asarray(z, dtype=np.float64)) * self.scale_ + self.center_
        mask = self._log_mask(self.feature_names_)
        x[:, mask] = np.expm1(x[:, mask])
        return x

    @staticmethod
    def _robust_scale(x: FloatArray) -> tuple[FloatArray, FloatArray]:
        q25, median, q75 = np.percentile(x, [25.0, 50.0, 75.0], axis=0)
        scale = q75 - q25
        tied = scale <= 0
        if tied.any():
            sd = x[:, tied].std(axis=0)
            scale[tied] = np.where(sd > 0, IQR_OF_UNIT_NORMAL * sd, 1.0)
        return np.asarray(median, dtype=np.float64), np.asarray(scale, dtype=np.float64)

    # --- fitting ---------------------------------------------------------------------------------------------

    def fit(self, features: pd.DataFrame | npt.ArrayLike) -> SegmentModel:
        """Choose k (unless ``n_clusters``), fit the segments and assign every row; returns self."""
        self._check_params()
        x, names = _matrix(features, None)
        n = x.shape[0]
        if n == 0:
            raise InsufficientDataError("no rows to segment", {"rows": 0})
        if self.n_clusters is not None:
            candidates = [self.n_clusters]
            if n < self.n_clusters:
                raise InsufficientDataError(
                    f"{n} row(s) cannot form {self.n_clusters} segments", {"rows": n, "n_clusters": self.n_clusters}
                )
        else:
            # The silhouette needs at least one row more than clusters; BIC is kept to the same range.
            top = min(self.k_max, n - 1)
            if top < self.k_min:
                raise InsufficientDataError(
                    f"{n} row(s) are too few to choose between {self.k_min} and {self.k_max} segments",
                    {"rows": n, "k_min": self.k_min, "k_max": self.k_max},
                )
            candidates = list(range(self.k_min, top + 1))
        clock = time.perf_counter()
        timings: dict[str, float] = {}

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + now - clock
            clock = now

        xl = self._logged(x, names)
        del x
        center, scale = self._robust_scale(xl)
        z = xl - center  # a new array even when xl is the caller's data
        z /= scale
        del xl
        lap("scale")

        rng = np.random.default_rng(np.random.SeedSequence(self.random_state))
        fit_rows = np.sort(rng.choice(n, self.fit_sample_size, replace=False)) if n > self.fit_sample_size else None
        z_fit = z[fit_rows] if fit_rows is not None else z
        m = z_fit.shape[0]
        score_rows = (
            np.sort(rng.choice(m, self.score_sample_size, replace=False)) if m > self.score_sample_size else None
        )
        z_score = z_fit[score_rows] if score_rows is not None else z_fit

        selection: list[dict[str, Any]] = []
        best: Any = None
        best_score = -math.inf
        for k in candidates:
            model = self._fit_candidate(z_fit, k)
            lap("candidates")
            if self.method == "kmeans":
                score = self._silhouette(z_score, model.cluster_centers_)
                selection.append({"k": k, "silhouette": score, "inertia": float(model.inertia_)})
                key = score
            else:
                bic = float(model.bic(z_fit))
                selection.append({"k": k, "bic": bic})
                key = -bic
            lap("scores")
            if best is None or key > best_score:  # strict: ties keep the smaller k
                best, best_score, best_k = model, key, k

        final = self._refine(z, best) if fit_rows is not None else best
        lap("refine")
        self.feature_names_ = list(names)
        self.center_ = center
        self.scale_ = scale
        self.n_, self.n_fit_, self.n_score_ = n, m, z_score.shape[0]
        self.criterion_ = "fixed" if len(candidates) == 1 else ("silhouette" if self.method == "kmeans" else "bic")
        self.selection_ = selection
        if self.method == "kmeans":
            centers = np.asarray(final.cluster_centers_, dtype=np.float64)
            order = self._canonical(z, centers, None, None)
            self.centers_ = np.ascontiguousarray(centers[order])
        else:
            means = np.asarray(final.means_, dtype=np.float64)
            weights = np.asarray(final.weights_, dtype=np.float64)
            prec = np.asarray(final.precisions_cholesky_, dtype=np.float64)
            cov = np.asarray(final.covariances_, dtype=np.float64)
            order = self._canonical(z, means, weights, prec)
            self.centers_ = np.ascontiguousarray(means[order])
            self.weights_ = np.ascontiguousarray(weights[order] / weights[order].sum())
            self.precisions_cholesky_ = np.ascontiguousarray(prec[order])
            self.covariances_ = np.ascontiguousarray(cov[order])
            self.bic_ = next(s["bic"] for s in selection if s["k"] == best_k)
        k = len(order)
        labels, distance, _ = self._assign(z)
        self.k_ = k
        self.labels_ = labels
        self.sizes_ = np.bincount(labels, minlength=k).astype(np.int64)
        self.centers_original_ = self.inverse_transform(self.centers_)
        if self.method == "kmeans":
            self.inertia_ = float(np.sum(distance * distance))
        lap("assign")
        self.silhouette_ = self._silhouette_of(z_score, self._assign(z_score)[0])
        lap("scores")
        self.segment_ids_ = list(range(1, k + 1))
        self.names_ = segment_names(self.centers_, self.feature_names_)
        self.id_counter_ = k
        self.timings_ = timings
        return self

    def _fit_candidate(self, z: FloatArray, k: int) -> Any:
        seed = _seed(self.random_state, k)
        with warnings.catch_warnings():
            # Fewer distinct points than k: scikit-learn warns and returns duplicate centres; the candidate then
            # simply scores badly.
            warnings.simplefilter("ignore")
            if self.method == "kmeans":
                from sklearn.cluster import KMeans

                return KMeans(
                    n_clusters=k, init="k-means++", n_init=self.n_init, max_iter=self.max_iter, random_state=seed
                ).fit(z)
            from sklearn.mixture import GaussianMixture

            return GaussianMixture(
                n_components=k,
                covariance_type=self.covariance_type,
                reg_covar=self.reg_covar,
                n_init=self.n_init,
                max_iter=self.max_iter,
                random_state=seed,
            ).fit(z)

    def _refine(self, z: FloatArray, best: Any) -> Any:
        """One run on all rows from the chosen candidate's solution."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a final pass that hits final_max_iter is still a refinement
            if self.method == "kmeans":
                from sklearn.cluster import KMeans

                centers = np.asarray(best.cluster_centers_, dtype=np.float64)
                return KMeans(n_clusters=len(centers), init=centers, n_init=1, max_iter=self.final_max_iter).fit(z)
            from sklearn.mixture import GaussianMixture

            return GaussianMixture(
                n_components=len(best.weights_),
                covariance_type=self.covariance_type,
                reg_covar=self.reg_covar,
                max_iter=self.final_max_iter,
                weights_init=best.weights_,
                means_init=best.means_,
                precisions_init=best.precisions_,
                random_state=_seed(self.random_state, 0),
            ).fit(z)

    def _canonical(
        self, z: FloatArray, centers: FloatArray, weights: FloatArray | None, chol: FloatArray | None
    ) -> IntArray:
        """Order of the clusters: largest first, ties by the centre's coordinates. Clusters left without rows
        (k-means on heavily tied data can produce them) are dropped; their rows, if any, go to the others."""
        raw = _assign(self.method, z, centers, weights, chol)[0]
        sizes = np.bincount(raw, minlength=len(centers))
        keys = [centers[:, j] for j in range(centers.shape[1] - 1, -1, -1)]
        order = np.lexsort((*keys, -sizes)).astype(np.int64)
        return order[sizes[order] > 0]

    def _assign(self, z: FloatArray) -> tuple[IntArray, FloatArray, FloatArray]:
        assert self.centers_ is not None
        return _assign(self.method, z, self.centers_, self.weights_, self.precisions_cholesky_)

    @staticmethod
    def _silhouette_of(z: FloatArray, labels: IntArray) -> float:
        """Mean silhouette width; -1 when it is undefined (one cluster, or as many clusters as rows)."""
        n_labels = len(np.unique(labels))
        if not 2 <= n_labels <= len(labels) - 1:
            return -1.0
        from sklearn.metrics import silhouette_score

        return float(silhouette_score(z, labels, metric="euclidean"))

    def _silhouette(self, z_score: FloatArray, centers: FloatArray) -> float:
        c2 = np.sum(centers * centers, axis=1)
        labels = np.argmin(c2[None, :] - 2.0 * (z_score @ centers.T), axis=1).astype(np.int64)
        return self._silhouette_of(z_score, labels)

    def predict(self, features: pd.DataFrame | npt.ArrayLike) -> pd.DataFrame:
        """Per row: ``segment_id``, ``distance`` (to the segment's centre in the scaled space) and ``probability``
        (gmm: posterior membership probability of that segment; kmeans: NaN). Index: the input's (if a frame)."""
        z = self._scaled(features)
        labels, distance, probability = self._assign(z)
        assert self.segment_ids_ is not None
        ids = np.asarray(self.segment_ids_, dtype=np.int64)
        index = features.index if isinstance(features, pd.DataFrame) else None
        return pd.DataFrame({"segment_id": ids[labels], "distance": distance, "probability": probability}, index=index)

    def predict_proba(self, features: pd.DataFrame | npt.ArrayLike) -> pd.DataFrame:
        """gmm only: membership probability of every segment (columns: segment ids)."""
        z = self._scaled(features)
        if self.method != "gmm":
            raise _invalid("membership probabilities need method='gmm'", [{"column": "method", "reason": "kmeans"}])
        assert self.segment_ids_ is not None and self.centers_ is not None
        assert self.weights_ is not None and self.precisions_cholesky_ is not None
        lr = _log_resp(z, self.centers_, self.weights_, self.precisions_cholesky_)
        lr -= lr.max(axis=1, keepdims=True)
        prob = np.exp(lr)
        prob /= prob.sum(axis=1, keepdims=True)
        index = features.index if isinstance(features, pd.DataFrame) else None
        return pd.DataFrame(prob, columns=list(self.segment_ids_), index=index)

    def profiles(self) -> pd.DataFrame:
        """One row per segment: id, name, size, share, then each feature's centre in its units and its z."""
        check_fitted(self, "centers_")
        assert self.feature_names_ is not None and self.sizes_ is not None and self.centers_ is not None
        assert self.centers_original_ is not None and self.segment_ids_ is not None and self.names_ is not None
        frame = pd.DataFrame(
            {
                "segment_id": self.segment_ids_,
                "name": self.names_,
                "size": self.sizes_,
                "share": self.sizes_ / max(int(self.sizes_.sum()), 1),
            }
        )
        for j, name in enumerate(self.feature_names_):
            frame[name] = self.centers_original_[:, j]
        for j, name in enumerate(self.feature_names_):
            frame[f"z_{name}"] = self.centers_[:, j]
        return frame

    # --- serialisation ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The fitted model as plain JSON types (exact round trip through :meth:`from_json`)."""
        check_fitted(self, "centers_")

        def floats(a: FloatArray | None) -> Any:
            assert a is not None
            return np.asarray(a, dtype=np.float64).tolist()

        assert self.sizes_ is not None and self.segment_ids_ is not None and self.names_ is not None
        body: dict[str, Any] = {
            "params": self.get_params(),
            "feature_names": list(self.feature_names_ or []),
            "center": floats(self.center_),
            "scale": floats(self.scale_),
            "k": self.k_,
            "centers": floats(self.centers_),
            "centers_original": floats(self.centers_original_),
            "sizes": [int(v) for v in self.sizes_],
            "segment_ids": [int(v) for v in self.segment_ids_],
            "names": list(self.names_),
            "id_counter": self.id_counter_,
            "selection": self.selection_,
            "criterion": self.criterion_,
            "silhouette": self.silhouette_,
            "inertia": self.inertia_,
            "bic": self.bic_,
            "n": self.n_,
            "n_fit": self.n_fit_,
            "n_score": self.n_score_,
        }
        if self.method == "gmm":
            body["weights"] = floats(self.weights_)
            body["covariances"] = floats(self.covariances_)
            body["precisions_cholesky"] = floats(self.precisions_cholesky_)
        return envelope(ENGINE, FORMAT_VERSION, body)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SegmentModel:
        """Rebuild a fitted model from :meth:`to_json` output."""
        body = open_envelope(data, ENGINE, {FORMAT_VERSION})
        try:
            params = dict(body["params"])
            model = cls(**params)
            model._check_params()
            names = [str(v) for v in body["feature_names"]]
            p = len(names)
            k = int(body["k"])

            def arr(key: str, shape: tuple[int, ...]) -> FloatArray:
                a = np.asarray(body[key], dtype=np.float64)
                if a.shape != shape or not np.isfinite(a).all():
                    raise ValueError(f"{key}: expected finite values of shape {shape}, got {a.shape}")
                return a

            model.feature_names_ = names
            model.center_ = arr("center", (p,))
            model.scale_ = arr("scale", (p,))
            model.k_ = k
            model.centers_ = arr("centers", (k, p))
            model.centers_original_ = arr("centers_original", (k, p))
            model.sizes_ = np.asarray(body["sizes"], dtype=np.int64)
            model.segment_ids_ = [int(v) for v in body["segment_ids"]]
            model.names_ = [str(v) for v in body["names"]]
            model.id_counter_ = int(body["id_counter"])
            if len(model.sizes_) != k or len(model.segment_ids_) != k or len(model.names_) != k:
                raise ValueError("sizes, segment_ids and names must have one entry per segment")
            model.selection_ = [dict(s) for s in body["selection"]]
            model.criterion_ = str(body["criterion"])
            model.silhouette_ = None if body["silhouette"] is None else float(body["silhouette"])
            model.inertia_ = None if body["inertia"] is None else float(body["inertia"])
            model.bic_ = None if body["bic"] is None else float(body["bic"])
            model.n_ = int(body["n"])
            model.n_fit_ = int(body["n_fit"])
            model.n_score_ = int(body["n_score"])
            if model.method == "gmm":
                model.weights_ = arr("weights", (k,))
                chol_shape = (k, p, p) if model.covariance_type == "full" else (k, p)
                model.covariances_ = arr("covariances", chol_shape)
                model.precisions_cholesky_ = arr("precisions_cholesky", chol_shape)
            model._log_mask(names)
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise InvalidInputError(f"malformed serialised {ENGINE} model: {exc}", {"engine": ENGINE}) from exc
        return model


# --- stable segments across runs ---------------------------------------------------------------------------------


def align_segments(
    current: SegmentModel, previous: SegmentModel | None, *, max_distance: float = DEFAULT_MAX_DISTANCE
) -> SegmentMatch:
    """Give ``current``'s segments the ids (and names) of the matching segments of ``previous``; returns the match.

    ``current`` is updated in place (``segment_ids_``, ``names_``, ``id_counter_``). Matching: optimal assignment on
    the RMS distance between centres in ``current``'s scaled space; pairs farther apart than ``max_distance`` do
    not match. Unmatched segments get new ids above ``previous.id_counter_`` in canonical order and names by the
    naming rule, unique among the run's names. ``previous=None`` (the first run) keeps ids ``1..k``.
    """
    check_fitted(current, "centers_")
    if not max_distance >= 0:
        raise _invalid("max_distance must be >= 0", [{"column": "max_distance", "reason": "negative"}])
    assert current.centers_ is not None and current.feature_names_ is not None and current.k_ is not None
    k = current.k_
    match = SegmentMatch(max_distance=max_distance)
    if previous is None:
        first_ids = list(range(1, k + 1))
        current.segment_ids_, current.id_counter_ = first_ids, k
        current.names_ = segment_names(current.centers_, current.feature_names_)
        match.new = list(first_ids)
        match.segments = [
            {"segment_id": i, "name": n, "previous_segment_id": None, "distance": None}
            for i, n in zip(first_ids, current.names_, strict=True)
        ]
        return match
    check_fitted(previous, "centers_")
    assert previous.centers_original_ is not None and previous.segment_ids_ is not None
    assert previous.names_ is not None and previous.id_counter_ is not None and previous.feature_names_ is not None
    partner: dict[int, tuple[int, float]] = {}  # current cluster -> (previous cluster, distance)
    match.comparable = list(previous.feature_names_) == list(current.feature_names_)
    if match.comparable:
        from scipy.optimize import linear_sum_assignment

        old = current.transform(previous.centers_original_)
        p = current.centers_.shape[1]
        dist = np.sqrt(np.sum((current.centers_[:, None, :] - old[None, :, :]) ** 2, axis=2) / p)
        rows, cols = linear_sum_assignment(dist)
        for r, c in zip(rows, cols, strict=True):
            if dist[r, c] <= max_distance:
                partner[int(r)] = (int(c), float(dist[r, c]))
    counter = previous.id_counter_
    ids: list[int] = []
    names: list[str | None] = []
    for i in range(k):
        if i in partner:
            ids.append(previous.segment_ids_[partner[i][0]])
            names.append(previous.names_[partner[i][0]])
        else:
            counter += 1
            ids.append(counter)
            names.append(None)
    kept = {n: current.centers_[i] for i, n in enumerate(names) if n is not None}
    fresh = [i for i in range(k) if names[i] is None]
    for i, name in zip(fresh, segment_names(current.centers_[fresh], current.feature_names_, taken=kept), strict=True):
        names[i] = name
    current.segment_ids_ = ids
    current.names_ = [str(n) for n in names]
    current.id_counter_ = counter
    matched_previous = {partner[i][0] for i in partner}
    match.new = [ids[i] for i in fresh]
    match.vanished = [previous.segment_ids_[j] for j in range(len(previous.segment_ids_)) if j not in matched_previous]
    match.segments = [
        {
            "segment_id": ids[i],
            "name": current.names_[i],
            "previous_segment_id": previous.segment_ids_[partner[i][0]] if i in partner else None,
            "distance": partner[i][1] if i in partner else None,
        }
        for i in range(k)
    ]
    return match
