"""The churn dataset by hand: events, censoring, observability, no look-ahead, covariates (learnpulse.churn)."""

from __future__ import annotations

import itertools
import json
import math
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from learnpulse import churn
from learnpulse.churn import DailyActivity, at_risk_covariates, day_number, landmark_rows
from learnpulse.engines.logistic import Logit
from learnpulse.engines.survival import CoxPH
from learnpulse.errors import InsufficientDataError, InvalidInputError

T = 14
BASE = date(2026, 3, 2)  # a Monday; day k below is BASE + k


def day(k: int) -> date:
    return BASE + timedelta(days=k)


def frame(activity: dict[int, list[tuple[int, int, int, float]]]) -> pd.DataFrame:
    """{user_id: [(day offset, attempts, correct, seconds), ...]} -> the store's daily frame."""
    rows = [(user, day_number(day(k)), a, c, s) for user, days in activity.items() for (k, a, c, s) in days]
    return pd.DataFrame(rows, columns=["user_id", "day", "attempts", "correct", "time_spent_s"])


def every_day(
    first: int, last: int, attempts: int = 2, correct: int = 1, seconds: float = 60.0
) -> list[tuple[int, int, int, float]]:
    return [(k, attempts, correct, seconds) for k in range(first, last + 1)]


def rows_at(activity: dict[int, list[tuple[int, int, int, float]]], as_of: int, landmarks: list[int]) -> pd.DataFrame:
    act = DailyActivity.from_frames(frame(activity), None, start=day(0), end=day(as_of))
    return landmark_rows(act, [day(k) for k in landmarks], threshold_days=T).set_index("user_id")


# --- events and censoring --------------------------------------------------------------------------------------


def test_a_13_day_gap_at_the_as_of_date_is_censored_and_14_days_is_an_event() -> None:
    # Active on days 0..20, nothing after. At as-of 33 the empty run 21..33 is 13 days long: not churn (yet).
    student = {1: every_day(0, 20)}
    censored = rows_at(student, as_of=33, landmarks=[19])
    # The last gap start that can be judged is 33 - 14 + 1 = 20, so the landmark-19 row is followed for 1 day.
    assert censored.loc[1, "event"] == 0 and censored.loc[1, "duration"] == 1
    # One day later the 14-day run 21..34 is complete: a churn gap began on day 21 = landmark 19 + 2.
    event = rows_at(student, as_of=34, landmarks=[19])
    assert event.loc[1, "event"] == 1 and event.loc[1, "duration"] == 2
    # At the as-of date itself a 13-day run is still "active so far" (scored); a 14-day run is churned.
    act33 = DailyActivity.from_frames(frame(student), None, start=day(0), end=day(33))
    act34 = DailyActivity.from_frames(frame(student), None, start=day(0), end=day(34))
    assert at_risk_covariates(act33, day(33), threshold_days=T)["user_id"].tolist() == [1]
    assert at_risk_covariates(act34, day(34), threshold_days=T)["user_id"].tolist() == []


def test_a_complete_14_day_gap_is_an_event_at_the_day_it_begins() -> None:
    # user 1: active 0..20, empty 21..34 (14 days), back on 35..60. user 2: empty 21..33 (13 days), back on 34.
    activity = {1: every_day(0, 20) + every_day(35, 60), 2: every_day(0, 20) + every_day(34, 60)}
    rows = rows_at(activity, as_of=60, landmarks=[14])
    assert rows.loc[1, "event"] == 1 and rows.loc[1, "duration"] == 21 - 14  # the gap begins on day 21
    # 13 days is not churn: censored at the horizon (T days), the whole follow-up being known.
    assert rows.loc[2, "event"] == 0 and rows.loc[2, "duration"] == T


def test_a_gap_under_way_at_the_landmark_counts_at_time_one() -> None:
    # Last attempt day 20; at landmark 25 the student has been away 5 days and never returns.
    rows = rows_at({1: every_day(0, 20)}, as_of=60, landmarks=[25, 34, 35])
    first = rows[rows["landmark"] == day(25)]
    assert first.loc[1, "days_since_last_attempt"] == 5
    assert first.loc[1, "event"] == 1 and first.loc[1, "duration"] == 1
    # Day 34 is the 14th empty day: at landmark 34 the student is already churned, so not at risk; at 33 still is.
    assert set(rows["landmark"]) == {day(25)}
    assert len(rows_at({1: every_day(0, 20)}, as_of=60, landmarks=[33])) == 1


def test_only_a_gap_with_all_its_threshold_days_observed_is_an_event() -> None:
    # Empty from day 31: the gap is observable once day 31 + 13 = 44 is in the data.
    activity = {1: every_day(0, 30)}
    on_time = rows_at(activity, as_of=44, landmarks=[28])
    assert on_time.loc[1, "event"] == 1 and on_time.loc[1, "duration"] == 3
    early = rows_at(activity, as_of=43, landmarks=[28])
    assert early.loc[1, "event"] == 0 and early.loc[1, "duration"] == 43 - T + 1 - 28  # censored at 2 days


def test_events_beyond_the_horizon_are_censored_at_the_horizon() -> None:
    rows = rows_at({1: every_day(0, 40)}, as_of=80, landmarks=[20])  # the gap begins on day 41 = landmark + 21
    assert rows.loc[1, "event"] == 0 and rows.loc[1, "duration"] == T


def test_a_returning_student_is_at_risk_again_and_the_next_gap_counts() -> None:
    # A churn gap 11..29 (19 days), back on 30..40, then gone from 41.
    activity = {1: every_day(0, 10) + every_day(30, 40)}
    rows = rows_at(activity, as_of=80, landmarks=[35])
    assert rows.loc[1, "event"] == 1 and rows.loc[1, "duration"] == 41 - 35
    assert rows.loc[1, "longest_gap_recent"] == 19  # the earlier gap is history the covariates may use


def test_landmarks_without_follow_up_are_refused() -> None:
    act = DailyActivity.from_frames(frame({1: every_day(0, 30)}), None, start=day(0), end=day(30))
    with pytest.raises(ValueError, match="no follow-up"):
        landmark_rows(act, [day(17)], threshold_days=T)


# --- no look-ahead ---------------------------------------------------------------------------------------------


def test_covariates_at_a_landmark_ignore_everything_after_it() -> None:
    landmark = 40
    past = [*every_day(5, 25), (30, 3, 0, 30.0), (38, 5, 5, 120.0), (landmark, 4, 2, 90.0)]
    quiet = {1: past}
    busy = {1: [*past, (landmark + 1, 50, 50, 9000.0), (landmark + 2, 9, 0, 10.0)]}
    a = rows_at(quiet, as_of=80, landmarks=[landmark])
    b = rows_at(busy, as_of=80, landmarks=[landmark])
    names = list(churn.COVARIATE_NAMES)
    pd.testing.assert_frame_equal(a[names], b[names])
    # The model's derived features are functions of these covariates: they ignore the future too.
    pd.testing.assert_frame_equal(
        churn.model_features(a, threshold_days=T, recent_window_days=28),
        churn.model_features(b, threshold_days=T, recent_window_days=28),
    )
    # ... while the attempt on day L itself is known at the end of day L.
    assert a.loc[1, "days_since_last_attempt"] == 0
    without_l = rows_at({1: past[:-1]}, as_of=80, landmarks=[landmark])
    assert without_l.loc[1, "days_since_last_attempt"] == 2
    # The outcome, of course, does depend on the future.
    assert a.loc[1, "event"] == 1 and b.loc[1, "event"] == 1
    assert a.loc[1, "duration"] == 1 and b.loc[1, "duration"] == 3


def test_scoring_covariates_equal_the_landmark_rows_covariates() -> None:
    activity = {1: every_day(0, 50), 2: every_day(10, 45, attempts=5, correct=4), 3: every_day(0, 20)}
    act = DailyActivity.from_frames(frame(activity), None, start=day(0), end=day(80))
    scored = at_risk_covariates(act, day(50), threshold_days=T).set_index("user_id")
    rows = landmark_rows(act, [day(50)], threshold_days=T).set_index("user_id")
    assert list(scored.index) == [1, 2]  # user 3 has been away 30 days: churned, not scored
    names = list(churn.COVARIATE_NAMES)
    pd.testing.assert_frame_equal(scored[names], rows[names])


# --- covariates by hand ----------------------------------------------------------------------------------------


def test_covariates_by_hand() -> None:
    # Landmark day 60. First attempt ever on day -100 (before the data). Recent window: days 33..60.
    # Active days: 34, 40, 41 (3 blocks ago .. ), 50, 55, 57 -> last active day 57.
    activity = {
        7: [
            (34, 4, 1, 240.0),  # block 3 (days 33..39)
            (40, 2, 2, 60.0),  # block 2 (days 40..46)
            (41, 2, 2, 0.0),
            (50, 5, 4, 300.0),  # block 1 (days 47..53)
            (55, 4, 1, 120.0),  # block 0 (days 54..60)
            (57, 3, 3, 60.0),
        ]
    }
    first = pd.DataFrame({"user_id": [7], "first_day": [day_number(day(-100))]})
    act = DailyActivity.from_frames(frame(activity), first, start=day(0), end=day(90))
    x = landmark_rows(act, [day(60)], threshold_days=T).set_index("user_id").loc[7]
    assert x["days_since_last_attempt"] == 3
    assert x["active_days_last_7"] == 2  # 55, 57
    assert x["active_share_recent"] == pytest.approx(6 / 28)
    assert x["log_attempts_recent"] == pytest.approx(math.log(1 + 20))
    assert x["attempts_per_active_day"] == pytest.approx(20 / 6)
    assert x["accuracy_recent"] == pytest.approx(13 / 20)
    assert x["minutes_per_active_day"] == pytest.approx(780 / 60 / 6)
    # active days per block (newest first): 2, 1, 2, 1 -> SD 0.5
    assert x["weekly_active_days_sd"] == pytest.approx(0.5)
    # longest empty run in 33..60: 42..49 (8 days)
    assert x["longest_gap_recent"] == 8
    assert x["tenure_days_capped"] == 28  # 160 days of tenure, capped at the window
    # weekly accuracy (x = weeks before L): block0 4/7 (w 7) x=0, block1 4/5 (w 5) x=-1, block2 4/4 (w 4) x=-2,
    # block3 1/4 (w 4) x=-3: attempt-weighted least-squares slope
    xs, ys, ws = np.array([0, -1, -2, -3.0]), np.array([4 / 7, 4 / 5, 1.0, 1 / 4]), np.array([7, 5, 4, 4.0])
    xm, ym = (ws * xs).sum() / ws.sum(), (ws * ys).sum() / ws.sum()
    slope = (ws * (xs - xm) * (ys - ym)).sum() / (ws * (xs - xm) ** 2).sum()
    assert x["accuracy_trend"] == pytest.approx(slope)


def test_a_new_student_is_measured_from_the_first_attempt() -> None:
    # First attempt on day 50, active 50, 52, 53; landmark 55 (tenure 5 days, 6 days observed).
    act = DailyActivity.from_frames(
        frame({3: [(50, 1, 1, 10.0), (52, 1, 0, 10.0), (53, 2, 1, 10.0)]}), None, start=day(0), end=day(90)
    )
    x = landmark_rows(act, [day(55)], threshold_days=T).set_index("user_id").loc[3]
    assert x["tenure_days_capped"] == 5
    assert x["days_since_last_attempt"] == 2
    assert x["active_share_recent"] == pytest.approx(3 / 6)
    assert x["longest_gap_recent"] == 2  # 54..55; nothing before the first attempt counts as a gap
    assert x["weekly_active_days_sd"] == 0  # one block since the first attempt
    assert x["accuracy_trend"] == 0  # one block with attempts


def test_the_first_day_comes_from_the_first_days_frame_when_it_is_earlier() -> None:
    daily = frame({1: [(10, 1, 1, 0.0)]})
    first = pd.DataFrame({"user_id": [1, 99], "first_day": [day(-5), day(3)]})  # dates work as well as numbers
    act = DailyActivity.from_frames(daily, first, start=day(0), end=day(40))
    assert act.first_day.tolist() == [day_number(day(-5))]
    assert act.user_ids.tolist() == [1]  # a student without activity in the window has no row


def test_days_outside_the_window_are_ignored() -> None:
    daily = frame({1: [(-3, 5, 5, 0.0), (2, 1, 0, 0.0), (12, 7, 7, 0.0)]})
    act = DailyActivity.from_frames(daily, None, start=day(0), end=day(10))
    assert int(act.attempts.sum()) == 1 and act.days == 11


# --- landmarks, split, calibration, factors -------------------------------------------------------------------


def test_landmarks_are_weekly_from_as_of_minus_t_back_to_the_lookback_start() -> None:
    as_of = date(2026, 5, 25)
    marks = churn.landmark_dates(as_of, lookback_days=90, threshold_days=14)
    assert marks[0] == date(2026, 5, 11) and marks[-1] == date(2026, 3, 2)  # 02-23 is before 02-25
    assert len(marks) == 11 and all(a - b == timedelta(days=7) for a, b in itertools.pairwise(marks))
    assert marks[-1] >= as_of - timedelta(days=89)
    assert churn.history_start(marks, 14) == date(2026, 2, 3)  # 28 days ending on the earliest landmark
    assert churn.landmark_dates(as_of, lookback_days=14, threshold_days=14) == []


def test_heldout_split_is_by_student_and_deterministic() -> None:
    ids = np.arange(1, 20_001)
    held = churn.heldout_students(ids, 0.2)
    assert 0.19 < held.mean() < 0.21
    assert (churn.heldout_students(ids[::-1], 0.2) == held[::-1]).all()
    assert churn.heldout_students(np.array([5, 5, 5]), 0.5).tolist() in ([True] * 3, [False] * 3)


def test_calibration_table_groups_rows_by_prediction() -> None:
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.15, 0.85])
    o = np.array([1, 0, 0, 1, 1, 0])
    table = churn.calibration_table(p, o, groups=3)
    assert [g["n"] for g in table] == [2, 2, 2]
    assert [g["predicted"] for g in table] == pytest.approx([0.125, 0.5, 0.875])
    assert [g["observed"] for g in table] == pytest.approx([0.5, 0.5, 0.5])
    assert churn.mean_calibration_gap(table) == pytest.approx((0.375 + 0 + 0.375) / 3)


def test_top_factors_are_the_largest_positive_contributions() -> None:
    contributions = pd.DataFrame({"a": [0.5, -1.0], "b": [1.2, -0.1], "c": [-0.3, 0.0]})
    values = pd.DataFrame({"a": [3.0, 1.0], "b": [10.0, 2.0], "c": [0.1, 5.0]})
    factors = churn.top_factors(contributions, values, k=3)
    assert [f["covariate"] for f in factors[0]] == ["b", "a"]
    assert factors[0][0]["value"] == 10.0 and factors[0][0]["hazard_ratio"] == pytest.approx(math.exp(1.2), 1e-4)
    assert factors[1] == []  # nothing raises this student's hazard


# --- the two-part churn model -----------------------------------------------------------------------------------


def _synthetic_rows(n: int, seed: int) -> pd.DataFrame:
    """Landmark-like rows: covariates in their natural ranges and outcomes from a known two-part mechanism (the
    first day depends on the current run of empty days and the visit rate; later days on accuracy)."""
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 29, n).astype(float)
    observed = np.minimum(28.0, tenure + 1)
    share = rng.integers(0, 29, n) / 28.0
    d = np.minimum(rng.geometric(0.4, n) - 1, T - 1).astype(float)
    x = pd.DataFrame(
        {
            "days_since_last_attempt": d,
            "active_days_last_7": np.minimum(rng.integers(0, 8, n), np.minimum(7, observed)).astype(float),
            "active_share_recent": share,
            "log_attempts_recent": rng.uniform(0, 5, n),
            "attempts_per_active_day": rng.uniform(1, 8, n),
            "accuracy_recent": rng.uniform(0, 1, n),
            "accuracy_trend": rng.normal(0, 0.1, n),
            "minutes_per_active_day": rng.uniform(0, 10, n),
            "weekly_active_days_sd": rng.uniform(0, 2, n),
            "longest_gap_recent": rng.integers(0, 28, n).astype(float),
            "tenure_days_capped": tenure,
        }
    )
    first = rng.random(n) < 1 / (1 + np.exp(-(-3.0 + 0.35 * d - 1.5 * share)))
    later_time = 2 + np.floor(rng.exponential(1.0, n) / (0.03 * np.exp(-1.5 * x["accuracy_recent"]))).astype(int)
    follow = rng.choice([1, 8, T], size=n, p=[0.1, 0.1, 0.8])  # landmarks with 1, 8 and T days of follow-up
    time = np.where(first, 1, later_time)
    event = time <= follow
    return x.assign(duration=np.where(event, time, follow), event=event.astype(int), user_id=np.arange(n))


def test_derived_features_by_hand() -> None:
    # 10 days of tenure: 11 observed days, 4 of them active (2 in the last 7), away 3 days; T = 14, W = 28.
    row = {name: 0.0 for name in churn.COVARIATE_NAMES}
    row.update(days_since_last_attempt=3, tenure_days_capped=10, active_share_recent=4 / 11, active_days_last_7=2)
    f = churn.model_features(pd.DataFrame([row]), threshold_days=T, recent_window_days=28).iloc[0]
    v, v7 = (4 + 1) / (11 + 2), (2 + 1) / (7 + 2)
    assert f["log_p_idle_day"] == pytest.approx(math.log(1 - v))
    assert f["log_p_idle_to_threshold"] == pytest.approx(11 * math.log(1 - v))  # 11 more empty days needed
    assert f["log_p_idle_to_threshold_7d"] == pytest.approx(11 * math.log(1 - v7))
    assert f["log_days_to_threshold"] == pytest.approx(math.log(11))
    assert f["active_on_landmark"] == 0
    assert f["short_window_x_log_p_idle_day"] == pytest.approx((1 - 11 / 28) * math.log(1 - v))
    assert f["short_window_x_log_p_idle_to_threshold"] == pytest.approx((1 - 11 / 28) * 11 * math.log(1 - v))
    assert (f[list(churn.COVARIATE_NAMES)] == pd.Series(row)[list(churn.COVARIATE_NAMES)]).all()
    # An established student who attempted today, every day of the window: finite, and no short-window part.
    row.update(days_since_last_attempt=0, tenure_days_capped=28, active_share_recent=1.0, active_days_last_7=7)
    g = churn.model_features(pd.DataFrame([row]), threshold_days=T, recent_window_days=28).iloc[0]
    assert g["log_p_idle_day"] == pytest.approx(math.log(1 / 30)) and g["active_on_landmark"] == 1
    assert g["log_p_idle_to_threshold"] == pytest.approx(14 * math.log(1 / 30))
    assert g["short_window_x_log_p_idle_day"] == 0 and g["short_window_x_log_p_idle_to_threshold"] == 0


def test_derived_features_of_a_row_depend_on_that_row_alone() -> None:
    rows = _synthetic_rows(50, seed=1)
    together = churn.model_features(rows, threshold_days=T, recent_window_days=28)
    alone = pd.concat(
        [churn.model_features(rows.iloc[[i]], threshold_days=T, recent_window_days=28) for i in range(len(rows))]
    )
    pd.testing.assert_frame_equal(together, alone)
    with pytest.raises(InvalidInputError, match="missing covariate"):
        churn.model_features(rows.drop(columns="accuracy_trend"), threshold_days=T, recent_window_days=28)


def test_first_day_logit_is_the_maximum_likelihood_fit() -> None:
    rng = np.random.default_rng(4)
    x = np.column_stack([rng.normal(5, 2, 3000), rng.uniform(0, 1, 3000), rng.integers(0, 2, 3000)])
    y = rng.random(3000) < 1 / (1 + np.exp(-(-1.0 + 0.3 * (x[:, 0] - 5) - 2.0 * x[:, 1] + 0.5 * x[:, 2])))
    fit = Logit.fit(x, y, ["a", "b", "c"])
    reference = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(fit.coef, reference.coef_[0], rtol=1e-6)
    log_odds = fit.log_odds(x)
    np.testing.assert_allclose(log_odds, reference.decision_function(x), rtol=1e-6, atol=1e-8)
    # Standard errors: the inverse information of (intercept, coef) on the original scale, computed directly.
    design = np.column_stack([np.ones(len(x)), x])
    p = 1 / (1 + np.exp(-log_odds))
    inverse = np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))
    np.testing.assert_allclose(fit.summary()["se"].to_numpy(), np.sqrt(np.diag(inverse))[1:], rtol=1e-6)
    assert fit.events == int(y.sum()) and fit.n == 3000
    again = Logit.from_json(json.loads(json.dumps(fit.to_json())))
    assert again.to_json() == fit.to_json()
    np.testing.assert_array_equal(again.log_odds(x), log_odds)


def test_first_day_logit_refuses_separated_or_one_sided_outcomes() -> None:
    x = np.linspace(-1, 1, 40)[:, None]
    with pytest.raises(InvalidInputError, match="did not converge"):
        Logit.fit(x, x[:, 0] > 0, ["x"])
    with pytest.raises(InsufficientDataError, match="never observed"):
        Logit.fit(x, np.zeros(40), ["x"])


def test_the_churn_model_is_a_logistic_first_day_and_a_cox_model_after_it() -> None:
    rows = _synthetic_rows(4000, seed=2)
    model = churn.ChurnModel.fit(rows, threshold_days=T)
    features = churn.model_features(rows, threshold_days=T, recent_window_days=28)

    # The parts, refitted by hand: a logistic regression of the day-1 events on every row, a Cox model on the
    # rows followed beyond day 1.
    first_names = list(churn.FEATURES[churn.FIRST_DAY])
    y1 = (rows["event"] == 1) & (rows["duration"] == 1)
    reference = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    reference.fit(features[first_names], y1)
    p1 = reference.predict_proba(features[first_names])[:, 1]
    later = rows["duration"] >= 2
    cox_names = list(churn.FEATURES[churn.LATER_DAYS])
    cox = CoxPH().fit(rows.loc[later, "duration"], rows.loc[later, "event"], features.loc[later, cox_names])
    assert list(model.first_day.features) == first_names and model.later_days.feature_names_ == cox_names
    np.testing.assert_allclose(model.later_days.coef_, cox.coef_, rtol=1e-10)  # type: ignore[arg-type]

    # S = p1 + (1 - p1) (1 - S_cox(T | t > 1)), and the conditional probabilities follow S(t) = 1 before day 1,
    # (1 - p1) S_cox(t) from day 1 on.
    s = model.event_probability(rows)
    later_risk = cox.predict_event_probability(features[cox_names], at=1, horizon=T - 1)
    np.testing.assert_allclose(s, p1 + (1 - p1) * later_risk, rtol=1e-5)
    surv = (1 - p1)[:, None] * cox.predict_survival(features[cox_names], [3.0, 10.0])
    np.testing.assert_allclose(model.event_probability(rows, at=0, horizon=3), 1 - surv[:, 0], rtol=1e-5)
    np.testing.assert_allclose(model.event_probability(rows, at=3, horizon=7), 1 - surv[:, 1] / surv[:, 0], rtol=1e-9)
    np.testing.assert_allclose(model.event_probability(rows, at=0, horizon=0.5), 0.0)  # no event before day 1
    np.testing.assert_allclose(model.event_probability(rows, at=0, horizon=1), p1, rtol=1e-5)

    # The likelihood and the events are the two parts'.
    assert model.n_events == {"first_day": int(y1.sum()), "later_days": int(rows.loc[later, "event"].sum())}
    assert model.log_likelihood == pytest.approx(model.first_day.log_likelihood + cox.log_likelihood_)  # type: ignore[operator]


def test_the_churn_model_explains_with_the_covariates_that_raise_its_cumulative_hazard() -> None:
    rows = _synthetic_rows(4000, seed=3)
    model = churn.ChurnModel.fit(rows, threshold_days=T)
    x = rows[list(churn.COVARIATE_NAMES)].head(200)
    horizon = np.full(len(x), float(T))
    log_hazard = np.log(model.cumulative_hazard(x, horizon))
    assert np.allclose(-np.expm1(-np.exp(log_hazard)), model.event_probability(x))
    # A student at the training means has linear predictor 0 and no reason.
    mean_row = pd.DataFrame([model.reference], columns=list(churn.COVARIATE_NAMES))
    assert model.linear_predictor(mean_row)[0] == pytest.approx(0.0, abs=1e-12)
    assert churn.top_factors(model.contributions(mean_row), mean_row) == [[]]
    # A contribution is the change in ln L(T) when that covariate alone moves to its training mean.
    contributions = model.contributions(x)
    j = churn.COVARIATE_NAMES.index("days_since_last_attempt")
    moved = x.assign(days_since_last_attempt=model.reference[j])
    np.testing.assert_allclose(
        contributions["days_since_last_attempt"], log_hazard - np.log(model.cumulative_hazard(moved, horizon))
    )
    # The simulated first day rises with the run of empty days: the student away longest has it as a reason.
    away = int(np.argmax(x["days_since_last_attempt"].to_numpy()))
    reasons = churn.top_factors(contributions, x)[away]
    assert reasons[0]["covariate"] == "days_since_last_attempt" and reasons[0]["hazard_ratio"] > 1


def test_the_churn_model_round_trips_through_json_and_refuses_other_models() -> None:
    rows = _synthetic_rows(3000, seed=5)
    model = churn.ChurnModel.fit(rows, threshold_days=T)
    data = json.loads(json.dumps(model.to_json()))
    again = churn.ChurnModel.from_json(data)
    x = rows.head(100)
    np.testing.assert_array_equal(again.event_probability(x), model.event_probability(x))
    pd.testing.assert_frame_equal(again.contributions(x), model.contributions(x))
    with pytest.raises(InvalidInputError, match="not a serialised churn-two-part model"):
        churn.ChurnModel.from_json(model.later_days.to_json())
    with pytest.raises(InvalidInputError, match="malformed"):
        churn.ChurnModel.from_json({**data, "reference": [0.0]})


def test_a_constant_feature_is_left_out_of_its_part_and_reported() -> None:
    rows = _synthetic_rows(3000, seed=6).assign(tenure_days_capped=28.0)  # every student's window is complete
    model = churn.ChurnModel.fit(rows, threshold_days=T)
    short = {name for name in churn.DERIVED_NAMES if name.startswith("short_window")}
    assert {f for _, f in model.dropped} == short | {"tenure_days_capped"}
    assert not short & set(model.first_day.features) and not short & set(model.later_days.feature_names_ or [])
    assert np.isfinite(model.event_probability(rows)).all()
