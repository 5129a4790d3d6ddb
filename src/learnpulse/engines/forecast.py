"""Learning-index forecasts and anomalies: prophet's piecewise-linear trend model, per series.

Two engines fit the **same model** (prophet's ``prophet.stan``, linear growth; the maths and the exact
log-posterior are in :mod:`learnpulse.engines.forecast_core`):

- :class:`ProphetForecaster` — the reference: one series, fitted by ``prophet.Prophet`` itself (Stan's optimiser;
  no seasonality by default, yearly/weekly seasonality on request).
- :class:`BatchForecaster` — many series at once: a vectorised MAP fit of the same posterior (orthant-wise Newton;
  exact zeros for the Laplace-prior changepoint deltas), the same forecast simulation vectorised and seeded, and the
  anomaly rule. The per-chunk work is the pure function :func:`fit_chunk` (arrays in, arrays out, picklable) that a
  job can map over a process pool or Dask; :func:`make_chunks` cuts a long frame into chunks.

Both produce a :class:`ForecastModel` per series: the fitted parameters (``k``, ``m``, ``delta``, ``sigma_obs``,
changepoints, prophet's scaling ``y_scale``, ``start``, ``t_scale``), the history and the options; it serialises to
JSON and back (:meth:`ForecastModel.to_json`), and its predictions from JSON equal those of the fitted model, draw
for draw (the forecast simulation is seeded per series by ``(seed, key)``).

**Input.** A series is ``ds`` (dates; time-zone-naive; one point per date) and ``y`` (finite; a missing ``y`` is
dropped, as prophet does), optionally ``y_sd`` and the ``answers`` that measure the points (see *Anomalies*; a
model keeps its answers, and its JSON holds them). A long frame for :class:`BatchForecaster` has one row per
(unit, ds). Series with fewer than ``min_points`` points (default 6), or with a repeated ``ds`` or a non-finite
``y``, are **skipped with a recorded reason** (``skipped_``), never an exception for the batch; the single-series
reference raises :class:`InsufficientDataError` / :class:`InvalidInputError` instead. ``min_points = 6``: below that
a trend plus a robust residual scale (a median of absolute deviations) has nothing left to judge a week against.

**Forecast.** ``horizon`` future points spaced ``step_days`` (default 7) after the last date: ``yhat`` = trend, and
an ``interval_width`` (0.8) interval from prophet's simulation of future trend changes plus observation noise with
``uncertainty_samples`` (1000) draws. In-sample intervals are the exact limit of that simulation
(``yhat -+ z sigma_obs y_scale``).

**Anomalies** (an observed point, judged against the fit). Each point has a residual ``r_i`` (its *evidence*
minus the expected value ``v_i`` of the trend) and a scale ``s_i``:

- a point **measured by answers** (``answers``: binary answers to items with 2PL parameters on y's own scale,
  :class:`PointAnswers`; e.g. the weekly answers behind the IRT index ``I_t``) is judged by its answers alone: with
  ``p_j = P(correct_j | v_i)``, the score ``U_i = sum_j a_j (x_j - p_j)`` and information ``I_i = sum_j a_j^2 p_j
  (1 - p_j)`` of its answers at ``v_i`` (:func:`~learnpulse.engines.forecast_core.answer_score`), ``r_i = U_i /
  I_i`` (one Fisher-scoring step from ``v_i``: how far the answers put the point from the trend) and ``s_i =
  sqrt(1 / I_i + (floor * y_scale)^2)``: the residual's sampling SD ``1 / sqrt(I_i)`` combined with the floor, the
  spread of the true values around the trend the rule allows (``floor = residual_scale_floor``, 0.05: about 3 points
  of an index near 60, 0.3 logits of ability); ``r_i / s_i`` is the score test ``U_i / sqrt(I_i)`` deflated by
  ``sqrt(1 + I_i (floor y_scale)^2)``, so a small deviation that many answers make statistically clear is not an
  anomaly. ``y`` itself, e.g. an EAP shrunk toward its population, does not enter the judgement, only the fit;
- any **other point**: ``r_i = y_i - v_i`` and ``s_i = max(s, y_sd_i)`` (``y_sd_i`` when a known measurement SD is
  given, e.g. the sampling SD of a week's accuracy index from its number of attempts), with the series' robust
  residual scale ``s = max(1.4826 MAD(r), floor * y_scale)`` (MAD about the median; the floor keeps a flat or
  quantised series whose MAD is ~0 from flagging every wiggle).

The series' MAD does not enter ``s_i`` of answer-measured points: over 6-12 weekly points it is noisy and mostly
measures the index's own measurement error, which ``1 / I_i`` accounts for exactly (on the default synthetic world,
adding it, or a robust per-series estimate of the spread beyond ``1 / I_i``, lowers the best recall at precision 0.8
by 0.03-0.09). Steps:

1. ``v_i`` = the fit (``yhat``); residuals and scales as above;
2. candidates: ``|r_i| > threshold * s_i``;
3. robust refit (``robust_refit=True``): the same model (same scaling and changepoints) is refitted by MAP without
   the candidates, so a drop cannot pull the trend or inflate ``sigma`` towards itself; residuals and scales are
   recomputed against the refit for every point (when at least half of the points remain; otherwise step 1 stands);
4. a point is anomalous when ``|r_i| > threshold * s_i``; recorded: ``direction`` (``drop`` if ``r_i < 0`` else
   ``jump``), ``score = |r_i| / s_i``, the expected value ``yhat`` (of the refit), the ``evidence`` ``yhat + r_i``
   (``y`` for a point without answers) and the expected range ``yhat -+ threshold * s_i``. On a week with few answers
   the evidence and the range can leave the index's 0-100: the week says little, and the range is wide.

The reference engine applies the same rule to prophet's fit; its refit uses the MAP solver of the fast engine on
prophet's design (prophet refitted to fewer points would move its changepoints and scales), with any seasonal
component held at its fitted value. On the default synthetic world (2,000 students, last 12 weeks, 351 injected
one-week drops of 2.5 logits): the placeholder accuracy index alone gives precision 0.32 / recall 0.68 at the default
threshold, with ``y_sd`` from each week's attempts 0.79 / 0.64 (``tests/test_forecast_engine.py`` says why it cannot
reach 0.8 / 0.7); forecast-prophet's IRT index with its posterior SD as ``y_sd`` 0.843 / 0.644, and judged by the
weeks' answers 0.859 / 0.712 (``tests/test_forecast_job.py``).

**Forecast error** (:func:`forecast_error`): MAE of the ``step``-ahead forecast (default 4) against a given truth,
beside the naive forecast "the last observed value".
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from learnpulse.engines import forecast_core as core
from learnpulse.engines.base import check_fitted, envelope, open_envelope
from learnpulse.engines.forecast_core import BoolArray, FloatArray, IntArray
from learnpulse.errors import InsufficientDataError, InvalidInputError

ENGINE = "prophet"
FORMAT_VERSION = 1
DAY_NS = 86_400_000_000_000

__all__ = [
    "BatchForecaster",
    "ChunkResult",
    "ForecastError",
    "ForecastModel",
    "ForecastOptions",
    "PointAnswers",
    "ProphetForecaster",
    "SeriesChunk",
    "fit_chunk",
    "forecast_error",
    "make_chunks",
]


# --- options ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastOptions:
    """Hyper-parameters shared by both engines (the reference engine adds seasonality flags).

    Prophet's: ``n_changepoints`` (25; at most ``floor(L * changepoint_range) - 1`` are used for ``L`` points),
    ``changepoint_range`` (0.8: changepoints in the first 80% of the history), ``changepoint_prior_scale`` (0.05, the
    Laplace scale ``tau`` of ``delta``), ``interval_width`` (0.8), ``uncertainty_samples`` (1000; 0 = no intervals).
    Ours: ``horizon`` (4 future points, ``PROPHET_FORECAST_WEEKS``), ``step_days`` (7: their spacing),
    ``anomaly_threshold`` (2.5, ``PROPHET_ANOMALY_THRESHOLD``), ``min_points`` (6), ``residual_scale_floor`` (0.05 of
    ``y_scale``), ``robust_refit`` (True), ``seed`` (0: with each series' key, seeds its forecast simulation).
    """

    horizon: int = 4
    step_days: int = 7
    n_changepoints: int = 25
    changepoint_range: float = 0.8
    changepoint_prior_scale: float = 0.05
    interval_width: float = 0.8
    uncertainty_samples: int = 1000
    anomaly_threshold: float = 2.5
    min_points: int = 6
    residual_scale_floor: float = 0.05
    robust_refit: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        problems: list[dict[str, Any]] = []

        def bad(name: str, reason: str) -> None:
            problems.append({"parameter": name, "reason": f"{reason}, got {getattr(self, name)!r}"})

        def is_int(v: object) -> bool:
            return isinstance(v, int | np.integer) and not isinstance(v, bool)

        def is_num(v: object) -> bool:
            return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)

        for name, low in (("horizon", 1), ("step_days", 1), ("n_changepoints", 0), ("uncertainty_samples", 0)):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= low):
                bad(name, f"must be an integer >= {low}")
        if not (is_int(self.min_points) and self.min_points >= 3):
            bad("min_points", "must be an integer >= 3")
        if not (is_int(self.seed) and self.seed >= 0):
            bad("seed", "must be an integer >= 0")
        if not (is_num(self.changepoint_range) and 0 < self.changepoint_range <= 1):
            bad("changepoint_range", "must be in (0, 1]")
        if not (is_num(self.changepoint_prior_scale) and 0 < self.changepoint_prior_scale < math.inf):
            bad("changepoint_prior_scale", "must be a positive number")
        if not (is_num(self.interval_width) and 0 < self.interval_width < 1):
            bad("interval_width", "must be in (0, 1)")
        if not (is_num(self.anomaly_threshold) and 0 < self.anomaly_threshold < math.inf):
            bad("anomaly_threshold", "must be a positive number")
        if not (is_num(self.residual_scale_floor) and 0 <= self.residual_scale_floor < math.inf):
            bad("residual_scale_floor", "must be a number >= 0")
        if not isinstance(self.robust_refit, bool):
            bad("robust_refit", "must be true or false")
        if problems:
            raise InvalidInputError(
                "invalid forecast options: " + "; ".join(f"{p['parameter']} {p['reason']}" for p in problems),
                {"problems": problems},
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "horizon": int(self.horizon),
            "step_days": int(self.step_days),
            "n_changepoints": int(self.n_changepoints),
            "changepoint_range": float(self.changepoint_range),
            "changepoint_prior_scale": float(self.changepoint_prior_scale),
            "interval_width": float(self.interval_width),
            "uncertainty_samples": int(self.uncertainty_samples),
            "anomaly_threshold": float(self.anomaly_threshold),
            "min_points": int(self.min_points),
            "residual_scale_floor": float(self.residual_scale_floor),
            "robust_refit": bool(self.robust_refit),
            "seed": int(self.seed),
        }


# --- answers that measure the points ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointAnswers:
    """Binary answers that measure the points of one or more series (optional input of the anomaly rule).

    One entry per answer: ``row`` (the series: a row of the batch; 0 for a single series), ``ds_ns`` (int64
    nanoseconds: the date of the point the answer measures), the answer's item ``a``, ``b`` **on y's own scale** and
    ``correct`` (0/1), under the logistic (2PL) model ``P(correct) = 1 / (1 + exp(-a (v - b)))`` of the point's true
    value ``v``. For the IRT learning index ``I = 50 + 10 theta`` and an item with discrimination ``alpha`` and
    difficulty ``beta`` on the ability scale: ``a = alpha / 10`` and ``b = 50 + 10 beta``. Answers whose date has no
    point in their series are ignored.
    """

    row: IntArray
    ds_ns: IntArray
    a: FloatArray
    b: FloatArray
    correct: FloatArray

    def select(self, keep: BoolArray, row: IntArray) -> PointAnswers:
        """The answers where ``keep``, with their rows replaced by ``row`` (same length as ``keep``)."""
        return PointAnswers(
            row=row[keep], ds_ns=self.ds_ns[keep], a=self.a[keep], b=self.b[keep], correct=self.correct[keep]
        )


@dataclass(frozen=True)
class _MappedAnswers:
    """Answers located in a padded batch: ``point`` is the flat index (``row * T + column``) of their point."""

    point: IntArray
    a: FloatArray
    b: FloatArray
    correct: FloatArray


def _map_answers(answers: PointAnswers, ds_ns: IntArray, length: IntArray) -> _MappedAnswers:
    """Locate each answer's point in a padded batch whose rows are sorted by date (``ds_ns`` ``(n, T)``, the first
    ``length[i]`` entries of row ``i`` are its points, distinct dates); answers of other rows or dates are dropped."""
    n, width = ds_ns.shape
    rows, cols = np.nonzero(np.arange(width)[None, :] < length[:, None])
    days = np.unique(ds_ns[rows, cols])
    # one sorted integer key per point: row-major, and within a row the dates ascend
    point_key = rows * len(days) + np.searchsorted(days, ds_ns[rows, cols])
    inside = (answers.row >= 0) & (answers.row < n)
    day_pos = np.minimum(np.searchsorted(days, answers.ds_ns), max(len(days) - 1, 0))
    inside &= len(days) > 0
    inside[inside] &= days[day_pos[inside]] == answers.ds_ns[inside]
    key = answers.row * len(days) + day_pos
    at = np.minimum(np.searchsorted(point_key, key), max(len(point_key) - 1, 0))
    inside[inside] &= point_key[at[inside]] == key[inside]
    hit = at[inside]
    return _MappedAnswers(
        point=(rows[hit] * width + cols[hit]).astype(np.int64),
        a=answers.a[inside].astype(np.float64),
        b=answers.b[inside].astype(np.float64),
        correct=answers.correct[inside].astype(np.float64),
    )


# --- batched evaluation of fitted parameters (shared by both engines) -------------------------------------------


@dataclass(frozen=True)
class _Params:
    """Fitted parameters of ``n`` series, scaled as prophet scales them; ``delta`` is 0 where ``cp_mask`` is off."""

    k: FloatArray
    m: FloatArray
    delta: FloatArray
    cp: FloatArray
    cp_mask: BoolArray
    sigma: FloatArray
    y_scale: FloatArray
    start_ns: IntArray
    t_scale_ns: IntArray


@dataclass(frozen=True)
class _Evaluated:
    fitted: FloatArray  # (n, T) in-sample yhat
    fitted_lower: FloatArray
    fitted_upper: FloatArray
    future_ds_ns: IntArray  # (n, H)
    yhat: FloatArray  # (n, H)
    lower: FloatArray
    upper: FloatArray
    expected: FloatArray  # (n, T) the anomaly rule's expected value (robust refit)
    scale: FloatArray  # (n, T) s_i
    residual: FloatArray  # (n, T) y - expected
    anomalous: BoolArray  # (n, T)
    refitted: BoolArray  # (n,)


def _scaled_t(ds_ns: IntArray, p: _Params) -> FloatArray:
    return np.asarray(
        (ds_ns - p.start_ns[:, None]).astype(np.float64) / p.t_scale_ns[:, None].astype(np.float64), dtype=np.float64
    )


def _evaluate(
    p: _Params,
    ds_ns: IntArray,
    y: FloatArray,
    observed: BoolArray,
    *,
    y_sd: FloatArray | None,
    keys: IntArray,
    opts: ForecastOptions,
    seasonal: Callable[[IntArray], FloatArray] | None = None,
    answers: _MappedAnswers | None = None,
) -> _Evaluated:
    """In-sample fit, forecast and anomalies of fitted series (padded batch; ``seasonal(ds_ns)`` gives an
    additive seasonal component in y units, scaled per series, for the reference engine; ``answers`` located in
    this batch)."""
    n, width = y.shape
    t = np.where(observed, _scaled_t(ds_ns, p), 0.0)
    season_hist = np.where(observed, seasonal(ds_ns), 0.0) / p.y_scale[:, None] if seasonal else np.zeros((n, width))
    base_hist = core.trend(t, k=p.k, m=p.m, delta=p.delta, cp=p.cp) + season_hist
    fitted = base_hist * p.y_scale[:, None]
    length = observed.sum(axis=1)
    last = np.take_along_axis(ds_ns, (length - 1)[:, None], axis=1)[:, 0]
    steps = np.arange(1, opts.horizon + 1, dtype=np.int64)
    future_ds = last[:, None] + steps[None, :] * (opts.step_days * DAY_NS)
    t_future = _scaled_t(future_ds, p)
    season_future = seasonal(future_ds) / p.y_scale[:, None] if seasonal else np.zeros((n, opts.horizon))
    base_future = core.trend(t_future, k=p.k, m=p.m, delta=p.delta, cp=p.cp) + season_future
    yhat = base_future * p.y_scale[:, None]
    if opts.uncertainty_samples > 0:
        half = core.interval_z(opts.interval_width) * p.sigma * p.y_scale
        f_lo, f_hi = fitted - half[:, None], fitted + half[:, None]
        t_obs = np.where(observed, t, np.nan)
        hist_step = np.nanmean(np.diff(t_obs, axis=1), axis=1) if width > 1 else np.ones(n)
        lower, upper = core.simulate_future(
            t_future,
            base_future,
            delta=p.delta,
            cp_count=p.cp_mask.sum(axis=1).astype(np.int64),
            sigma=p.sigma,
            y_scale=p.y_scale,
            hist_step=hist_step,
            keys=keys,
            seed=opts.seed,
            samples=opts.uncertainty_samples,
            width=opts.interval_width,
        )
    else:
        f_lo = f_hi = np.full((n, width), np.nan)
        lower = upper = np.full((n, opts.horizon), np.nan)
    expected, scale, resid, flags, refitted = _anomalies(
        p, t, y, observed, y_sd=y_sd, answers=answers, base_hist=base_hist, season_hist=season_hist, opts=opts
    )
    nan = np.nan
    return _Evaluated(
        fitted=np.where(observed, fitted, nan),
        fitted_lower=np.where(observed, f_lo, nan),
        fitted_upper=np.where(observed, f_hi, nan),
        future_ds_ns=future_ds,
        yhat=yhat,
        lower=lower,
        upper=upper,
        expected=expected,
        scale=scale,
        residual=resid,
        anomalous=flags,
        refitted=refitted,
    )


def _anomalies(
    p: _Params,
    t: FloatArray,
    y: FloatArray,
    observed: BoolArray,
    *,
    y_sd: FloatArray | None,
    answers: _MappedAnswers | None,
    base_hist: FloatArray,
    season_hist: FloatArray,
    opts: ForecastOptions,
) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray, BoolArray]:
    """The anomaly rule of the module docstring, in scaled units inside; outputs in y units (the residual is the
    point's evidence minus its expected value)."""
    ysc = p.y_scale[:, None]
    ys = np.where(observed, y, 0.0) / ysc
    w = observed.astype(np.float64)
    sd = np.zeros_like(ys) if y_sd is None else np.where(observed & np.isfinite(y_sd), y_sd, 0.0) / ysc
    thr = opts.anomaly_threshold
    floor = np.full(len(ys), opts.residual_scale_floor)

    def judge(expected: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Residuals and scales of every point against ``expected`` (scaled units)."""
        resid = np.where(observed, ys - expected, 0.0)
        s = np.maximum(core.robust_scale(resid, w, floor)[:, None], sd)
        if answers is None:
            return resid, s
        # points measured by answers: the answers' own evidence, one Fisher-scoring step from the expected value
        u, info = core.answer_score(expected * ysc, answers.point, answers.a, answers.b, answers.correct)
        has = observed & (info > 0)
        info = np.where(has, info, 1.0)
        resid = np.where(has, u / info / ysc, resid)
        s = np.where(has, np.hypot(1.0 / np.sqrt(info) / ysc, floor[:, None]), s)
        return resid, s

    expected = base_hist
    resid, s = judge(expected)
    cand = observed & (np.abs(resid) > thr * s)
    refitted = np.zeros(len(ys), dtype=bool)
    if opts.robust_refit:
        kept = (observed & ~cand).sum(axis=1)
        rows = np.flatnonzero(cand.any(axis=1) & (2 * kept >= observed.sum(axis=1)))
        if len(rows):
            X = core.design_matrix(t[rows], p.cp[rows], p.cp_mask[rows])
            w1 = (observed[rows] & ~cand[rows]).astype(np.float64)
            beta0 = np.concatenate([p.k[rows, None], p.m[rows, None], p.delta[rows]], axis=1)
            refit = core.map_fit(
                X,
                ys[rows] - season_hist[rows],
                w1,
                cp_mask=p.cp_mask[rows],
                tau=opts.changepoint_prior_scale,
                beta0=beta0,
            )
            b = refit.beta
            expected = expected.copy()
            expected[rows] = (
                core.trend(t[rows], k=b[:, 0], m=b[:, 1], delta=b[:, 2:], cp=p.cp[rows]) + season_hist[rows]
            )
            resid, s = judge(expected)
            refitted[rows] = True
    flags = observed & (np.abs(resid) > thr * s)
    nan = np.nan
    return (
        np.where(observed, expected * ysc, nan),
        np.where(observed, s * ysc, nan),
        np.where(observed, resid * ysc, nan),
        flags,
        refitted,
    )


# --- the fitted model of one series -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seasonality:
    """An additive Fourier seasonality (prophet's): ``sum_i b_i sin(2 pi i t / period) + c_i cos(...)``, ``t`` in
    days since 1970-01-01."""

    name: str
    period: float
    fourier_order: int
    prior_scale: float


def _fourier(ds_ns: IntArray, seasonalities: Sequence[Seasonality]) -> FloatArray:
    """Prophet's seasonal features, in its column order (sin, cos per order, seasonality after seasonality)."""
    days = (ds_ns.astype(np.float64) / 1e9) / (24 * 60 * 60)  # as pandas' total_seconds() / 86400
    cols: list[FloatArray] = []
    x_t = np.pi * 2 * days
    for s in seasonalities:
        for i in range(s.fourier_order):
            c = (i + 1) / s.period * x_t
            cols.extend([np.sin(c), np.cos(c)])
    return np.stack(cols, axis=-1) if cols else np.zeros((*ds_ns.shape, 0))


@dataclass
class ForecastModel:
    """One fitted series: parameters, scaling, history and options (see the module docstring).

    ``delta`` and ``changepoints_t`` are prophet's (one dummy changepoint at ``t = 0`` with ``delta = 0`` when the
    history is too short for any); ``changepoints_ns`` are the changepoint dates (empty for the dummy);
    ``log_posterior`` is prophet's ``lp__`` (Stan's log density without constants) at these parameters;
    ``fitted_by`` is ``"prophet"`` or ``"batch-map"``.
    """

    options: ForecastOptions
    k: float
    m: float
    delta: FloatArray
    sigma_obs: float
    changepoints_t: FloatArray
    changepoints_ns: IntArray
    y_scale: float
    start_ns: int
    t_scale_ns: int
    history_ds_ns: IntArray
    history_y: FloatArray
    history_y_sd: FloatArray | None
    key: int
    log_posterior: float
    converged: bool
    fitted_by: str
    seasonalities: tuple[Seasonality, ...] = ()
    beta: FloatArray = field(default_factory=lambda: np.zeros(0))
    history_answers: PointAnswers | None = None
    _cache: _Evaluated | None = field(default=None, repr=False, compare=False)

    def _params(self) -> _Params:
        s = len(self.changepoints_t)
        return _Params(
            k=np.array([self.k]),
            m=np.array([self.m]),
            delta=np.asarray(self.delta, dtype=np.float64).reshape(1, s),
            cp=np.asarray(self.changepoints_t, dtype=np.float64).reshape(1, s),
            cp_mask=np.ones((1, s), dtype=bool),
            sigma=np.array([self.sigma_obs]),
            y_scale=np.array([self.y_scale]),
            start_ns=np.array([self.start_ns], dtype=np.int64),
            t_scale_ns=np.array([self.t_scale_ns], dtype=np.int64),
        )

    def _seasonal(self) -> Callable[[IntArray], FloatArray] | None:
        if not self.seasonalities:
            return None
        beta = np.asarray(self.beta, dtype=np.float64)
        scale = self.y_scale

        def component(ds_ns: IntArray) -> FloatArray:
            return np.asarray(_fourier(ds_ns, self.seasonalities) @ beta * scale, dtype=np.float64)

        return component

    def _evaluated(self) -> _Evaluated:
        if self._cache is None:
            sd = None if self.history_y_sd is None else self.history_y_sd[None, :]
            self._cache = _evaluate(
                self._params(),
                self.history_ds_ns[None, :],
                self.history_y[None, :],
                np.ones((1, len(self.history_y)), dtype=bool),
                y_sd=sd,
                keys=np.array([self.key], dtype=np.int64),
                opts=self.options,
                seasonal=self._seasonal(),
                answers=self._mapped_answers(),
            )
        return self._cache

    def _mapped_answers(self) -> _MappedAnswers | None:
        if self.history_answers is None:
            return None
        return _map_answers(
            self.history_answers, self.history_ds_ns[None, :], np.array([len(self.history_ds_ns)], dtype=np.int64)
        )

    def predict(self) -> pd.DataFrame:
        """The forecast: ``step`` (1..horizon), ``ds``, ``yhat``, ``yhat_lower``, ``yhat_upper``."""
        ev = self._evaluated()
        return pd.DataFrame(
            {
                "step": np.arange(1, self.options.horizon + 1),
                "ds": pd.to_datetime(ev.future_ds_ns[0]),
                "yhat": ev.yhat[0],
                "yhat_lower": ev.lower[0],
                "yhat_upper": ev.upper[0],
            }
        )

    def fitted(self) -> pd.DataFrame:
        """In-sample: ``ds``, ``y``, ``yhat``, ``yhat_lower``, ``yhat_upper`` (the fit on all points)."""
        ev = self._evaluated()
        return pd.DataFrame(
            {
                "ds": pd.to_datetime(self.history_ds_ns),
                "y": self.history_y,
                "yhat": ev.fitted[0],
                "yhat_lower": ev.fitted_lower[0],
                "yhat_upper": ev.fitted_upper[0],
            }
        )

    def anomalies(self) -> pd.DataFrame:
        """Anomalous points: ``ds``, ``y``, ``evidence`` (the value judged: ``y``, or for a point measured by answers
        its answers' own estimate), ``yhat`` (expected), ``expected_lower``, ``expected_upper``, ``residual``
        (``evidence - yhat``), ``scale``, ``score``, ``direction``."""
        ev = self._evaluated()
        return _anomaly_frame(
            ev, self.history_ds_ns[None, :], self.history_y[None, :], self.options.anomaly_threshold, None
        )

    # --- JSON ---

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; :meth:`from_json` rebuilds a model with identical predictions."""

        def iso(ns: Iterable[int]) -> list[str]:
            return [pd.Timestamp(int(v)).isoformat() for v in ns]

        mapped = self._mapped_answers()
        answers = (
            None
            if mapped is None
            else {
                "point": [int(v) for v in mapped.point],
                "a": [float(v) for v in mapped.a],
                "b": [float(v) for v in mapped.b],
                "correct": [float(v) for v in mapped.correct],
            }
        )
        return envelope(
            ENGINE,
            FORMAT_VERSION,
            {
                "fitted_by": self.fitted_by,
                "options": self.options.to_dict(),
                "history": {
                    "ds": iso(self.history_ds_ns),
                    "y": [float(v) for v in self.history_y],
                    "y_sd": None if self.history_y_sd is None else [_json_float(v) for v in self.history_y_sd],
                    "answers": answers,
                },
                "scaling": {
                    "y_scale": float(self.y_scale),
                    "start": pd.Timestamp(self.start_ns).isoformat(),
                    "t_scale_days": self.t_scale_ns / DAY_NS,
                },
                "params": {
                    "k": float(self.k),
                    "m": float(self.m),
                    "delta": [float(v) for v in self.delta],
                    "sigma_obs": float(self.sigma_obs),
                    "beta": [float(v) for v in self.beta],
                },
                "changepoints": iso(self.changepoints_ns),
                "changepoints_t": [float(v) for v in self.changepoints_t],
                "seasonalities": [
                    {"name": s.name, "period": s.period, "fourier_order": s.fourier_order, "prior_scale": s.prior_scale}
                    for s in self.seasonalities
                ],
                "seed_key": int(self.key),
                "log_posterior": float(self.log_posterior),
                "converged": bool(self.converged),
            },
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ForecastModel:
        body = open_envelope(data, ENGINE, {FORMAT_VERSION})
        try:
            hist = body["history"]
            sd = hist.get("y_sd")

            def floats(values: Any, name: str) -> FloatArray:
                a = np.asarray(values, dtype=np.float64).reshape(-1)
                if not np.isfinite(a).all():
                    raise ValueError(f"{name}: non-finite values")
                return a

            cp_t = floats(body["changepoints_t"], "changepoints_t")
            delta = floats(body["params"]["delta"], "delta")
            if len(delta) != len(cp_t):
                raise ValueError("delta and changepoints_t differ in length")
            seasonalities = tuple(
                Seasonality(str(s["name"]), float(s["period"]), int(s["fourier_order"]), float(s["prior_scale"]))
                for s in body.get("seasonalities", [])
            )
            beta = floats(body["params"].get("beta", []), "beta")
            if len(beta) != 2 * sum(s.fourier_order for s in seasonalities):
                raise ValueError("beta does not match the seasonalities")
            ds = np.array([pd.Timestamp(v).value for v in hist["ds"]], dtype=np.int64)
            y = floats(hist["y"], "history.y")
            if len(ds) != len(y) or len(ds) < 2:
                raise ValueError("history.ds and history.y must have the same length >= 2")
            answers = _answers_from_json(hist.get("answers"), ds)
            return cls(
                options=ForecastOptions(**body["options"]),
                k=float(body["params"]["k"]),
                m=float(body["params"]["m"]),
                delta=delta,
                sigma_obs=float(body["params"]["sigma_obs"]),
                changepoints_t=cp_t,
                changepoints_ns=np.array([pd.Timestamp(v).value for v in body["changepoints"]], dtype=np.int64),
                y_scale=float(body["scaling"]["y_scale"]),
                start_ns=int(pd.Timestamp(body["scaling"]["start"]).value),
                t_scale_ns=round(float(body["scaling"]["t_scale_days"]) * DAY_NS),
                history_ds_ns=ds,
                history_y=y,
                history_y_sd=None if sd is None else np.array([np.nan if v is None else v for v in sd], dtype=float),
                key=int(body["seed_key"]),
                log_posterior=float(body["log_posterior"]),
                converged=bool(body["converged"]),
                fitted_by=str(body["fitted_by"]),
                seasonalities=seasonalities,
                beta=beta,
                history_answers=answers,
            )
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"invalid serialised {ENGINE} model: {exc}", {"engine": ENGINE}) from exc


def _answers_from_json(data: Any, ds: IntArray) -> PointAnswers | None:
    """``history.answers`` of a serialised model (``point``: index into the history; ``a``, ``b``, ``correct``)."""
    if data is None:
        return None
    point = np.asarray(data["point"], dtype=np.int64).reshape(-1)
    cols = [np.asarray(data[k], dtype=np.float64).reshape(-1) for k in ("a", "b", "correct")]
    if any(len(c) != len(point) for c in cols) or ((point < 0) | (point >= len(ds))).any():
        raise ValueError("history.answers: point, a, b and correct must have one entry per answer of a history point")
    if not all(np.isfinite(c).all() for c in cols):
        raise ValueError("history.answers: non-finite values")
    return PointAnswers(
        row=np.zeros(len(point), dtype=np.int64), ds_ns=ds[point], a=cols[0], b=cols[1], correct=cols[2]
    )


def _model_log_posterior(fm: ForecastModel) -> float:
    """Stan's ``lp__`` of prophet's model at ``fm``'s parameters (with seasonality: the seasonal regression in the
    likelihood and ``beta``'s normal prior)."""
    t = ((fm.history_ds_ns - fm.start_ns).astype(np.float64) / float(fm.t_scale_ns))[None, :]
    ys = (fm.history_y / fm.y_scale)[None, :]
    prior_beta = 0.0
    if fm.seasonalities:
        ys = ys - (_fourier(fm.history_ds_ns, fm.seasonalities) @ fm.beta)[None, :]
        scales = np.concatenate([np.full(2 * s.fourier_order, s.prior_scale) for s in fm.seasonalities])
        prior_beta = float(-(fm.beta * fm.beta / (2 * scales * scales)).sum())
    lp = core.log_posterior(
        t,
        ys,
        np.ones_like(t),
        k=np.array([fm.k]),
        m=np.array([fm.m]),
        delta=np.asarray(fm.delta, dtype=np.float64)[None, :],
        cp=np.asarray(fm.changepoints_t, dtype=np.float64)[None, :],
        sigma=np.array([fm.sigma_obs]),
        tau=fm.options.changepoint_prior_scale,
    )
    return float(lp[0]) + prior_beta


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _anomaly_frame(
    ev: _Evaluated, ds_ns: IntArray, y: FloatArray, threshold: float, units: np.ndarray[Any, Any] | None
) -> pd.DataFrame:
    rows, cols = np.nonzero(ev.anomalous)
    resid = ev.residual[rows, cols]
    expected = ev.expected[rows, cols]
    scale = ev.scale[rows, cols]
    out: dict[str, Any] = {} if units is None else {"unit": units[rows]}
    out.update(
        {
            "ds": pd.to_datetime(ds_ns[rows, cols]),
            "y": y[rows, cols],
            "evidence": expected + resid,
            "yhat": expected,
            "expected_lower": expected - threshold * scale,
            "expected_upper": expected + threshold * scale,
            "residual": resid,
            "scale": scale,
            "score": np.abs(resid) / scale,
            "direction": np.where(resid < 0, "drop", "jump"),
        }
    )
    return pd.DataFrame(out)


# --- input handling ---------------------------------------------------------------------------------------------


def _to_ns(values: Any, name: str) -> IntArray:
    """Dates/timestamps (time-zone-naive) as int64 nanoseconds."""
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(values).to_numpy()))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be dates", {"problems": [{"column": name, "reason": str(exc)}]}) from exc
    if idx.tz is not None:
        raise InvalidInputError(
            f"{name} must be time-zone-naive dates (local calendar), got zone {idx.tz}",
            {"problems": [{"column": name, "reason": "time-zone-aware"}]},
        )
    if idx.isna().any():
        raise InvalidInputError(f"{name} has missing dates", {"problems": [{"column": name, "reason": "missing"}]})
    return np.asarray(idx.as_unit("ns").asi8, dtype=np.int64)


def _to_float(values: Any, name: str) -> FloatArray:
    try:
        return np.asarray(pd.to_numeric(pd.Series(values), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name} must be numeric", {"problems": [{"column": name, "reason": str(exc)}]}
        ) from exc


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python value (for messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _unit_key(unit: Any) -> int:
    """The RNG key of a unit: a non-negative integer id itself, else a CRC-32 of its text."""
    if isinstance(unit, int | np.integer) and not isinstance(unit, bool) and int(unit) >= 0:
        return int(unit)
    return zlib.crc32(str(unit).encode())


# --- chunks (the job's unit of parallel work) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesChunk:
    """A padded batch of series: ``units`` ``(n,)``, ``keys`` ``(n,)`` RNG keys, ``ds_ns`` ``(n, T)`` int64
    nanoseconds, ``y`` ``(n, T)`` (NaN = no point; padding), optional ``y_sd`` ``(n, T)`` and optional ``answers``
    that measure the points (:class:`PointAnswers`, ``row`` = row of this chunk). Points need not be sorted.
    Picklable."""

    units: np.ndarray[Any, Any]
    keys: IntArray
    ds_ns: IntArray
    y: FloatArray
    y_sd: FloatArray | None = None
    answers: PointAnswers | None = None


def make_chunks(
    frame: pd.DataFrame,
    *,
    unit: str = "unit",
    ds: str = "ds",
    y: str = "y",
    y_sd: str | None = None,
    answers: pd.DataFrame | None = None,
    chunk_size: int = 5000,
) -> list[SeriesChunk]:
    """Cut a long frame (one row per unit and date) into :class:`SeriesChunk` of at most ``chunk_size`` units
    (units in sorted order). ``answers``: optional long frame of the answers that measure the points (one row per
    answer: the columns named ``unit`` and ``ds`` as in ``frame``, and ``a``, ``b``, ``correct``; see
    :class:`PointAnswers`); answers of units not in ``frame`` are dropped."""
    missing = [c for c in (unit, ds, y, *([y_sd] if y_sd else [])) if c not in frame.columns]
    if answers is not None:
        missing += [f"answers.{c}" for c in (unit, ds, "a", "b", "correct") if c not in answers.columns]
    if missing:
        raise InvalidInputError(
            f"series frame lacks column(s): {', '.join(missing)}", {"problems": [{"column": c} for c in missing]}
        )
    if chunk_size < 1:
        raise InvalidInputError("chunk_size must be >= 1", {"problems": [{"parameter": "chunk_size"}]})
    codes, uniques = pd.factorize(frame[unit], sort=True)
    ds_ns = _to_ns(frame[ds], ds)
    yv = _to_float(frame[y], y)
    sdv = _to_float(frame[y_sd], y_sd) if y_sd else None
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    counts = np.bincount(codes, minlength=len(uniques))
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(codes)) - first[codes]
    units = np.asarray(uniques)
    keys = np.array([_unit_key(u) for u in units.tolist()], dtype=np.int64)
    all_answers = None if answers is None else _answer_arrays(answers, unit=unit, ds=ds, units=uniques)
    chunks: list[SeriesChunk] = []
    for start in range(0, len(units), chunk_size):
        stop = min(len(units), start + chunk_size)
        lo, hi = (first[start], first[stop - 1] + counts[stop - 1]) if stop > start else (0, 0)
        sel = order[lo:hi]
        width = max(1, int(counts[start:stop].max(initial=0)))
        r = codes[lo:hi] - start
        c = pos[lo:hi]
        d = np.zeros((stop - start, width), dtype=np.int64)
        v = np.full((stop - start, width), np.nan)
        d[r, c] = ds_ns[sel]
        v[r, c] = yv[sel]
        s = None
        if sdv is not None:
            s = np.full((stop - start, width), np.nan)
            s[r, c] = sdv[sel]
        part = None
        if all_answers is not None:
            inside = (all_answers.row >= start) & (all_answers.row < stop)
            part = all_answers.select(inside, all_answers.row - start)
        chunks.append(SeriesChunk(units=units[start:stop], keys=keys[start:stop], ds_ns=d, y=v, y_sd=s, answers=part))
    return chunks


def _answer_arrays(answers: pd.DataFrame, *, unit: str, ds: str, units: Any) -> PointAnswers:
    """The answers frame as :class:`PointAnswers` with ``row`` = position of the unit in ``units`` (the sorted
    units of the series frame); answers of other units are dropped. Checks: finite ``a``, ``b``; 0/1 ``correct``."""
    row = np.asarray(pd.Index(units).get_indexer(answers[unit]), dtype=np.int64)
    keep = row >= 0
    a = _to_float(answers["a"], "a")
    b = _to_float(answers["b"], "b")
    correct = _to_float(answers["correct"], "correct")
    bad = keep & ~(np.isfinite(a) & np.isfinite(b) & ((correct == 0) | (correct == 1)))
    if bad.any():
        raise InvalidInputError(
            f"answers: {int(bad.sum())} row(s) with non-finite a or b, or correct not 0/1",
            {
                "problems": [
                    {"column": "answers", "reason": "non-finite a/b or correct not 0/1", "count": int(bad.sum())}
                ]
            },
        )
    return PointAnswers(row=row[keep], ds_ns=_to_ns(answers[ds], ds)[keep], a=a[keep], b=b[keep], correct=correct[keep])


@dataclass(frozen=True)
class ChunkResult:
    """Everything :func:`fit_chunk` learns about a chunk, as arrays (picklable). Row ``i`` is ``units[i]``;
    ``status[i]`` is ``"ok"`` or ``"skipped"`` (``reason[i]`` says why); arrays of skipped rows hold NaN / 0.

    Points (sorted, compacted): ``length``, ``ds_ns``, ``y``, ``y_sd`` ``(n, T)``. Parameters (prophet's scaling):
    ``k``, ``m``, ``sigma_obs``, ``y_scale``, ``start_ns``, ``t_scale_ns``, ``log_posterior``, ``converged``,
    ``iterations`` ``(n,)``; ``delta``, ``changepoints_t``, ``changepoint_index`` (-1: dummy/absent),
    ``cp_mask`` ``(n, S)``. Fit: ``fitted``, ``fitted_lower``, ``fitted_upper`` ``(n, T)``. Forecast:
    ``future_ds_ns``, ``yhat``, ``yhat_lower``, ``yhat_upper`` ``(n, H)``. Anomaly rule: ``expected``, ``scale``,
    ``residual``, ``anomalous`` ``(n, T)``; ``answers``: the chunk's answers (None without).
    """

    options: ForecastOptions
    units: np.ndarray[Any, Any]
    keys: IntArray
    status: np.ndarray[Any, Any]
    reason: np.ndarray[Any, Any]
    length: IntArray
    ds_ns: IntArray
    y: FloatArray
    y_sd: FloatArray | None
    k: FloatArray
    m: FloatArray
    delta: FloatArray
    changepoints_t: FloatArray
    changepoint_index: IntArray
    cp_mask: BoolArray
    sigma_obs: FloatArray
    y_scale: FloatArray
    start_ns: IntArray
    t_scale_ns: IntArray
    log_posterior: FloatArray
    converged: BoolArray
    iterations: IntArray
    fitted: FloatArray
    fitted_lower: FloatArray
    fitted_upper: FloatArray
    future_ds_ns: IntArray
    yhat: FloatArray
    yhat_lower: FloatArray
    yhat_upper: FloatArray
    expected: FloatArray
    scale: FloatArray
    residual: FloatArray
    anomalous: BoolArray
    answers: PointAnswers | None = None

    @property
    def ok(self) -> BoolArray:
        return np.asarray(self.status == "ok", dtype=bool)

    def forecast_frame(self) -> pd.DataFrame:
        """``unit``, ``step``, ``ds``, ``yhat``, ``yhat_lower``, ``yhat_upper``, ``last_y`` (the last observed
        value: the naive forecast) for the fitted units."""
        rows = np.flatnonzero(self.ok)
        h = self.yhat.shape[1]
        last_y = self.y[rows, self.length[rows] - 1]
        return pd.DataFrame(
            {
                "unit": np.repeat(self.units[rows], h),
                "step": np.tile(np.arange(1, h + 1), len(rows)),
                "ds": pd.to_datetime(self.future_ds_ns[rows].reshape(-1)),
                "yhat": self.yhat[rows].reshape(-1),
                "yhat_lower": self.yhat_lower[rows].reshape(-1),
                "yhat_upper": self.yhat_upper[rows].reshape(-1),
                "last_y": np.repeat(last_y, h),
            }
        )

    def fitted_frame(self) -> pd.DataFrame:
        """``unit``, ``ds``, ``y``, ``yhat``, ``yhat_lower``, ``yhat_upper`` for every point of the fitted units."""
        mask = self.ok[:, None] & (np.arange(self.y.shape[1])[None, :] < self.length[:, None])
        rows, cols = np.nonzero(mask)
        return pd.DataFrame(
            {
                "unit": self.units[rows],
                "ds": pd.to_datetime(self.ds_ns[rows, cols]),
                "y": self.y[rows, cols],
                "yhat": self.fitted[rows, cols],
                "yhat_lower": self.fitted_lower[rows, cols],
                "yhat_upper": self.fitted_upper[rows, cols],
            }
        )

    def anomalies_frame(self) -> pd.DataFrame:
        """One row per anomalous point (see :meth:`ForecastModel.anomalies`), with ``unit``."""
        ev = _Evaluated(
            fitted=self.fitted,
            fitted_lower=self.fitted_lower,
            fitted_upper=self.fitted_upper,
            future_ds_ns=self.future_ds_ns,
            yhat=self.yhat,
            lower=self.yhat_lower,
            upper=self.yhat_upper,
            expected=self.expected,
            scale=self.scale,
            residual=self.residual,
            anomalous=self.anomalous & self.ok[:, None],
            refitted=np.zeros(len(self.units), dtype=bool),
        )
        return _anomaly_frame(ev, self.ds_ns, self.y, self.options.anomaly_threshold, self.units)

    def skipped_frame(self) -> pd.DataFrame:
        """``unit``, ``points``, ``reason`` of the series that were not fitted."""
        rows = np.flatnonzero(~self.ok)
        return pd.DataFrame({"unit": self.units[rows], "points": self.length[rows], "reason": self.reason[rows]})

    def fits_frame(self) -> pd.DataFrame:
        """Per fitted unit: ``points``, ``k``, ``m``, ``sigma_obs``, ``y_scale``, ``changepoints`` (count of real
        ones), ``nonzero_deltas``, ``log_posterior``, ``converged``, ``iterations``, ``anomalies``."""
        rows = np.flatnonzero(self.ok)
        real = self.changepoint_index[rows] >= 0
        return pd.DataFrame(
            {
                "unit": self.units[rows],
                "points": self.length[rows],
                "k": self.k[rows],
                "m": self.m[rows],
                "sigma_obs": self.sigma_obs[rows],
                "y_scale": self.y_scale[rows],
                "changepoints": real.sum(axis=1),
                "nonzero_deltas": (self.delta[rows] != 0).sum(axis=1),
                "log_posterior": self.log_posterior[rows],
                "converged": self.converged[rows],
                "iterations": self.iterations[rows],
                "anomalies": self.anomalous[rows].sum(axis=1),
            }
        )

    def model_jsons(self) -> list[tuple[Any, dict[str, Any]]]:
        """``(unit, ForecastModel JSON)`` of every fitted unit (what ``prophet_fit_meta`` stores), built where the
        chunk was fitted."""
        return [(_plain(self.units[i]), self.model(int(i)).to_json()) for i in np.flatnonzero(self.ok)]

    def model(self, i: int) -> ForecastModel:
        """The :class:`ForecastModel` of row ``i`` (a fitted unit)."""
        if self.status[i] != "ok":
            unit = _plain(self.units[i])
            raise InsufficientDataError(f"unit {unit!r} was not fitted: {self.reason[i]}", {"unit": str(unit)})
        n_pts = int(self.length[i])
        s = int(self.cp_mask[i].sum())
        idx = self.changepoint_index[i, :s]
        return ForecastModel(
            options=self.options,
            k=float(self.k[i]),
            m=float(self.m[i]),
            delta=self.delta[i, :s].copy(),
            sigma_obs=float(self.sigma_obs[i]),
            changepoints_t=self.changepoints_t[i, :s].copy(),
            changepoints_ns=self.ds_ns[i, idx[idx >= 0]].copy(),
            y_scale=float(self.y_scale[i]),
            start_ns=int(self.start_ns[i]),
            t_scale_ns=int(self.t_scale_ns[i]),
            history_ds_ns=self.ds_ns[i, :n_pts].copy(),
            history_y=self.y[i, :n_pts].copy(),
            history_y_sd=None if self.y_sd is None else self.y_sd[i, :n_pts].copy(),
            key=int(self.keys[i]),
            log_posterior=float(self.log_posterior[i]),
            converged=bool(self.converged[i]),
            fitted_by="batch-map",
            history_answers=None
            if self.answers is None
            else self.answers.select(self.answers.row == i, np.zeros(len(self.answers.row), dtype=np.int64)),
        )


def _prepare(
    chunk: SeriesChunk, opts: ForecastOptions
) -> tuple[IntArray, FloatArray, FloatArray | None, IntArray, np.ndarray[Any, Any]]:
    """Drop missing points, sort by date, compact to the left; the reason a series cannot be fitted ('' if none)."""
    ds, y = chunk.ds_ns, chunk.y
    n, width = y.shape
    present = ~np.isnan(y)
    # sort each row: present points by date first, then the missing ones
    big = np.iinfo(np.int64).max
    order = np.argsort(np.where(present, ds, big), axis=1, kind="stable")
    ds_s = np.take_along_axis(ds, order, axis=1)
    y_s = np.take_along_axis(y, order, axis=1)
    sd_s = None if chunk.y_sd is None else np.take_along_axis(chunk.y_sd, order, axis=1)
    length = present.sum(axis=1).astype(np.int64)
    inside = np.arange(width)[None, :] < length[:, None]
    reason = np.full(n, "", dtype=object)
    nonfinite = (inside & ~np.isfinite(y_s)).any(axis=1)
    dup = (inside[:, 1:] & (np.diff(ds_s, axis=1) == 0)).any(axis=1)
    bad_sd = np.zeros(n, dtype=bool) if sd_s is None else (inside & (sd_s < 0)).any(axis=1)
    short = length < opts.min_points
    reason[short] = [f"fewer than {opts.min_points} points ({int(v)})" for v in length[short]]
    reason[~short & dup] = "repeated ds (one point per date)"
    reason[~short & ~dup & nonfinite] = "non-finite y"
    reason[~short & ~dup & ~nonfinite & bad_sd] = "negative y_sd"
    y_s = np.where(inside & np.isfinite(y_s), y_s, np.nan)
    return ds_s, y_s, sd_s, length, reason


def fit_chunk(chunk: SeriesChunk, options: ForecastOptions) -> ChunkResult:
    """Fit, forecast and screen every series of ``chunk`` (the fast engine; pure: no I/O, no global state).

    Series that cannot be fitted are recorded (``status = "skipped"`` with a ``reason``), never raised."""
    opts = options
    ds_all, y_all, sd_all, length_all, reason = _prepare(chunk, opts)
    n, width = y_all.shape
    ok = reason == ""
    rows = np.flatnonzero(ok)
    h = opts.horizon
    # outputs, NaN / 0 for skipped rows
    nanf = np.full((n, width), np.nan)
    res: dict[str, Any] = {
        "k": np.full(n, np.nan),
        "m": np.full(n, np.nan),
        "sigma_obs": np.full(n, np.nan),
        "y_scale": np.full(n, np.nan),
        "start_ns": np.zeros(n, dtype=np.int64),
        "t_scale_ns": np.zeros(n, dtype=np.int64),
        "log_posterior": np.full(n, np.nan),
        "converged": np.zeros(n, dtype=bool),
        "iterations": np.zeros(n, dtype=np.int64),
        "fitted": nanf.copy(),
        "fitted_lower": nanf.copy(),
        "fitted_upper": nanf.copy(),
        "expected": nanf.copy(),
        "scale": nanf.copy(),
        "residual": nanf.copy(),
        "anomalous": np.zeros((n, width), dtype=bool),
        "future_ds_ns": np.zeros((n, h), dtype=np.int64),
        "yhat": np.full((n, h), np.nan),
        "yhat_lower": np.full((n, h), np.nan),
        "yhat_upper": np.full((n, h), np.nan),
    }
    s_max = 1
    delta = np.zeros((n, s_max))
    cp_t = np.zeros((n, s_max))
    cp_idx = np.full((n, s_max), -1, dtype=np.int64)
    cp_mask = np.zeros((n, s_max), dtype=bool)
    if len(rows):
        ds, y, length = ds_all[rows], y_all[rows], length_all[rows]
        des = core.build_design(
            ds, np.nan_to_num(y), length, n_changepoints=opts.n_changepoints, changepoint_range=opts.changepoint_range
        )
        X = core.design_matrix(des.t, des.cp, des.cp_mask)
        w = des.observed.astype(np.float64)
        fit = core.map_fit(
            X, des.y, w, cp_mask=des.cp_mask, tau=opts.changepoint_prior_scale, beta0=core.initial_beta(des, w)
        )
        beta, sigma, lp, converged = fit.beta.copy(), fit.sigma.copy(), fit.lp.copy(), fit.converged.copy()
        # prophet's rule for a constant series: its start values and sigma_obs = 1e-9, no optimisation
        yv = np.where(des.observed, y, np.nan)
        flat = np.nanmax(yv, axis=1) == np.nanmin(yv, axis=1)
        if flat.any():
            beta[flat] = core.initial_beta(des, w)[flat]
            sigma[flat] = core.SIGMA_FLOOR
            converged[flat] = True
        # the dummy changepoint's delta is folded into k, as prophet does
        beta[des.dummy_cp, 0] += beta[des.dummy_cp, 2]
        beta[des.dummy_cp, 2] = 0.0
        lp = core.log_posterior(
            des.t,
            des.y,
            w,
            k=beta[:, 0],
            m=beta[:, 1],
            delta=beta[:, 2:],
            cp=des.cp,
            sigma=sigma,
            tau=opts.changepoint_prior_scale,
        )
        params = _Params(
            k=beta[:, 0],
            m=beta[:, 1],
            delta=beta[:, 2:],
            cp=des.cp,
            cp_mask=des.cp_mask,
            sigma=sigma,
            y_scale=des.y_scale,
            start_ns=des.start_ns,
            t_scale_ns=des.t_scale_ns,
        )
        sd = None if sd_all is None else sd_all[rows]
        mapped = None
        if chunk.answers is not None:
            position = np.full(n, -1, dtype=np.int64)
            position[rows] = np.arange(len(rows))
            mine = chunk.answers.select(np.ones(len(chunk.answers.row), dtype=bool), position[chunk.answers.row])
            mapped = _map_answers(mine, ds, length)
        ev = _evaluate(params, ds, y, des.observed, y_sd=sd, keys=chunk.keys[rows], opts=opts, answers=mapped)
        res["k"][rows], res["m"][rows], res["sigma_obs"][rows] = params.k, params.m, sigma
        res["y_scale"][rows], res["start_ns"][rows], res["t_scale_ns"][rows] = des.y_scale, des.start_ns, des.t_scale_ns
        res["log_posterior"][rows], res["converged"][rows], res["iterations"][rows] = lp, converged, fit.iterations
        for name, value in (
            ("fitted", ev.fitted),
            ("fitted_lower", ev.fitted_lower),
            ("fitted_upper", ev.fitted_upper),
            ("expected", ev.expected),
            ("scale", ev.scale),
            ("residual", ev.residual),
            ("anomalous", ev.anomalous),
        ):
            res[name][rows, : value.shape[1]] = value
        res["future_ds_ns"][rows], res["yhat"][rows] = ev.future_ds_ns, ev.yhat
        res["yhat_lower"][rows], res["yhat_upper"][rows] = ev.lower, ev.upper
        s_max = des.cp.shape[1]
        delta = np.zeros((n, s_max))
        cp_t = np.zeros((n, s_max))
        cp_idx = np.full((n, s_max), -1, dtype=np.int64)
        cp_mask = np.zeros((n, s_max), dtype=bool)
        delta[rows], cp_t[rows], cp_mask[rows] = params.delta, des.cp, des.cp_mask
        for L in np.unique(length):
            sel = np.flatnonzero(length == L)
            pos = core.changepoint_positions(int(L), opts.n_changepoints, opts.changepoint_range)
            if len(pos):
                cp_idx[np.ix_(rows[sel], np.arange(len(pos)))] = pos[None, :]
    status = np.where(ok, "ok", "skipped").astype(object)
    return ChunkResult(
        options=opts,
        units=chunk.units,
        keys=chunk.keys,
        status=status,
        reason=reason,
        length=length_all,
        ds_ns=ds_all,
        y=y_all,
        y_sd=sd_all,
        delta=delta,
        changepoints_t=cp_t,
        changepoint_index=cp_idx,
        cp_mask=cp_mask,
        answers=chunk.answers,
        **res,
    )


# --- estimators -------------------------------------------------------------------------------------------------


class BatchForecaster:
    """The fast engine: prophet's model fitted by vectorised MAP for many series (module docstring).

    Hyper-parameters: those of :class:`ForecastOptions`, plus ``chunk_size`` (units per :func:`fit_chunk` call).
    ``fit(frame, unit=, ds=, y=, y_sd=, answers=, map_fn=)`` (``answers``: the answers that measure the points, see
    :func:`make_chunks`): ``map_fn`` maps :func:`fit_chunk` over the chunks (default: the built-in ``map``; pass e.g.
    ``executor.map`` of a process pool). Learned: ``results_`` (one :class:`ChunkResult` per chunk), ``forecast_``,
    ``fitted_``, ``anomalies_``, ``skipped_``, ``fits_`` frames.
    """

    def __init__(self, *, chunk_size: int = 5000, **options: Any) -> None:
        self.chunk_size = chunk_size
        self.options = ForecastOptions(**options)

    results_: list[ChunkResult] | None = None
    forecast_: pd.DataFrame | None = None
    fitted_: pd.DataFrame | None = None
    anomalies_: pd.DataFrame | None = None
    skipped_: pd.DataFrame | None = None
    fits_: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"BatchForecaster(chunk_size={self.chunk_size!r}, {self.options!r})"

    def get_params(self) -> dict[str, Any]:
        return {"chunk_size": self.chunk_size, **self.options.to_dict()}

    def fit(
        self,
        frame: pd.DataFrame,
        *,
        unit: str = "unit",
        ds: str = "ds",
        y: str = "y",
        y_sd: str | None = None,
        answers: pd.DataFrame | None = None,
        map_fn: Callable[[Callable[[SeriesChunk], ChunkResult], Iterable[SeriesChunk]], Iterable[ChunkResult]]
        | None = None,
    ) -> BatchForecaster:
        chunks = make_chunks(frame, unit=unit, ds=ds, y=y, y_sd=y_sd, answers=answers, chunk_size=self.chunk_size)
        work = _ChunkFitter(self.options)
        mapper = map_fn if map_fn is not None else map
        results = list(mapper(work, chunks))
        self.results_ = results
        frames = [
            (r.forecast_frame(), r.fitted_frame(), r.anomalies_frame(), r.skipped_frame(), r.fits_frame())
            for r in results
        ]

        def cat(i: int) -> pd.DataFrame:
            parts = [f[i] for f in frames]
            return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

        self.forecast_, self.fitted_, self.anomalies_, self.skipped_, self.fits_ = (cat(i) for i in range(5))
        return self

    def _locate(self, unit: Any) -> tuple[ChunkResult, int]:
        check_fitted(self, "results_")
        assert self.results_ is not None
        for r in self.results_:
            hit = np.flatnonzero(r.units == unit)
            if len(hit):
                return r, int(hit[0])
        raise InvalidInputError(f"unknown unit {_plain(unit)!r}", {"unit": str(unit)})

    def model(self, unit: Any) -> ForecastModel:
        """The fitted model of one unit (raises :class:`InsufficientDataError` for a skipped one)."""
        r, i = self._locate(unit)
        return r.model(i)

    def predict(self) -> pd.DataFrame:
        """The forecast rows of every fitted unit (``forecast_``)."""
        check_fitted(self, "forecast_")
        assert self.forecast_ is not None
        return self.forecast_

    def to_json(self, unit: Any) -> dict[str, Any]:
        return self.model(unit).to_json()


@dataclass(frozen=True)
class _ChunkFitter:
    """``fit_chunk`` with its options bound (picklable, unlike a lambda)."""

    options: ForecastOptions

    def __call__(self, chunk: SeriesChunk) -> ChunkResult:
        return fit_chunk(chunk, self.options)


def _quiet_cmdstanpy() -> None:
    """cmdstanpy logs every optimisation at INFO: keep its warnings only. Its ``get_logger`` (cached) installs its
    handler and level on first use, so it is called first and the level set after it."""
    from cmdstanpy.utils import get_logger

    get_logger().setLevel(logging.WARNING)


class ProphetForecaster:
    """The reference engine: ``prophet.Prophet`` fitted to one series (module docstring).

    Hyper-parameters: those of :class:`ForecastOptions`, plus prophet's seasonality flags ``yearly_seasonality``,
    ``weekly_seasonality`` (``False``, ``True`` = prophet's default order 10 / 3, or a Fourier order) and
    ``seasonality_prior_scale`` (10). Seasonalities are additive. ``fit(ds, y, y_sd=None)`` (or a frame with
    ``ds``, ``y`` columns) returns self. Learned: ``model_`` (:class:`ForecastModel`), ``prophet_`` (the fitted
    ``Prophet``; not serialised), ``stan_lp_`` (the ``lp__`` Stan reported). ``predict()`` is the forecast of
    ``model_``; ``predict_prophet()`` prophet's own ``predict`` on the same dates (its intervals are random).
    """

    def __init__(
        self,
        *,
        yearly_seasonality: bool | int = False,
        weekly_seasonality: bool | int = False,
        seasonality_prior_scale: float = 10.0,
        key: int = 0,
        **options: Any,
    ) -> None:
        self.yearly_seasonality = yearly_seasonality
        self.weekly_seasonality = weekly_seasonality
        self.seasonality_prior_scale = seasonality_prior_scale
        self.key = key
        self.options = ForecastOptions(**options)

    model_: ForecastModel | None = None
    prophet_: Any = None
    stan_lp_: float | None = None

    def __repr__(self) -> str:
        return (
            f"ProphetForecaster(yearly_seasonality={self.yearly_seasonality!r}, "
            f"weekly_seasonality={self.weekly_seasonality!r}, "
            f"seasonality_prior_scale={self.seasonality_prior_scale!r}, "
            f"key={self.key!r}, {self.options!r})"
        )

    def _seasonalities(self) -> tuple[Seasonality, ...]:
        out: list[Seasonality] = []
        for name, flag, period, default in (
            ("yearly", self.yearly_seasonality, 365.25, 10),
            ("weekly", self.weekly_seasonality, 7.0, 3),
        ):
            if flag is True:
                order = default
            elif flag is False or flag == 0:
                order = 0
            elif isinstance(flag, int) and flag > 0:
                order = flag
            else:
                raise InvalidInputError(
                    f"{name}_seasonality must be true, false or a positive Fourier order, got {flag!r}",
                    {"problems": [{"parameter": f"{name}_seasonality"}]},
                )
            if order:
                out.append(Seasonality(name, period, order, float(self.seasonality_prior_scale)))
        return tuple(out)

    def fit(self, ds: Any, y: Any = None, y_sd: Any = None) -> ProphetForecaster:
        from prophet import Prophet

        _quiet_cmdstanpy()
        if isinstance(ds, pd.DataFrame) and y is None:
            frame = ds
            missing = [c for c in ("ds", "y") if c not in frame.columns]
            if missing:
                raise InvalidInputError(
                    f"series frame lacks column(s): {', '.join(missing)}",
                    {"problems": [{"column": c, "reason": "missing"} for c in missing]},
                )
            ds, y = frame["ds"], frame["y"]
            if y_sd is None and "y_sd" in frame.columns:
                y_sd = frame["y_sd"]
        ds_ns = _to_ns(ds, "ds")
        yv = _to_float(y, "y")
        sd = None if y_sd is None else _to_float(y_sd, "y_sd")
        if len(ds_ns) != len(yv) or (sd is not None and len(sd) != len(yv)):
            raise InvalidInputError("ds, y (and y_sd) must have the same length", {"problems": [{"column": "y"}]})
        keep = ~np.isnan(yv)
        order = np.argsort(ds_ns[keep], kind="stable")
        ds_ns, yv = ds_ns[keep][order], yv[keep][order]
        sd = None if sd is None else sd[keep][order]
        opts = self.options
        if not np.isfinite(yv).all():
            raise InvalidInputError("y has non-finite values", {"problems": [{"column": "y", "reason": "non-finite"}]})
        if len(np.unique(ds_ns)) != len(ds_ns):
            raise InvalidInputError("ds has repeated dates", {"problems": [{"column": "ds", "reason": "repeated"}]})
        if len(yv) < opts.min_points:
            raise InsufficientDataError(
                f"the series has {len(yv)} point(s); at least {opts.min_points} are needed",
                {"points": len(yv), "min_points": opts.min_points},
            )
        seasonalities = self._seasonalities()
        model = Prophet(
            growth="linear",
            n_changepoints=opts.n_changepoints,
            changepoint_range=opts.changepoint_range,
            changepoint_prior_scale=opts.changepoint_prior_scale,
            interval_width=opts.interval_width,
            uncertainty_samples=opts.uncertainty_samples,
            yearly_seasonality=False,
            weekly_seasonality=False,
            daily_seasonality=False,
            seasonality_mode="additive",
        )
        for s in seasonalities:
            model.add_seasonality(
                name=s.name, period=s.period, fourier_order=s.fourier_order, prior_scale=s.prior_scale
            )
        model.fit(pd.DataFrame({"ds": pd.to_datetime(ds_ns), "y": yv}))
        params = model.params
        stan_fit = model.stan_fit
        self.stan_lp_ = float(stan_fit.optimized_params_dict["lp__"]) if stan_fit is not None else None
        cp_t = np.asarray(model.changepoints_t, dtype=np.float64)
        cps = model.changepoints
        cp_ns = (
            np.asarray(pd.DatetimeIndex(cps).as_unit("ns").asi8, dtype=np.int64)
            if cps is not None and len(cps)
            else np.zeros(0, dtype=np.int64)
        )
        beta = np.asarray(params["beta"], dtype=np.float64).reshape(-1) if seasonalities else np.zeros(0)
        k = float(params["k"].reshape(-1)[0])
        m = float(params["m"].reshape(-1)[0])
        delta = np.asarray(params["delta"], dtype=np.float64).reshape(-1)
        sigma = float(params["sigma_obs"].reshape(-1)[0])
        y_scale = float(model.y_scale)  # type: ignore[arg-type]
        start_ns = int(pd.Timestamp(model.start).value)  # type: ignore[arg-type]
        t_scale_ns = int(pd.Timedelta(model.t_scale).value)  # type: ignore[arg-type]
        self.prophet_ = model
        self.model_ = ForecastModel(
            options=opts,
            k=k,
            m=m,
            delta=delta,
            sigma_obs=sigma,
            changepoints_t=cp_t,
            changepoints_ns=cp_ns,
            y_scale=y_scale,
            start_ns=start_ns,
            t_scale_ns=t_scale_ns,
            history_ds_ns=ds_ns,
            history_y=yv,
            history_y_sd=sd,
            key=int(self.key),
            log_posterior=math.nan,
            converged=True,
            fitted_by="prophet",
            seasonalities=seasonalities,
            beta=beta,
        )
        self.model_.log_posterior = _model_log_posterior(self.model_)
        return self

    def _model(self) -> ForecastModel:
        check_fitted(self, "model_")
        assert self.model_ is not None
        return self.model_

    def predict(self) -> pd.DataFrame:
        """The forecast (see :meth:`ForecastModel.predict`)."""
        return self._model().predict()

    def fitted(self) -> pd.DataFrame:
        return self._model().fitted()

    def anomalies(self) -> pd.DataFrame:
        return self._model().anomalies()

    def predict_prophet(self) -> pd.DataFrame:
        """Prophet's own ``predict`` on the history and the forecast dates (``ds``, ``trend``, ``yhat``,
        ``yhat_lower``, ``yhat_upper``); its intervals use NumPy's global random state."""
        model = self._model()
        if self.prophet_ is None:
            raise InvalidInputError("prophet's own model is not available after from_json", {})
        future = np.concatenate(
            [model.history_ds_ns, model.predict()["ds"].to_numpy().astype("datetime64[ns]").astype(np.int64)]
        )
        out: pd.DataFrame = self.prophet_.predict(pd.DataFrame({"ds": pd.to_datetime(future)}))
        return out[["ds", "trend", "yhat", "yhat_lower", "yhat_upper"]].reset_index(drop=True)

    def to_json(self) -> dict[str, Any]:
        return self._model().to_json()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProphetForecaster:
        model = ForecastModel.from_json(data)
        est = cls(key=model.key, **model.options.to_dict())
        est.model_ = model
        return est


# --- forecast error ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForecastError:
    """MAE of the ``step``-ahead forecast over ``n`` (unit, date) pairs with a truth, beside the naive forecast
    (the unit's last observed value); ``skill = 1 - mae / mae_naive`` (> 0: the model beats the naive forecast)."""

    step: int
    n: int
    mae: float
    mae_naive: float
    skill: float


def forecast_error(
    forecast: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    step: int = 4,
    unit: str = "unit",
    ds: str = "ds",
    y: str = "y",
) -> ForecastError:
    """MAE of ``yhat`` and of the naive ``last_y`` against ``truth[y]`` for the forecast rows of ``step``.

    ``forecast``: rows as :meth:`ChunkResult.forecast_frame` / ``BatchForecaster.forecast_`` (``unit``, ``step``,
    ``ds``, ``yhat``, ``last_y``); ``truth``: ``unit``, ``ds``, ``y`` (columns named by the keywords). Forecast rows
    without a truth are left out; none left raises :class:`InsufficientDataError`.
    """
    need = {"unit", "step", "ds", "yhat", "last_y"}
    missing = sorted(need - set(forecast.columns)) + sorted({unit, ds, y} - set(truth.columns))
    if missing:
        raise InvalidInputError(
            f"forecast_error: missing column(s) {', '.join(missing)}", {"problems": [{"column": c} for c in missing]}
        )
    rows = forecast.loc[forecast["step"] == step, ["unit", "ds", "yhat", "last_y"]]
    rows = rows.assign(ds=pd.to_datetime(rows["ds"]).astype("datetime64[ns]"))
    t = truth[[unit, ds, y]].rename(columns={unit: "unit", ds: "ds", y: "_truth"})
    t = t.assign(ds=pd.to_datetime(t["ds"]).astype("datetime64[ns]"))
    both = rows.merge(t, on=["unit", "ds"], how="inner").dropna(subset=["_truth"])
    if both.empty:
        raise InsufficientDataError(f"no {step}-step-ahead forecast has a truth to compare with", {"step": step})
    mae = float(np.abs(both["yhat"] - both["_truth"]).mean())
    naive = float(np.abs(both["last_y"] - both["_truth"]).mean())
    return ForecastError(
        step=step, n=len(both), mae=mae, mae_naive=naive, skill=1.0 - mae / naive if naive > 0 else math.nan
    )
