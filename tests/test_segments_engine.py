"""Learner segments: the feature builder (by hand on tiny frames), the engine (k choice, determinism, JSON, errors,
GMM), stable ids and names, and the quality bars on the default synthetic school.

The school's features come from the frames build-kpi really writes: the simulated attempts are loaded into a SQLite
database, build-kpi runs, and weekly_kpi / features_topic_daily are read back (once per module and world).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from learnpulse.engines.segments import (
    SegmentModel,
    align_segments,
    aspect_scores,
    segment_names,
)
from learnpulse.errors import InsufficientDataError, InvalidInputError, NotFittedError
from learnpulse.segment_features import (
    FEATURE_NAMES,
    LOG_FEATURES,
    SKIP_TOO_FEW_WEEKS,
    SegmentFeatures,
    TrendPrior,
    build_features,
    window,
)
from learnpulse.store.db import make_engine
from learnpulse.store.schema import upgrade
from learnpulse.synthetic import WorldParams, generate_world
from tests.helpers import build_kpi, load_batch, read_table

MONDAY = date(2026, 3, 2)  # a Monday
# An infinite residual scale (no week is odd) and prior variance (no shrinkage): plain weighted least squares.
NO_SHRINK = TrendPrior(s2=math.inf, mean=0.0, tau2=math.inf, students=0)


# --- tiny frames -------------------------------------------------------------------------------------------------


def weekly_rows(rows: list[tuple[int, int, int, int, int, float, float | None]]) -> pd.DataFrame:
    """rows: (user_id, week index from MONDAY, attempts, correct, active_days, study_minutes, i_t or None)."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "week_start": [MONDAY + timedelta(weeks=r[1]) for r in rows],
            "attempts": [r[2] for r in rows],
            "correct": [r[3] for r in rows],
            "accuracy": [r[3] / r[2] for r in rows],
            "active_days": [r[4] for r in rows],
            "study_minutes": [r[5] for r in rows],
            "i_t": [np.nan if r[6] is None else r[6] for r in rows],
        }
    )


def daily_rows(rows: list[tuple[int, int, int, int, int]]) -> pd.DataFrame:
    """rows: (user_id, day index from MONDAY, topic_id, attempts, correct)."""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "day": [MONDAY + timedelta(days=r[1]) for r in rows],
            "topic_id": [r[2] for r in rows],
            "attempts": [r[3] for r in rows],
            "correct": [r[4] for r in rows],
        }
    )


def as_of_after(weeks: int) -> date:
    """The Sunday ending week ``weeks - 1`` (so the window's last week is that one)."""
    return MONDAY + timedelta(weeks=weeks, days=-1)


def test_window_is_the_complete_weeks_ending_on_or_before_the_as_of_date() -> None:
    sunday = date(2026, 3, 29)
    assert window(sunday, 2) == (date(2026, 3, 16), sunday)
    # Monday to Saturday of the next week: that week is under way, so it is left out.
    for days in range(1, 7):
        assert window(sunday + timedelta(days=days), 2) == (date(2026, 3, 16), sunday)
    assert window(sunday + timedelta(days=7), 1) == (date(2026, 3, 30), sunday + timedelta(days=7))
    with pytest.raises(InvalidInputError):
        window(sunday, 0)


def test_features_by_hand() -> None:
    # Student 1: weeks 0, 1, 3 of a 4-week window (week 2 empty), accuracy 0.5, 0.6, 0.8 on 10 attempts each.
    weekly = weekly_rows(
        [
            (1, 0, 10, 5, 2, 30.0, 40.0),
            (1, 1, 10, 6, 3, 30.0, None),  # I_t missing: build-kpi's placeholder 100 * 7 / 12
            (1, 3, 10, 8, 5, 30.0, 70.0),
            (2, 1, 4, 2, 1, 5.0, 50.0),  # two weeks only: skipped
            (2, 2, 4, 2, 1, 5.0, 50.0),
            (1, 4, 99, 99, 7, 99.0, 99.0),  # after the as-of date: ignored
        ]
    )
    daily = daily_rows(
        [
            (1, 0, 7, 6, 3),
            (1, 1, 8, 4, 2),
            (1, 8, 7, 10, 6),
            (1, 22, 8, 10, 8),
            (2, 8, 7, 4, 2),
            (2, 15, 7, 4, 2),
        ]
    )
    out = build_features(
        weekly,
        daily,
        as_of=as_of_after(4),
        lookback_weeks=4,
        priors={"accuracy_trend": NO_SHRINK, "i_t_trend": NO_SHRINK},
    )
    assert out.window_start == MONDAY and out.window_end == as_of_after(4)
    assert list(out.features.columns) == list(FEATURE_NAMES)
    assert list(out.features.index) == [1]
    assert out.skipped.to_dict("records") == [{"user_id": 2, "reason": SKIP_TOO_FEW_WEEKS, "active_weeks": 2}]
    f = out.features.loc[1]
    assert f["accuracy_level"] == pytest.approx(19 / 30)
    # Weighted least squares with equal weights on weeks 0, 1, 3: slope = Sxy / Sxx.
    weeks, acc = np.array([0.0, 1.0, 3.0]), np.array([0.5, 0.6, 0.8])
    slope = np.sum((weeks - weeks.mean()) * (acc - acc.mean())) / np.sum((weeks - weeks.mean()) ** 2)
    assert f["accuracy_trend"] == pytest.approx(slope, rel=1e-9)
    i_t = np.array([40.0, 100.0 * 7 / 12, 70.0])
    assert f["i_t_level"] == pytest.approx(i_t.mean())
    i_slope = np.sum((weeks - weeks.mean()) * (i_t - i_t.mean())) / np.sum((weeks - weeks.mean()) ** 2)
    assert f["i_t_trend"] == pytest.approx(i_slope, rel=1e-9)
    span = 4  # weeks 0..3, the empty week 2 included
    assert f["attempts_per_week"] == pytest.approx(30 / span)
    assert f["active_days_per_week"] == pytest.approx(10 / span)
    assert f["study_minutes_per_week"] == pytest.approx(90 / span)
    assert f["attempts_per_active_day"] == pytest.approx(3.0)
    days = np.array([2.0, 3.0, 0.0, 5.0])
    m, v = days.mean(), days.var(ddof=1)
    assert f["burstiness"] == pytest.approx(math.sqrt(v - m * (1 - m / 7)) / m)
    # Topics: 7 has 6 + 10 = 16 attempts (10 correct), 8 has 4 + 10 = 14 (10 correct) in the window.
    assert f["topics_practised"] == 2
    shares = np.array([16, 14]) / 30
    assert f["topic_effective_number"] == pytest.approx(math.exp(-np.sum(shares * np.log(shares))))
    acc_all = 20 / 30
    observed = (16 * (10 / 16 - acc_all) ** 2 + 14 * (10 / 14 - acc_all) ** 2) / 30
    chance = acc_all * (1 - acc_all) * (2 - 1) / 30
    assert f["topic_accuracy_spread"] == pytest.approx(math.sqrt(max(observed - chance, 0.0)))
    cov = out.coverage.loc[1]
    assert (cov["active_weeks"], cov["span_weeks"], cov["attempts"]) == (3, 4, 30)
    assert cov["first_week"] == MONDAY and cov["last_week"] == MONDAY + timedelta(weeks=3)
    summary = out.summary()
    assert summary["skipped"] == {SKIP_TOO_FEW_WEEKS: 1} and summary["students"] == 1
    assert [f["name"] for f in summary["features"]] == list(FEATURE_NAMES)
    json.dumps(summary)


def test_a_regular_student_has_no_burstiness_and_rates_count_from_the_first_week() -> None:
    # Joins in week 2 of 4 and studies 7 days every week: nothing beyond chance, no dilution by earlier weeks.
    weekly = weekly_rows([(5, w, 14, 7, 7, 20.0, None) for w in (1, 2, 3)])
    daily = daily_rows([(5, 7 * w + d, 1, 2, 1) for w in (1, 2, 3) for d in range(7)])
    f = build_features(weekly, daily, as_of=as_of_after(4), lookback_weeks=4).features.loc[5]
    assert f["burstiness"] == 0.0
    assert f["active_days_per_week"] == 7.0 and f["attempts_per_week"] == 14.0
    assert f["topics_practised"] == 1 and f["topic_effective_number"] == pytest.approx(1.0)
    assert f["topic_accuracy_spread"] == 0.0


def noisy_lines(slopes: dict[int, float], weeks: int = 8, attempts: int = 100) -> pd.DataFrame:
    """Students on straight lines of accuracy with a fixed zig-zag of +-0.03 around them."""
    rows = []
    for user, slope in slopes.items():
        for w in range(weeks):
            acc = 0.5 + slope * w + (0.03 if w % 2 else -0.03)
            rows.append((user, w, attempts, round(acc * attempts), 5, 60.0, None))
    return weekly_rows(rows)


def topic_rows_for(weekly: pd.DataFrame) -> pd.DataFrame:
    days = [(MONDAY - r.week_start).days for r in weekly.itertuples()]
    return daily_rows(
        [
            (int(r.user_id), -d, 1, int(r.attempts), int(r.correct))
            for r, d in zip(weekly.itertuples(), days, strict=True)
        ]
    )


def test_trends_resist_one_odd_week_and_are_shrunk_by_their_uncertainty() -> None:
    weekly = noisy_lines({u: 0.02 for u in range(1, 9)})
    # Student 8's last week collapses (an anomaly): accuracy 0.05 instead of about 0.62.
    last = (weekly["user_id"] == 8) & (weekly["week_start"] == MONDAY + timedelta(weeks=7))
    weekly.loc[last, "correct"] = 5
    weekly["accuracy"] = weekly["correct"] / weekly["attempts"]
    daily = topic_rows_for(weekly)
    out = build_features(weekly, daily, as_of=as_of_after(8), lookback_weeks=8)
    robust = out.features.loc[8, "accuracy_trend"]
    w = np.arange(8.0)
    y = weekly.loc[weekly["user_id"] == 8, "accuracy"].to_numpy()
    least_squares = np.polyfit(w, y, 1)[0]
    assert least_squares < 0.0  # the odd week turns the least-squares line around ...
    assert robust == pytest.approx(0.02, abs=0.003)  # ... the biweight line ignores it
    prior = out.priors["accuracy_trend"]
    assert prior.students == 8 and prior.s2 > 0

    # A student with three thin weeks is pulled towards the population; one with many attempts keeps their slope.
    thin = noisy_lines({20: 0.05}, weeks=3, attempts=4)
    thick = noisy_lines({21: 0.05}, weeks=8, attempts=400)
    many = pd.concat([noisy_lines({u: 0.0 for u in range(1, 31)}), thin, thick], ignore_index=True)
    feats = build_features(many, topic_rows_for(many), as_of=as_of_after(8), lookback_weeks=8).features
    assert abs(feats.loc[20, "accuracy_trend"]) < 0.5 * abs(feats.loc[21, "accuracy_trend"])
    assert feats.loc[21, "accuracy_trend"] == pytest.approx(0.05, abs=0.005)


def test_feature_input_errors() -> None:
    weekly = weekly_rows([(1, w, 10, 5, 2, 30.0, 50.0) for w in range(3)])
    daily = daily_rows([(1, 7 * w, 1, 10, 5) for w in range(3)])
    with pytest.raises(InvalidInputError) as missing:
        build_features(weekly.drop(columns=["active_days"]), daily, as_of=as_of_after(3), lookback_weeks=3)
    assert missing.value.details["problems"][0]["column"] == "active_days"
    with pytest.raises(InvalidInputError, match="no daily rows"):
        build_features(weekly, daily.iloc[0:0], as_of=as_of_after(3), lookback_weeks=3)
    bad = weekly.assign(attempts=[10.0, np.nan, 10.0])
    with pytest.raises(InvalidInputError) as nan:
        build_features(bad, daily, as_of=as_of_after(3), lookback_weeks=3)
    assert nan.value.details["problems"][0]["column"] == "attempts"
    with pytest.raises(InvalidInputError):
        build_features(weekly, daily, as_of=as_of_after(3), lookback_weeks=3, min_active_weeks=1)
    empty = build_features(weekly, daily, as_of=as_of_after(3) - timedelta(weeks=10), lookback_weeks=3)
    assert empty.features.empty and empty.skipped.empty


# --- the synthetic school ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class School:
    params: WorldParams
    weekly: pd.DataFrame
    daily: pd.DataFrame
    types: pd.Series  # learner_type by user_id

    def features(self, weeks: int) -> SegmentFeatures:
        """Features as of the Sunday ending the world's week ``weeks`` (1-based), default lookback."""
        return build_features(self.weekly, self.daily, as_of=self.params.start_date + timedelta(weeks=weeks, days=-1))


def school(tmp: Path, params: WorldParams) -> School:
    world = generate_world(params)
    engine = make_engine(f"sqlite:///{tmp / 'school.db'}")
    try:
        upgrade(engine)
        load_batch(engine, world.attempts)
        result = build_kpi(engine, params.end_date - timedelta(days=1))
        assert result.rows_written > 0
        weekly = read_table(engine, "weekly_kpi")
        daily = read_table(engine, "features_topic_daily")
    finally:
        engine.dispose()
    return School(params, weekly, daily, world.students.set_index("user_id")["learner_type"])


@pytest.fixture(scope="module")
def default_school(tmp_path_factory: pytest.TempPathFactory) -> School:
    """The default world: 2,000 students x 16 weeks, seed 42."""
    return school(tmp_path_factory.mktemp("default"), WorldParams())


@pytest.fixture(scope="module")
def longer_school(tmp_path_factory: pytest.TempPathFactory) -> School:
    """The default world's students over 17 weeks, for two runs a week apart on the same data."""
    return school(tmp_path_factory.mktemp("longer"), WorldParams(weeks=17))


@pytest.fixture(scope="module")
def default_features(default_school: School) -> SegmentFeatures:
    return default_school.features(16)


@pytest.fixture(scope="module")
def default_model(default_features: SegmentFeatures) -> SegmentModel:
    return SegmentModel(log_features=LOG_FEATURES).fit(default_features.features)


def test_automatic_k_finds_the_four_learner_types(
    default_school: School, default_features: SegmentFeatures, default_model: SegmentModel
) -> None:
    feats = default_features.features
    # Students need three active weeks of the 12; the rest are recorded as skipped, not guessed.
    assert len(feats) + len(default_features.skipped) <= default_school.params.students
    assert len(feats) > 0.8 * default_school.params.students
    assert default_model.criterion_ == "silhouette" and default_model.k_ == 4
    scores = {s["k"]: s["silhouette"] for s in default_model.selection_ or []}
    assert sorted(scores) == list(range(2, 11)) and max(scores, key=lambda k: scores[k]) == 4
    pred = default_model.predict(feats)
    truth = default_school.types.loc[pred.index]
    ari = adjusted_rand_score(truth, pred["segment_id"])
    assert ari >= 0.8, ari
    assert default_model.sizes_ is not None and int(default_model.sizes_.sum()) == len(feats)
    assert list(np.bincount(pred["segment_id"], minlength=5)[1:]) == list(default_model.sizes_)

    # The names follow the profiles: each simulated type's segment carries the word of its behaviour.
    names = dict(zip(default_model.segment_ids_ or [], default_model.names_ or [], strict=True))
    assert len(set(names.values())) == 4
    majority = pd.crosstab(truth, pred["segment_id"]).idxmax(axis=1)  # type -> segment
    assert "high-achievers" in names[majority[1]]
    assert "strugglers" in names[majority[2]] and "irregular" in names[majority[2]]
    assert "improvers" in names[majority[3]]
    assert "casual" in names[majority[4]]


def test_re_running_on_the_same_data_gives_identical_segments(
    default_features: SegmentFeatures, default_model: SegmentModel
) -> None:
    again = SegmentModel(log_features=LOG_FEATURES).fit(default_features.features)
    pd.testing.assert_frame_equal(
        again.predict(default_features.features), default_model.predict(default_features.features)
    )
    assert again.names_ == default_model.names_ and again.segment_ids_ == default_model.segment_ids_
    np.testing.assert_array_equal(again.centers_, default_model.centers_)
    assert again.to_json() == default_model.to_json()


def test_a_run_one_week_later_keeps_the_students_in_their_segments(longer_school: School) -> None:
    first_features = longer_school.features(16)
    later_features = longer_school.features(17)
    assert later_features.window_start == first_features.window_start + timedelta(weeks=1)
    first = SegmentModel(log_features=LOG_FEATURES).fit(first_features.features)
    later = SegmentModel(log_features=LOG_FEATURES).fit(later_features.features)
    assert first.k_ == later.k_ == 4
    # Through the JSON the job stores, as the next run will read it.
    previous = SegmentModel.from_json(json.loads(json.dumps(first.to_json())))
    match = align_segments(later, previous)
    assert match.comparable and match.new == [] and match.vanished == []
    assert sorted(later.segment_ids_ or []) == [1, 2, 3, 4] and later.id_counter_ == 4
    for seg in match.segments:
        assert seg["previous_segment_id"] == seg["segment_id"] and seg["distance"] < 0.2
        assert previous.names_ is not None and previous.segment_ids_ is not None
        assert seg["name"] == previous.names_[previous.segment_ids_.index(seg["segment_id"])]
    before = first.predict(first_features.features)["segment_id"]
    after = later.predict(later_features.features)["segment_id"]
    both = before.index.intersection(after.index)
    assert len(both) > 0.8 * longer_school.params.students
    kept = float((before.loc[both] == after.loc[both]).mean())
    assert kept >= 0.95, kept


def test_json_round_trip_predicts_identically(default_features: SegmentFeatures, default_model: SegmentModel) -> None:
    data = json.loads(json.dumps(default_model.to_json(), allow_nan=False))
    assert data["engine"] == "segments" and data["version"] == 1
    restored = SegmentModel.from_json(data)
    feats = default_features.features
    pd.testing.assert_frame_equal(restored.predict(feats), default_model.predict(feats))
    assert restored.to_json() == default_model.to_json()
    profiles = restored.profiles()
    assert list(profiles["segment_id"]) == restored.segment_ids_ and profiles["share"].sum() == pytest.approx(1.0)
    # Centres in the features' units: the inverse of log1p and the scaling.
    np.testing.assert_allclose(restored.transform(profiles[list(FEATURE_NAMES)]), restored.centers_, atol=1e-9)
    with pytest.raises(InvalidInputError):
        SegmentModel.from_json({**data, "engine": "coxph"})
    with pytest.raises(InvalidInputError):
        SegmentModel.from_json({**data, "centers": data["centers"][:-1]})


def test_gmm_picks_k_by_bic_and_round_trips(default_features: SegmentFeatures) -> None:
    feats = default_features.features
    model = SegmentModel("gmm", k_max=6, n_init=1, log_features=LOG_FEATURES).fit(feats)
    assert model.criterion_ == "bic"
    bic = {s["k"]: s["bic"] for s in model.selection_ or []}
    assert (
        sorted(bic) == [2, 3, 4, 5, 6]
        and model.k_ == min(bic, key=lambda k: bic[k])
        and model.bic_ == min(bic.values())
    )
    pred = model.predict(feats)
    assert model.k_ is not None
    assert pred["probability"].between(0, 1).all() and (pred["probability"] > 1 / model.k_ - 1e-12).all()
    proba = model.predict_proba(feats)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (proba.idxmax(axis=1) == pred["segment_id"]).all()
    np.testing.assert_allclose(proba.max(axis=1), pred["probability"], rtol=1e-12)
    restored = SegmentModel.from_json(json.loads(json.dumps(model.to_json(), allow_nan=False)))
    pd.testing.assert_frame_equal(restored.predict(feats), pred)
    # The fitted rows' labels are what predict says (ids in canonical order).
    assert model.labels_ is not None and model.segment_ids_ is not None
    np.testing.assert_array_equal(np.asarray(model.segment_ids_)[model.labels_], pred["segment_id"].to_numpy())


# --- engine behaviour on generic data ------------------------------------------------------------------------


def blobs(centers: list[tuple[float, float]], per: int, seed: int, spread: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = [np.asarray(c) + spread * rng.standard_normal((per, 2)) for c in centers]
    return pd.DataFrame(np.vstack(parts), columns=["a", "b"])


def test_samples_bound_the_work_and_stay_deterministic() -> None:
    data = blobs([(0, 0), (6, 0), (0, 6)], 2000, seed=1)
    truth = np.repeat([0, 1, 2], 2000)
    model = SegmentModel(fit_sample_size=900, score_sample_size=300, n_init=2, random_state=3).fit(data)
    assert (model.n_, model.n_fit_, model.n_score_) == (6000, 900, 300)
    assert model.k_ == 3 and adjusted_rand_score(truth, model.predict(data)["segment_id"]) == 1.0
    again = SegmentModel(fit_sample_size=900, score_sample_size=300, n_init=2, random_state=3).fit(data)
    assert again.to_json() == model.to_json()
    assert model.inertia_ == pytest.approx(float(np.sum(model.predict(data)["distance"] ** 2)))
    # Canonical order: the largest segment is id 1.
    small = pd.concat([data.iloc[:2000], data.iloc[2000:2500], data.iloc[4000:5000]], ignore_index=True)
    fitted = SegmentModel(n_clusters=3).fit(small)
    assert fitted.sizes_ is not None and list(fitted.sizes_) == [2000, 1000, 500]
    assert fitted.criterion_ == "fixed"


def test_robust_scaling_uses_median_and_iqr_with_fallbacks() -> None:
    rng = np.random.default_rng(0)
    x = pd.DataFrame(
        {
            "spread": rng.normal(10.0, 2.0, 400),
            "mostly_zero": np.r_[np.zeros(320), rng.normal(5.0, 1.0, 80)],  # IQR 0: 1.349 SD instead
            "constant": np.full(400, 7.0),  # nothing to scale: 1
            "count": rng.poisson(20, 400).astype(float),
        }
    )
    model = SegmentModel(n_clusters=2, log_features=["count"]).fit(x)
    assert model.center_ is not None and model.scale_ is not None
    q25, q50, q75 = np.percentile(x["spread"], [25, 50, 75])
    assert (model.center_[0], model.scale_[0]) == (pytest.approx(q50), pytest.approx(q75 - q25))
    assert model.scale_[1] == pytest.approx(1.349 * x["mostly_zero"].std(ddof=0))
    assert model.scale_[2] == 1.0
    logged = np.log1p(x["count"])
    assert model.center_[3] == pytest.approx(np.median(logged))


def test_engine_errors() -> None:
    with pytest.raises(NotFittedError):
        SegmentModel().predict(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(NotFittedError):
        SegmentModel().to_json()
    with pytest.raises(InsufficientDataError):
        SegmentModel().fit(pd.DataFrame({"a": [], "b": []}, dtype=float))
    with pytest.raises(InsufficientDataError):
        SegmentModel().fit(pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 3.0]}))  # k >= 2 needs 3 rows
    with pytest.raises(InsufficientDataError):
        SegmentModel(n_clusters=3).fit(pd.DataFrame({"a": [1.0, 2.0]}))
    nan = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0], "b": [1.0, 2.0, np.inf, np.nan], "c": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(InvalidInputError) as err:
        SegmentModel().fit(nan)
    problems = err.value.details["problems"]
    assert [(p["column"], p["count"], p["row"]) for p in problems] == [("a", 1, 1), ("b", 2, 2)]
    assert "'a'" in err.value.message and "'b'" in err.value.message
    with pytest.raises(InvalidInputError) as text:
        SegmentModel().fit(pd.DataFrame({"a": ["x", "y", "z"]}))
    assert text.value.details["problems"][0]["column"] == "a"
    with pytest.raises(InvalidInputError):
        SegmentModel(method="dbscan").fit(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))
    with pytest.raises(InvalidInputError):
        SegmentModel(k_min=5, k_max=3).fit(pd.DataFrame({"a": [1.0, 2.0, 3.0]}))
    with pytest.raises(InvalidInputError, match="log"):
        SegmentModel(log_features=["a"]).fit(pd.DataFrame({"a": [-2.0, 2.0, 3.0]}))
    model = SegmentModel(n_clusters=2).fit(blobs([(0, 0), (5, 5)], 20, seed=2))
    with pytest.raises(InvalidInputError) as lacking:
        model.predict(pd.DataFrame({"a": [1.0]}))
    assert lacking.value.details["problems"] == [{"column": "b", "reason": "missing"}]
    with pytest.raises(InvalidInputError):
        model.predict(pd.DataFrame({"a": [1.0], "b": [np.nan]}))
    with pytest.raises(InvalidInputError):
        model.predict_proba(pd.DataFrame({"a": [1.0], "b": [1.0]}))


# --- stable ids and names ----------------------------------------------------------------------------------------


def ids_by_center(model: SegmentModel) -> dict[tuple[int, ...], int]:
    """Segment id by its centre rounded to whole units (the blobs sit on a grid)."""
    assert model.centers_original_ is not None and model.segment_ids_ is not None
    centers = [tuple(int(v) for v in np.round(c)) for c in model.centers_original_]
    return dict(zip(centers, model.segment_ids_, strict=True))


def test_persisting_segments_keep_their_ids_and_new_ids_are_never_reused() -> None:
    run1 = SegmentModel(n_clusters=3).fit(blobs([(0, 0), (8, 0), (0, 8)], 300, seed=1))
    first = align_segments(run1, None)
    assert first.new == [1, 2, 3] and run1.id_counter_ == 3
    ids1 = ids_by_center(run1)

    # Run 2: the blob at (0, 8) is gone, one at (8, 8) appears; the others moved a little.
    run2 = SegmentModel(n_clusters=3).fit(blobs([(0.1, 0), (8, 0.1), (8, 8)], 300, seed=2))
    match2 = align_segments(run2, run1)
    ids2 = ids_by_center(run2)
    assert ids2[(0, 0)] == ids1[(0, 0)] and ids2[(8, 0)] == ids1[(8, 0)]
    assert ids2[(8, 8)] == 4 and match2.new == [4] and match2.vanished == [ids1[(0, 8)]]
    assert run2.id_counter_ == 4
    kept = {s["segment_id"]: s for s in match2.segments if s["previous_segment_id"] is not None}
    assert set(kept) == {ids1[(0, 0)], ids1[(8, 0)]} and all(s["distance"] < 0.5 for s in kept.values())
    names1 = dict(zip(run1.segment_ids_ or [], run1.names_ or [], strict=True))
    for seg in kept.values():
        assert seg["name"] == names1[seg["segment_id"]]
    assert len(set(run2.names_ or [])) == 3

    # Run 3: the blob at (0, 8) is back; its old id 3 has been retired, so it gets 5.
    run3 = SegmentModel(n_clusters=4).fit(blobs([(0, 0), (8, 0), (8, 8), (0, 8)], 300, seed=3))
    match3 = align_segments(run3, run2)
    ids3 = ids_by_center(run3)
    assert ids3[(0, 8)] == 5 and match3.new == [5] and match3.vanished == []
    assert ids3[(8, 8)] == 4 and run3.id_counter_ == 5

    # Beyond max_distance nothing matches: every segment is new.
    far = align_segments(
        SegmentModel(n_clusters=3).fit(blobs([(0, 0), (8, 0), (8, 8)], 300, seed=4)), run3, max_distance=0.0
    )
    assert far.new == [6, 7, 8] and sorted(far.vanished) == sorted(run3.segment_ids_ or [])
    # Different features: not comparable, all new.
    other = SegmentModel(n_clusters=2).fit(blobs([(0, 0), (8, 0)], 50, seed=5).rename(columns={"b": "c"}))
    assert not align_segments(other, run3).comparable


def test_names_follow_the_documented_rule_and_are_unique() -> None:
    names = list(FEATURE_NAMES)
    z = np.zeros((6, len(names)))

    def put(row: int, **values: float) -> None:
        for name, value in values.items():
            z[row, names.index(name)] = value

    put(0, accuracy_level=0.6, i_t_level=0.6, burstiness=-0.3)
    put(1, accuracy_level=-1.5, i_t_level=-1.5, burstiness=1.0)
    put(2, accuracy_trend=1.5, i_t_trend=1.5)
    put(3, attempts_per_week=-1.0, active_days_per_week=-1.0, study_minutes_per_week=-1.0)
    put(4, accuracy_level=0.6, i_t_level=0.6, burstiness=-0.3, attempts_per_week=1.0)  # clashes with row 0
    put(5)  # the population's middle
    got = segment_names(z, names)
    assert got[:4] == ["steady high-achievers", "irregular strugglers", "improvers", "casual learners"]
    assert got[4] == "steady high-achievers (more active)"
    assert got[5] == "mid-level learners"
    scores = aspect_scores(z, names)
    assert scores["regularity"][1] == -1.0 and scores["volume"][3] == -1.0
    # Names already taken by persisting segments are avoided, and an exact twin gets a number.
    again = segment_names(z[[0, 0]], names, taken={"steady high-achievers": z[0]})
    assert again[0] != "steady high-achievers" and again[1] not in {again[0], "steady high-achievers"}
    # Without the known features every segment is a numbered "mid-level learners".
    assert segment_names(np.zeros((2, 2)), ["u", "v"]) == ["mid-level learners", "mid-level learners 2"]
