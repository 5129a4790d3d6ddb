"""The forecast engines against prophet itself, the simulator's truth, and their contract.

Agreement with prophet, on a sample of 20 students of the default synthetic world (their last 12 weeks of the
placeholder index ``100 (correct + 1) / (attempts + 2)``) and on kinked series with a weak changepoint prior:

- our ``log_posterior`` at prophet's parameters equals the ``lp__`` Stan reports (which has 8 significant digits);
- the fast engine's log-posterior is at least prophet's (tolerance 1e-9): its optimum is exact, Stan's Newton stops
  a little short of it;
- ``yhat`` (history and the 4 forecast weeks) within 2% of the series' ``y_scale`` (max |y|) of prophet's (observed:
  at most 0.5% here, 0.7% over 120 series of bench/forecast.py; the gap is prophet's optimiser stopping short);
- interval bounds within 10% of prophet's interval width: both are Monte-Carlo quantiles (4000 draws here), prophet's
  from NumPy's global generator, ours seeded per series; in-sample ours are the exact limit of prophet's simulation.
"""

from __future__ import annotations

import json
import math
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from learnpulse.engines import forecast_core as core
from learnpulse.engines.forecast import (
    BatchForecaster,
    ForecastModel,
    ForecastOptions,
    ProphetForecaster,
    fit_chunk,
    forecast_error,
    make_chunks,
)
from learnpulse.errors import InsufficientDataError, InvalidInputError, NotFittedError
from learnpulse.synthetic import World, WorldParams, generate_world

LOOKBACK_WEEKS = 12
SAMPLE = 20
LP_TOL = 1e-9
YHAT_TOL = 0.02  # x y_scale
BOUND_TOL = 0.10  # x prophet's interval width
DRAWS = 4000  # uncertainty samples when bounds are compared
START = pd.Timestamp("2026-03-02")


# --- the synthetic world's weekly series ---------------------------------------------------------------------


def weekly_index(world: World) -> pd.DataFrame:
    """Per student and local Monday-start week: attempts, correct, the placeholder ``I_t`` (as build-kpi)."""
    p = world.params
    a = world.attempts
    local_day = a["answered_at"].dt.tz_convert(p.timezone).dt.tz_localize(None).dt.normalize()
    week = (local_day - pd.Timestamp(p.start_date)).dt.days // 7
    g = (
        a.assign(week=week)
        .groupby(["user_id", "week"])
        .agg(attempts=("is_correct", "size"), correct=("is_correct", "sum"))
        .reset_index()
    )
    g["I_t"] = 100.0 * (g["correct"] + 1) / (g["attempts"] + 2)
    g["ds"] = pd.Timestamp(p.start_date) + pd.to_timedelta(7 * g["week"], unit="D")
    return g


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(WorldParams())  # the default world: 2,000 students x 16 weeks, seed 42


@pytest.fixture(scope="module")
def series(world: World) -> pd.DataFrame:
    """The last ``LOOKBACK_WEEKS`` weeks of every student (what forecast-prophet reads at the world's end)."""
    g = weekly_index(world)
    return g[g["week"] > world.params.weeks - 1 - LOOKBACK_WEEKS].reset_index(drop=True)


@pytest.fixture(scope="module")
def batch(series: pd.DataFrame) -> BatchForecaster:
    return BatchForecaster().fit(series, unit="user_id", ds="ds", y="I_t")


def kinked_series(n: int, seed: int = 5) -> pd.DataFrame:
    """12 weekly points: a rise that bends down at a random week, plus noise (real changepoints to find)."""
    rng = np.random.default_rng(seed)
    rows = []
    for unit in range(1, n + 1):
        weeks = np.arange(12)
        kink = rng.integers(3, 9)
        y = 40 + 3 * weeks - rng.uniform(3, 8) * np.maximum(weeks - kink, 0) + rng.normal(0, 1.5, 12)
        rows += [(unit, START + pd.Timedelta(weeks=int(w)), float(v)) for w, v in zip(weeks, y, strict=True)]
    return pd.DataFrame(rows, columns=["unit", "ds", "y"])


# --- agreement with prophet ----------------------------------------------------------------------------------


def compare_with_prophet(frame: pd.DataFrame, units: list[Any], fast: BatchForecaster, **options: Any) -> list[str]:
    """Fit prophet to each unit; assert the agreement stated in the module docstring; return one line per unit."""
    lines = []
    for unit in units:
        s = frame[frame["unit"] == unit]
        ref = ProphetForecaster(key=int(unit), **options).fit(s["ds"], s["y"])
        mine = fast.model(unit)
        assert ref.model_ is not None and ref.stan_lp_ is not None
        prophet_model = ref.prophet_
        # same design: changepoints and scaling
        np.testing.assert_allclose(mine.changepoints_t, prophet_model.changepoints_t, rtol=0, atol=1e-15)
        assert mine.y_scale == ref.model_.y_scale
        assert (mine.start_ns, mine.t_scale_ns) == (ref.model_.start_ns, ref.model_.t_scale_ns)
        # our lp__ formula is Stan's (Stan prints 8 significant digits)
        lp_prophet = ref.model_.log_posterior
        assert abs(lp_prophet - ref.stan_lp_) <= 1e-6 * max(1.0, abs(lp_prophet)), (unit, lp_prophet, ref.stan_lp_)
        # the fast fit reaches at least prophet's log-posterior
        assert mine.log_posterior >= lp_prophet - LP_TOL, (unit, mine.log_posterior, lp_prophet)
        # prophet's own predictions equal ours from its parameters (yhat is deterministic)
        own = ref.predict_prophet()
        ours_ref = np.concatenate([ref.fitted()["yhat"].to_numpy(), ref.predict()["yhat"].to_numpy()])
        np.testing.assert_allclose(ours_ref, own["yhat"].to_numpy(), rtol=1e-12, atol=1e-9 * mine.y_scale)
        # the fast engine's forecasts against prophet's
        fitted, fc = mine.fitted(), mine.predict()
        yhat = np.concatenate([fitted["yhat"].to_numpy(), fc["yhat"].to_numpy()])
        lower = np.concatenate([fitted["yhat_lower"].to_numpy(), fc["yhat_lower"].to_numpy()])
        upper = np.concatenate([fitted["yhat_upper"].to_numpy(), fc["yhat_upper"].to_numpy()])
        width = (own["yhat_upper"] - own["yhat_lower"]).to_numpy()
        d_yhat = np.abs(yhat - own["yhat"].to_numpy()).max() / mine.y_scale
        d_bounds = max(
            (np.abs(lower - own["yhat_lower"].to_numpy()) / width).max(),
            (np.abs(upper - own["yhat_upper"].to_numpy()) / width).max(),
        )
        assert d_yhat <= YHAT_TOL, (unit, d_yhat)
        assert d_bounds <= BOUND_TOL, (unit, d_bounds)
        lines.append(
            f"unit {unit}: points {len(s)}, lp prophet {lp_prophet:.6f} fast {mine.log_posterior:.6f} "
            f"(+{mine.log_posterior - lp_prophet:.1e}), max|dyhat|/y_scale {d_yhat:.1e}, "
            f"max|dbound|/width {d_bounds:.3f}"
        )
    return lines


def test_fast_engine_matches_prophet_on_sampled_students(series: pd.DataFrame, batch: BatchForecaster) -> None:
    assert batch.fits_ is not None
    assert batch.fits_["converged"].all()
    rng = np.random.default_rng(2024)
    units = sorted(rng.choice(batch.fits_["unit"].to_numpy(), SAMPLE, replace=False).tolist())
    frame = series.rename(columns={"user_id": "unit", "I_t": "y"})
    frame = frame[frame["unit"].isin(units)]
    # more draws than the default 1000 on both sides, so the Monte-Carlo error of the bounds stays well inside
    # the tolerance (at 1000 the largest of 640 compared bounds is 8-11% of the width, depending on the seed)
    fast = BatchForecaster(uncertainty_samples=DRAWS).fit(frame)
    np.random.seed(11)  # prophet's interval simulation uses NumPy's global generator
    lines = compare_with_prophet(frame, units, fast, uncertainty_samples=DRAWS)
    print("\n".join(lines))


def test_fast_engine_matches_prophet_with_real_changepoints() -> None:
    """A weak changepoint prior (tau = 0.5) on kinked series: several non-zero deltas, the Laplace kink matters."""
    frame = kinked_series(6)
    fast = BatchForecaster(changepoint_prior_scale=0.5, uncertainty_samples=DRAWS).fit(frame)
    assert fast.fits_ is not None
    assert (fast.fits_["nonzero_deltas"] >= 2).all()
    assert (fast.fits_["nonzero_deltas"] < fast.fits_["changepoints"]).any()  # and exact zeros
    np.random.seed(12)
    lines = compare_with_prophet(frame, list(range(1, 7)), fast, changepoint_prior_scale=0.5, uncertainty_samples=DRAWS)
    print("\n".join(lines))


def test_map_fit_is_a_stationary_point_that_restarts_do_not_beat() -> None:
    frame = kinked_series(8, seed=9)
    chunk = make_chunks(frame)[0]
    des = core.build_design(
        chunk.ds_ns, chunk.y, np.full(8, 12, dtype=np.int64), n_changepoints=25, changepoint_range=0.8
    )
    X = core.design_matrix(des.t, des.cp, des.cp_mask)
    w = des.observed.astype(float)
    tau = 0.3
    fit = core.map_fit(X, des.y, w, cp_mask=des.cp_mask, tau=tau, beta0=core.initial_beta(des, w))
    assert fit.converged.all()
    # KKT: |grad_j| <= 1/tau where delta_j = 0, grad_j = -sign(delta_j)/tau elsewhere, k and m: grad = 0
    st = core._evaluate(X, des.y, w, n_obs=w.sum(axis=1), beta=fit.beta, lam=1 / tau, ridge=np.r_[0.04, 0.04, [0] * 8])
    l1 = np.concatenate([np.zeros((8, 2), dtype=bool), des.cp_mask], axis=1)
    pg = core._pseudo_gradient(fit.beta, st.g, 1 / tau, l1)
    assert np.abs(pg).max() <= 1e-6
    deltas = fit.beta[:, 2:]
    assert (deltas == 0).any() and (deltas != 0).any()
    # the profiled sigma is the optimal one: lp at sigma * (1 +- 1e-3) is lower
    lp = core.log_posterior(
        des.t, des.y, w, k=fit.beta[:, 0], m=fit.beta[:, 1], delta=deltas, cp=des.cp, sigma=fit.sigma, tau=tau
    )
    np.testing.assert_allclose(lp, fit.lp, rtol=1e-12)
    for f in (0.999, 1.001):
        other = core.log_posterior(
            des.t, des.y, w, k=fit.beta[:, 0], m=fit.beta[:, 1], delta=deltas, cp=des.cp, sigma=fit.sigma * f, tau=tau
        )
        assert (other < lp).all()
    rng = np.random.default_rng(0)
    for _ in range(3):
        start = core.initial_beta(des, w) + rng.normal(0, 0.5, fit.beta.shape) * np.c_[np.ones((8, 2)), des.cp_mask]
        again = core.map_fit(X, des.y, w, cp_mask=des.cp_mask, tau=tau, beta0=start)
        assert (again.lp <= fit.lp + 1e-9).all()


def test_reference_engine_with_seasonality_reproduces_prophet() -> None:
    rng = np.random.default_rng(4)
    ds = START + pd.to_timedelta(7 * np.arange(110), unit="D")
    day = (ds - pd.Timestamp("1970-01-01")).days.to_numpy()
    y = 50 + 0.1 * np.arange(110) + 6 * np.sin(2 * np.pi * day / 365.25) + rng.normal(0, 1, 110)
    ref = ProphetForecaster(yearly_seasonality=2, horizon=6).fit(ds, y)
    assert ref.model_ is not None and ref.stan_lp_ is not None
    assert len(ref.model_.beta) == 4
    assert abs(ref.model_.log_posterior - ref.stan_lp_) <= 1e-6 * abs(ref.stan_lp_)
    own = ref.predict_prophet()
    ours = np.concatenate([ref.fitted()["yhat"].to_numpy(), ref.predict()["yhat"].to_numpy()])
    np.testing.assert_allclose(ours, own["yhat"].to_numpy(), rtol=1e-12, atol=1e-9)
    again = ForecastModel.from_json(json.loads(json.dumps(ref.to_json())))
    pd.testing.assert_frame_equal(again.predict(), ref.predict())


# --- serialisation and contract --------------------------------------------------------------------------------


def test_models_round_trip_through_json(series: pd.DataFrame, batch: BatchForecaster) -> None:
    assert batch.fits_ is not None and batch.anomalies_ is not None
    flagged = batch.anomalies_["unit"].iloc[0]
    for unit in (batch.fits_["unit"].iloc[0], flagged):
        model = batch.model(unit)
        data = json.loads(json.dumps(model.to_json()))
        assert data["engine"] == "prophet" and data["fitted_by"] == "batch-map"
        assert {"k", "m", "delta", "sigma_obs"} <= set(data["params"])
        assert {"y_scale", "start", "t_scale_days"} <= set(data["scaling"])
        again = ForecastModel.from_json(data)
        assert again.to_json() == data
        pd.testing.assert_frame_equal(again.predict(), model.predict())
        pd.testing.assert_frame_equal(again.fitted(), model.fitted())
        pd.testing.assert_frame_equal(again.anomalies(), model.anomalies())
        # and equal to what the batch reported
        rows = batch.forecast_[batch.forecast_["unit"] == unit] if batch.forecast_ is not None else None
        assert rows is not None
        np.testing.assert_array_equal(rows["yhat_lower"].to_numpy(), again.predict()["yhat_lower"].to_numpy())
        np.testing.assert_array_equal(rows["yhat"].to_numpy(), again.predict()["yhat"].to_numpy())
    mine = batch.anomalies_[batch.anomalies_["unit"] == flagged].drop(columns="unit").reset_index(drop=True)
    pd.testing.assert_frame_equal(ForecastModel.from_json(batch.to_json(flagged)).anomalies(), mine)
    # the reference engine's model too, and ProphetForecaster.from_json
    s = series[series["user_id"] == flagged]
    ref = ProphetForecaster(key=int(flagged)).fit(s[["ds", "I_t"]].rename(columns={"I_t": "y"}))
    loaded = ProphetForecaster.from_json(json.loads(json.dumps(ref.to_json())))
    pd.testing.assert_frame_equal(loaded.predict(), ref.predict())
    pd.testing.assert_frame_equal(loaded.anomalies(), ref.anomalies())
    assert loaded.to_json()["fitted_by"] == "prophet"


def test_json_errors_are_clear(batch: BatchForecaster) -> None:
    assert batch.fits_ is not None
    data = batch.to_json(batch.fits_["unit"].iloc[0])
    with pytest.raises(InvalidInputError, match="not a serialised prophet model"):
        ForecastModel.from_json({**data, "engine": "coxph"})
    with pytest.raises(InvalidInputError, match="unsupported prophet model version"):
        ForecastModel.from_json({**data, "version": 99})
    with pytest.raises(InvalidInputError, match="delta and changepoints_t"):
        ForecastModel.from_json({**data, "changepoints_t": [0.5]})
    with pytest.raises(InvalidInputError, match="invalid serialised prophet model"):
        ForecastModel.from_json({k: v for k, v in data.items() if k != "params"})


def test_not_fitted_and_bad_options() -> None:
    with pytest.raises(NotFittedError):
        ProphetForecaster().predict()
    with pytest.raises(NotFittedError):
        BatchForecaster().model(1)
    with pytest.raises(InvalidInputError, match="horizon"):
        ForecastOptions(horizon=0)
    with pytest.raises(InvalidInputError, match="interval_width"):
        BatchForecaster(interval_width=1.5)
    with pytest.raises(InvalidInputError, match="yearly_seasonality"):
        ProphetForecaster(yearly_seasonality=-1).fit(START + pd.to_timedelta(7 * np.arange(8), unit="D"), range(8))


def test_short_and_bad_series_are_skipped_with_a_reason() -> None:
    ok = [(1, START + pd.Timedelta(weeks=w), 50.0 + w + (w % 3)) for w in range(8)]
    short = [(2, START + pd.Timedelta(weeks=w), 40.0 + w) for w in range(5)]
    dup = [(3, START + pd.Timedelta(weeks=min(w, 6)), 40.0 + w) for w in range(8)]
    inf = [(4, START + pd.Timedelta(weeks=w), np.inf if w == 3 else 40.0 + w) for w in range(8)]
    gaps = [(5, START + pd.Timedelta(weeks=w), np.nan if w % 2 else 45.0 + w) for w in range(12)]  # 6 real points
    frame = pd.DataFrame(ok + short + dup + inf + gaps, columns=["unit", "ds", "y"])
    fast = BatchForecaster().fit(frame)
    assert fast.skipped_ is not None and fast.fits_ is not None
    reasons = dict(zip(fast.skipped_["unit"], fast.skipped_["reason"], strict=True))
    assert reasons == {
        2: "fewer than 6 points (5)",
        3: "repeated ds (one point per date)",
        4: "non-finite y",
    }
    assert sorted(fast.fits_["unit"]) == [1, 5]
    assert fast.fits_.set_index("unit").loc[5, "points"] == 6
    with pytest.raises(InsufficientDataError, match=r"unit 2 was not fitted: fewer than 6 points \(5\)"):
        fast.model(2)
    s = frame[frame["unit"] == 2]
    with pytest.raises(InsufficientDataError, match="at least 6"):
        ProphetForecaster().fit(s["ds"], s["y"])
    s = frame[frame["unit"] == 3]
    with pytest.raises(InvalidInputError, match="repeated"):
        ProphetForecaster().fit(s["ds"], s["y"])


# --- anomalies ------------------------------------------------------------------------------------------------


def constructed(drop_at: int | None = None, size: float = -30.0, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weeks = np.arange(12)
    y = 50 + 2.0 * weeks + rng.normal(0, 2.0, 12)
    if drop_at is not None:
        y[drop_at] += size
    return pd.DataFrame({"unit": 1, "ds": START + pd.to_timedelta(7 * weeks, unit="D"), "y": y})


def test_a_spike_is_found_and_a_clean_trend_is_not_flagged() -> None:
    for seed in range(5):
        clean = BatchForecaster().fit(constructed(seed=seed))
        assert clean.anomalies_ is not None and clean.anomalies_.empty, clean.anomalies_
    frame = constructed(drop_at=7)
    found = BatchForecaster().fit(frame)
    assert found.anomalies_ is not None
    a = found.anomalies_
    assert list(a["ds"]) == [START + pd.Timedelta(weeks=7)]
    row = a.iloc[0]
    assert row["direction"] == "drop" and row["score"] > 2.5 and row["residual"] < 0
    assert not row["expected_lower"] <= row["y"] <= row["expected_upper"]
    assert abs(row["yhat"] - (50 + 2.0 * 7)) < 3.0  # the expected value is the trend, not dragged by the drop
    jump = BatchForecaster().fit(constructed(drop_at=4, size=+25.0))
    assert jump.anomalies_ is not None and list(jump.anomalies_["direction"]) == ["jump"]
    # the reference engine applies the same rule
    ref = ProphetForecaster().fit(frame[["ds", "y"]])
    assert list(ref.anomalies()["ds"]) == [START + pd.Timedelta(weeks=7)]


def test_robust_refit_is_not_dragged_by_the_anomaly() -> None:
    frame = constructed(drop_at=5, size=-40.0)
    plain = BatchForecaster(robust_refit=False).fit(frame)
    robust = BatchForecaster().fit(frame)
    assert plain.anomalies_ is not None and robust.anomalies_ is not None
    truth = 50 + 2.0 * 5
    assert abs(robust.anomalies_["yhat"].iloc[0] - truth) < abs(plain.anomalies_["yhat"].iloc[0] - truth)
    assert robust.anomalies_["score"].iloc[0] > plain.anomalies_["score"].iloc[0]


def test_flat_and_quantised_series_do_not_flag_everything() -> None:
    flat = pd.DataFrame({"unit": 1, "ds": START + pd.to_timedelta(7 * np.arange(10), unit="D"), "y": 75.0})
    fast = BatchForecaster().fit(flat)
    assert fast.fits_ is not None and fast.anomalies_ is not None
    assert fast.anomalies_.empty
    assert fast.fits_["sigma_obs"].iloc[0] == 1e-9  # prophet's rule for a constant series
    np.testing.assert_allclose(fast.forecast_["yhat"] if fast.forecast_ is not None else [], 75.0)
    # values on a coarse grid (few attempts a week): MAD ~ 0 would flag every other week without the floor
    steps = pd.DataFrame(
        {"unit": 1, "ds": START + pd.to_timedelta(7 * np.arange(12), unit="D"), "y": [66.7, 66.7, 75.0] * 4}
    )
    quantised = BatchForecaster().fit(steps)
    assert quantised.anomalies_ is not None and quantised.anomalies_.empty


def test_anomaly_precision_recall_on_the_default_world(world: World, series: pd.DataFrame) -> None:
    """The injected one-week ability drops, against the flagged weeks (both directions count as claims).

    Measured on the default world (2,000 students, last 12 weeks, 351 injected drops in them):
    the index alone: precision 0.32, recall 0.68; with each week's sampling SD of the index (``y_sd``, from its
    number of attempts and the student's median accuracy): precision 0.79, recall 0.64. The issue's bar (precision
    >= 0.8 and recall >= 0.7) is not reached at the engine level with the placeholder index: a week's index is a
    proportion of a handful of answers, so ordinary weeks with few attempts swing as far as a real drop, and a drop of
    2.5 logits moves the accuracy of a weak student (20-50%) by less than two sampling SDs. The asserted floors are
    below the measured values by a small margin, so a regression fails.
    """
    weeks = pd.to_datetime(world.anomalies["week_start"]).astype("datetime64[ns]")
    truth = set(zip(world.anomalies["user_id"], weeks, strict=True))
    first = pd.Timestamp(world.params.start_date) + pd.Timedelta(weeks=world.params.weeks - LOOKBACK_WEEKS)
    truth = {(u, w) for u, w in truth if w >= first}
    med = series.groupby("user_id")["I_t"].transform("median") / 100
    framed = series.assign(y_sd=100 * np.sqrt(series["attempts"] * med * (1 - med)) / (series["attempts"] + 2))
    figures = {}
    for label, sd in (("index alone", None), ("with y_sd", "y_sd")):
        fast = BatchForecaster().fit(framed, unit="user_id", ds="ds", y="I_t", y_sd=sd)
        assert fast.anomalies_ is not None
        flagged = set(zip(fast.anomalies_["unit"], fast.anomalies_["ds"], strict=True))
        hits = len(flagged & truth)
        figures[label] = (hits / len(flagged), hits / len(truth), len(flagged))
    print(
        f"\n{len(truth)} injected drops; "
        + "; ".join(f"{k}: precision {p:.3f}, recall {r:.3f} ({n} flagged)" for k, (p, r, n) in figures.items())
    )
    p_alone, r_alone, _ = figures["index alone"]
    p_sd, r_sd, _ = figures["with y_sd"]
    assert p_alone >= 0.28 and r_alone >= 0.64
    assert p_sd >= 0.75 and r_sd >= 0.60


# --- anomalies judged by the answers that measure the points ---------------------------------------------------

GRID = np.linspace(0.0, 100.0, 401)


def eap(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any], x: np.ndarray[Any, Any]) -> tuple[float, float]:
    """Posterior mean and SD of a value on 0-100 measured by 2PL answers (``a``, ``b`` on that scale) under a
    N(50, 10^2) population: what calibrate-irt's EAP index is, shrunk toward the population."""
    z = a[:, None] * (GRID[None, :] - b[:, None])
    log_lik = (x[:, None] * np.log(expit(z)) + (1 - x[:, None]) * np.log(expit(-z))).sum(axis=0)
    log_post = log_lik - 0.5 * ((GRID - 50.0) / 10.0) ** 2
    post = np.exp(log_post - log_post.max())
    post /= post.sum()
    mean = float(post @ GRID)
    return mean, float(np.sqrt(post @ GRID**2 - mean * mean))


def answered_students(n: int, *, drop: float | None, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` students, 12 weeks, measured by answers: true value ``v_w = v0 + g w`` on the index scale (``v0 ~ N(50,
    4)``, ``g ~ N(0.5, 0.3)``), 25 answers a week but 8 in week 7, to items ``a = alpha / 10``, ``b = 50 + 10 beta``
    (``alpha ~ LN(0, 0.3)``, ``beta ~ N(0, 1)``); ``y`` = the week's EAP (:func:`eap`) with its posterior SD
    ``y_sd``; with ``drop``, week 7's true value is lowered by it. Returns the series and the answers."""
    rng = np.random.default_rng(seed)
    a_items = np.exp(rng.normal(0.0, 0.3, 300)) / 10
    b_items = 50 + 10 * rng.normal(0.0, 1.0, 300)
    v0, g = rng.normal(50.0, 4.0, n), rng.normal(0.5, 0.3, n)
    points, answers = [], []
    for unit in range(n):
        for week in range(12):
            v, k = v0[unit] + g[unit] * week, 25
            if week == 7:
                v, k = v + (drop or 0.0), 8
            items = rng.integers(0, 300, k)
            x = (rng.random(k) < expit(a_items[items] * (v - b_items[items]))).astype(float)
            ds = START + pd.Timedelta(weeks=week)
            points.append((unit, ds, *eap(a_items[items], b_items[items], x)))
            answers += [(unit, ds, a_items[i], b_items[i], c) for i, c in zip(items, x, strict=True)]
    return (
        pd.DataFrame(points, columns=["unit", "ds", "y", "y_sd"]),
        pd.DataFrame(answers, columns=["unit", "ds", "a", "b", "correct"]),
    )


def test_answer_score_is_the_derivative_of_the_answers_log_likelihood() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.05, 0.2, 40), rng.uniform(20, 80, 40)
    x = (rng.random(40) < 0.5).astype(float)
    point = np.repeat(np.arange(4), 10)  # four points of one (2 x 2) batch

    def log_lik(level: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        z = a * (level.reshape(-1)[point] - b)
        return np.bincount(point, weights=x * np.log(expit(z)) + (1 - x) * np.log(expit(-z)), minlength=4)

    level = np.array([[40.0, 55.0], [61.0, 30.0]])
    u, info = core.answer_score(level, point, a, b, x)
    h = 1e-3
    d1 = (log_lik(level + h) - log_lik(level - h)) / (2 * h)
    d2 = (log_lik(level + h) - 2 * log_lik(level) + log_lik(level - h)) / (h * h)
    np.testing.assert_allclose(u.reshape(-1), d1, rtol=1e-6)
    np.testing.assert_allclose(info.reshape(-1), -d2, rtol=1e-4)


def test_answers_judge_a_week_by_its_own_evidence() -> None:
    """One series whose index (an EAP, shrunk toward the population) dips by only 10 in week 7 with a posterior SD
    of 6, too little for the rule on ``y`` and ``y_sd``; the week's 12 answers, all wrong to items the trend expects
    to be right half of the time, are far out. Every other week's answers sit exactly on the trend (half right to
    items at the trend's value: score 0). Answers of a date without a point, or of another unit, are ignored."""
    weeks = np.arange(12)
    trend = 45.0 + 1.0 * weeks
    frame = pd.DataFrame({"unit": 1, "ds": START + pd.to_timedelta(7 * weeks, unit="D"), "y": trend, "y_sd": 3.0})
    frame.loc[7, ["y", "y_sd"]] = [trend[7] - 10.0, 6.0]
    rows = []
    for w in weeks:
        ds = START + pd.Timedelta(weeks=int(w))
        correct = [0.0] * 12 if w == 7 else [1.0, 0.0] * 10
        rows += [(1, ds, 0.1, trend[w], c) for c in correct]
    stray = [(1, START + pd.Timedelta(days=3), 0.1, 90.0, 0.0), (2, START, 0.1, 90.0, 0.0)]
    answers = pd.DataFrame(rows + stray, columns=["unit", "ds", "a", "b", "correct"])
    without = BatchForecaster().fit(frame, y_sd="y_sd")
    assert without.anomalies_ is not None and without.anomalies_.empty
    judged = BatchForecaster().fit(frame, y_sd="y_sd", answers=answers)
    a = judged.anomalies_
    assert a is not None and list(a["ds"]) == [START + pd.Timedelta(weeks=7)]
    row = a.iloc[0]
    assert row["direction"] == "drop" and row["y"] == trend[7] - 10.0
    # the evidence is one Fisher-scoring step from the expected value: U / I with p = 1/2 at the trend
    info = 12 * 0.1**2 * 0.25
    assert abs(row["yhat"] - trend[7]) < 0.5
    expect_p = expit(0.1 * (row["yhat"] - trend[7]))
    np.testing.assert_allclose(row["evidence"], row["yhat"] - 12 * 0.1 * expect_p / info, rtol=1e-3)
    assert row["evidence"] < row["expected_lower"] < row["y"]
    scale = math.hypot(1 / math.sqrt(info), 0.05 * frame["y"].abs().max())
    np.testing.assert_allclose(row["scale"], scale, rtol=1e-3)
    np.testing.assert_allclose(row["score"], abs(row["evidence"] - row["yhat"]) / row["scale"], rtol=1e-12)
    # the model keeps its answers: the same anomalies from JSON
    model = judged.model(1)
    data = json.loads(json.dumps(model.to_json()))
    assert len(data["history"]["answers"]["point"]) == 20 * 11 + 12  # the stray answers are not kept
    pd.testing.assert_frame_equal(ForecastModel.from_json(data).anomalies(), model.anomalies())
    with pytest.raises(InvalidInputError, match=r"history\.answers"):
        bad = {"point": [99], "a": [0.1], "b": [50.0], "correct": [1.0]}  # no point 99
        ForecastModel.from_json(data | {"history": data["history"] | {"answers": bad}})
    with pytest.raises(InvalidInputError, match="correct not 0/1"):
        BatchForecaster().fit(frame, answers=answers.assign(correct=2.0))


def test_answers_find_more_drops_than_the_shrunk_index_without_more_false_alarms() -> None:
    """200 simulated students (:func:`answered_students`): with a 2.5-logit drop (25 index points) in a week of 8
    answers, the rule on the answers finds more of the drops than the rule on the EAP index and its posterior SD; on
    the same students without drops it flags under 1% of the weeks. Whether chunked or not, the results are the
    same (each series is judged by its own answers)."""
    frame, answers = answered_students(200, drop=-25.0, seed=1)
    week7 = START + pd.Timedelta(weeks=7)
    found = {}
    for label, given in (("index", None), ("answers", answers)):
        a = BatchForecaster().fit(frame, y_sd="y_sd", answers=given).anomalies_
        assert a is not None
        found[label] = int(((a["ds"] == week7) & (a["direction"] == "drop")).sum())
    clean, clean_answers = answered_students(200, drop=None, seed=1)
    false = BatchForecaster().fit(clean, y_sd="y_sd", answers=clean_answers).anomalies_
    assert false is not None
    print(f"\ndrops found of 200: {found}; clean weeks flagged with answers: {len(false)} of {len(clean)}")
    assert found["answers"] >= found["index"] + 10
    assert len(false) < 0.01 * len(clean)
    some = frame[frame["unit"] < 30]
    whole = BatchForecaster().fit(some, y_sd="y_sd", answers=answers)
    split = BatchForecaster(chunk_size=7).fit(some, y_sd="y_sd", answers=answers)
    for name in ("forecast_", "anomalies_", "fits_"):
        pd.testing.assert_frame_equal(getattr(split, name), getattr(whole, name))


# --- chunks, parallel map, forecast error -----------------------------------------------------------------------


def test_fit_chunk_is_pure_picklable_and_independent_of_chunking(series: pd.DataFrame) -> None:
    some = series[series["user_id"] <= 60]
    whole = BatchForecaster().fit(some, unit="user_id", ds="ds", y="I_t")
    with ProcessPoolExecutor(max_workers=2) as pool:
        split = BatchForecaster(chunk_size=7).fit(some, unit="user_id", ds="ds", y="I_t", map_fn=pool.map)
    assert split.results_ is not None and len(split.results_) > 5
    for name in ("forecast_", "fitted_", "anomalies_", "skipped_", "fits_"):
        pd.testing.assert_frame_equal(getattr(split, name), getattr(whole, name))
    chunk = make_chunks(some, unit="user_id", ds="ds", y="I_t", chunk_size=1000)[0]
    result = fit_chunk(pickle.loads(pickle.dumps(chunk)), ForecastOptions())
    again = pickle.loads(pickle.dumps(result))
    pd.testing.assert_frame_equal(again.forecast_frame(), whole.forecast_)


def test_forecast_error_helper_and_the_model_beats_naive(world: World) -> None:
    forecast = pd.DataFrame(
        {"unit": [1, 1, 2], "step": [4, 3, 4], "ds": [START, START, START], "yhat": [10.0, 0.0, 20.0], "last_y": 12.0}
    )
    truth = pd.DataFrame({"unit": [1, 2, 3], "ds": [START] * 3, "y": [11.0, 16.0, 5.0]})
    err = forecast_error(forecast, truth)
    assert (err.n, err.mae, err.mae_naive) == (2, 2.5, 2.5) and err.skill == 0.0
    with pytest.raises(InsufficientDataError):
        forecast_error(forecast, truth.assign(unit=9))
    # on the world: fit weeks up to W-5, forecast 4 weeks; truth = 100 x the expected accuracy of that week
    g = weekly_index(world)
    cut = world.params.weeks - 5
    fast = BatchForecaster().fit(g[(g["week"] <= cut) & (g["week"] > cut - LOOKBACK_WEEKS)], unit="user_id", y="I_t")
    assert fast.forecast_ is not None
    latent = world.student_weeks.assign(y=100 * world.student_weeks["expected_accuracy"])
    result = forecast_error(fast.forecast_, latent, unit="user_id", ds="week_start", step=4)
    print(f"\n4-week-ahead MAE {result.mae:.2f} vs naive {result.mae_naive:.2f} (n={result.n})")
    assert result.n > 1000 and result.mae < result.mae_naive


def test_quantiles_are_numpys_percentiles() -> None:
    x = np.random.default_rng(0).normal(size=(3, 5, 1000))
    ours = core._linear_quantiles(x, (0.1, 0.9))
    np.testing.assert_allclose(ours, np.percentile(x, [10, 90], axis=-1), rtol=0, atol=1e-15)
