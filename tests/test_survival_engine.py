"""The Cox proportional-hazards engine against R (golden files), lifelines, the simulator's truth, and its contract.

R agreement means "4 significant digits": ``|ours - R| <= 5e-5 * |R|`` (values that are exactly 0 in R: ``1e-12``).
The golden values come from ``tests/data/survival/make_golden.R`` (R 4.2.2, survival 3.5.3); R is not needed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from learnpulse.engines.survival import CoxPH, concordance_index
from learnpulse.errors import InsufficientDataError, InvalidInputError, NotFittedError
from learnpulse.synthetic import WorldParams, generate_world, truth_parameters

DATA = Path(__file__).resolve().parent / "data" / "survival"
RTOL_4_SIG = 5e-5

ROSSI_COVS = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]
SYN_COVS = ["x1", "x2", "x3", "x4"]


def assert_4_sig(ours: Any, r: Any, what: str) -> None:
    ours, r = np.asarray(ours, dtype=float), np.asarray(r, dtype=float)
    err = np.abs(ours - r)
    bound = RTOL_4_SIG * np.abs(r) + 1e-12
    assert np.all(err <= bound), f"{what}: ours {ours} vs R {r} (relative error {np.max(err / (np.abs(r) + 1e-300))})"


@pytest.fixture(scope="module")
def golden() -> pd.DataFrame:
    return pd.read_csv(DATA / "golden.csv", dtype={"name": str}, keep_default_na=False)


@pytest.fixture(scope="module")
def rossi() -> pd.DataFrame:
    return pd.read_csv(DATA / "rossi.csv")


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return pd.read_csv(DATA / "synthetic.csv")


def r_values(golden: pd.DataFrame, case: str, quantity: str) -> pd.Series:
    rows = golden[(golden["case"] == case) & (golden["quantity"] == quantity)]
    assert len(rows), f"no golden {quantity} for {case}"
    return pd.Series(rows["value"].to_numpy(dtype=float), index=rows["name"].to_numpy())


def random_data(n: int = 400, seed: int = 3, ties: bool = True) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "a": rng.normal(0, 1, n),
            "b": rng.binomial(1, 0.3, n).astype(float),
            "c": rng.normal(100, 15, n),
            "d": rng.poisson(3, n).astype(float),
        }
    )
    lp = 0.4 * x["a"] - 0.7 * x["b"] + 0.02 * (x["c"] - 100) + 0.1 * x["d"]
    t = rng.exponential(1.0, n) / (0.1 * np.exp(lp.to_numpy()))
    c = rng.uniform(0, 15, n)
    dur = np.minimum(t, c)
    if ties:
        dur = np.ceil(dur)
    return dur, (t <= c).astype(float), x


# --- agreement with R ---------------------------------------------------------------------------------------------

R_CASES = {
    "rossi_efron": ("rossi", "week", "arrest", ROSSI_COVS, {"ties": "efron"}),
    "rossi_breslow": ("rossi", "week", "arrest", ROSSI_COVS, {"ties": "breslow"}),
    "synthetic_efron": ("synthetic", "time", "status", SYN_COVS, {"ties": "efron"}),
    "synthetic_breslow": ("synthetic", "time", "status", SYN_COVS, {"ties": "breslow"}),
    "rossi_ridge_0.05": ("rossi", "week", "arrest", ROSSI_COVS, {"penalizer": 0.05}),
}


@pytest.mark.parametrize("case", list(R_CASES))
def test_agrees_with_r_coxph(case: str, golden: pd.DataFrame, request: pytest.FixtureRequest) -> None:
    dataset, time_col, event_col, covs, params = R_CASES[case]
    df: pd.DataFrame = request.getfixturevalue(dataset)
    model = CoxPH(**params).fit(df[time_col], df[event_col], df[covs])

    assert model.feature_names_ == covs
    assert_4_sig(model.coef_, r_values(golden, case, "coef")[covs], f"{case} coef")
    assert_4_sig(model.se_, r_values(golden, case, "se")[covs], f"{case} se")
    loglik = r_values(golden, case, "loglik")
    assert_4_sig(model.log_likelihood_null_, loglik["null"], f"{case} null loglik")
    assert_4_sig(model.log_likelihood_, loglik["fit"], f"{case} loglik")
    assert_4_sig(model.concordance_, r_values(golden, case, "concordance")["C"], f"{case} concordance")
    assert model.n_iter_ == int(r_values(golden, case, "n_iter")["iter"])
    if "ridge" in case:
        assert_4_sig(model.penalty_, r_values(golden, case, "penalty")["penalty"], f"{case} penalty")
        return
    assert model.penalty_ == 0.0
    surv_means = r_values(golden, case, "surv_means")
    times = surv_means.index.to_numpy(dtype=float)
    at_means = pd.DataFrame([df[covs].mean()])
    assert_4_sig(model.predict_survival(at_means, times)[0], surv_means, f"{case} baseline survival")
    # the baseline is that of a subject at the means: S0(t) = exp(-H0(t))
    assert_4_sig(np.exp(-model.baseline_cumulative_hazard(times)), surv_means, f"{case} exp(-H0)")
    surv_row1 = r_values(golden, case, "surv_row1")
    assert_4_sig(model.predict_survival(df[covs].iloc[[0]], times)[0], surv_row1, f"{case} survival of row 1")


def test_r_golden_differs_between_ties(golden: pd.DataFrame) -> None:
    """The golden files can tell Efron from Breslow (so the ties tests above can fail)."""
    efron = r_values(golden, "synthetic_efron", "coef")
    breslow = r_values(golden, "synthetic_breslow", "coef")
    assert np.max(np.abs(efron - breslow) / np.abs(efron)) > 1e-2


# --- agreement with lifelines -------------------------------------------------------------------------------------

TIGHT = {"precision": 1e-12, "r_precision": 1e-15}


def _lifelines(dur: np.ndarray, ev: np.ndarray, x: pd.DataFrame, penalizer: float = 0.0) -> Any:
    from lifelines import CoxPHFitter

    df = x.assign(T=dur, E=ev)
    return CoxPHFitter(penalizer=penalizer).fit(df, "T", "E", fit_options=TIGHT)


@pytest.mark.parametrize("penalizer", [0.0, 0.1])
def test_agrees_with_lifelines(penalizer: float) -> None:
    dur, ev, x = random_data()
    ours = CoxPH(penalizer=penalizer, tol=1e-14).fit(dur, ev, x)
    ref = _lifelines(dur, ev, x, penalizer)
    np.testing.assert_allclose(ours.coef_, ref.params_[x.columns].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.se_, ref.standard_errors_[x.columns].to_numpy(), rtol=1e-6)
    # lifelines reports the penalised log-likelihood
    np.testing.assert_allclose(ours.log_likelihood_ - ours.penalty_, ref.log_likelihood_, rtol=1e-9)
    np.testing.assert_allclose(ours.concordance_, ref.concordance_index_, rtol=1e-9)
    if penalizer:
        unpenalised = CoxPH().fit(dur, ev, x)
        sd = x.std().to_numpy()
        assert np.linalg.norm(ours.coef_ * sd) < 0.9 * np.linalg.norm(unpenalised.coef_ * sd)


def test_standardize_is_numerics_only() -> None:
    dur, ev, x = random_data(seed=5)
    for penalizer in (0.0, 0.05):
        a = CoxPH(penalizer=penalizer, standardize=True, tol=1e-14).fit(dur, ev, x)
        b = CoxPH(penalizer=penalizer, standardize=False, tol=1e-14).fit(dur, ev, x)
        np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-7)
        np.testing.assert_allclose(a.se_, b.se_, rtol=1e-7)
        np.testing.assert_allclose(a.baseline_cumulative_hazard_, b.baseline_cumulative_hazard_, rtol=1e-7)


def test_penalty_is_scale_free() -> None:
    """The ridge acts on per-SD coefficients: rescaling a covariate rescales its coefficient, nothing else."""
    dur, ev, x = random_data(seed=6)
    a = CoxPH(penalizer=0.2).fit(dur, ev, x)
    b = CoxPH(penalizer=0.2).fit(dur, ev, x.assign(c=x["c"] * 1000.0))
    np.testing.assert_allclose(b.coef_ * [1, 1, 1000, 1], a.coef_, rtol=1e-7)


def test_concordance_index_agrees_with_lifelines() -> None:
    from lifelines.utils import concordance_index as lifelines_ci

    rng = np.random.default_rng(11)
    for n, n_times, n_scores in [(7, 3, 2), (60, 5, 4), (3000, 40, 25), (3000, 3000, 3000)]:
        t = rng.integers(1, n_times + 1, n).astype(float)
        e = (rng.random(n) < 0.6).astype(float)
        s = rng.integers(0, n_scores, n).astype(float)
        if n_scores == n:
            s = rng.normal(size=n)
        ours = concordance_index(t, e, s)
        assert abs(ours - lifelines_ci(t, -s, e)) <= 1e-9, (n, n_times, n_scores)


def test_concordance_index_small_cases() -> None:
    # perfect: higher score, earlier event
    assert concordance_index([1, 2, 3], [1, 1, 1], [3, 2, 1]) == 1.0
    assert concordance_index([1, 2, 3], [1, 1, 1], [1, 2, 3]) == 0.0
    assert concordance_index([1, 2, 3], [1, 1, 1], [5, 5, 5]) == 0.5
    # event and censored at the same time: comparable (censored survives longer); two events at once: not
    assert concordance_index([2, 2], [1, 0], [1, 0]) == 1.0
    with pytest.raises(InsufficientDataError):
        concordance_index([2, 2], [1, 1], [1, 0])
    with pytest.raises(InsufficientDataError):
        concordance_index([1, 2, 3], [0, 0, 0], [1, 2, 3])


# --- recovery of the simulator's truth ----------------------------------------------------------------------------


def churn_data(seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, dict[str, float]]:
    """Durations in days since enrolment (censored on the world's last day) and the standardised true covariates."""
    params = WorldParams(students=3000, weeks=16, seed=seed)
    students = generate_world(params).students
    hazard = truth_parameters(params)["hazard"]
    churned = students["churn_day"].notna().to_numpy()
    enrol = students["enrol_day"].to_numpy(dtype=float)
    churn = students["churn_day"].fillna(0).to_numpy(dtype=float)
    # churn on day c is observable for c <= days - 1, so a survivor is known to last at least days - 1 - enrol
    durations = np.where(churned, churn - enrol, params.days - 1 - enrol)
    x = pd.DataFrame({k: (students[k] - m["mean"]) / m["sd"] for k, m in hazard["covariates"].items()})
    return durations, churned.astype(float), x, hazard["beta"]


def test_recovers_true_log_hazard_ratios() -> None:
    covered = []
    estimates = []
    for seed in range(1, 6):
        durations, events, x, beta = churn_data(seed)
        model = CoxPH().fit(durations, events, x)
        truth = np.array([beta[name] for name in model.feature_names_])
        lo, hi = np.log(model.ci_lower_), np.log(model.ci_upper_)
        covered.extend((lo <= truth) & (truth <= hi))
        estimates.append(model.coef_)
        # the true risk ranks the students better than chance, and the fitted one about as well
        true_c = concordance_index(durations, events, x.to_numpy() @ truth)
        assert true_c > 0.6
        assert abs(model.concordance_ - true_c) < 0.02
    assert sum(covered) >= 12, f"only {sum(covered)} of 15 95% intervals cover the truth"
    mean_estimate = np.mean(estimates, axis=0)
    np.testing.assert_allclose(mean_estimate, [-0.6, -0.3, -0.4], atol=0.06)


# --- prediction ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted() -> tuple[CoxPH, pd.DataFrame]:
    dur, ev, x = random_data(seed=8)
    return CoxPH().fit(dur, ev, x), x


def hand_cumhaz(model: CoxPH, t: float) -> float:
    """H0(t) from the stored baseline, the slow way: the last cumulative hazard at an event time <= t."""
    assert model.baseline_times_ is not None and model.baseline_cumulative_hazard_ is not None
    value = 0.0
    for time, h in zip(model.baseline_times_, model.baseline_cumulative_hazard_, strict=True):
        if time <= t:
            value = float(h)
    return value


def test_predict_survival_is_a_survival_curve(fitted: tuple[CoxPH, pd.DataFrame]) -> None:
    model, x = fitted
    times = np.concatenate(([0.0], np.linspace(0.5, 40, 80)))
    s = model.predict_survival(x, times)
    assert s.shape == (len(x), len(times))
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(np.diff(s, axis=1) <= 0)
    np.testing.assert_array_equal(s[:, 0], 1.0)
    assert s[:, -1].min() < 0.9  # it does go down
    lp = model.linear_predictor(x.iloc[:5])
    expected = np.array([[np.exp(-hand_cumhaz(model, t) * np.exp(v)) for t in times] for v in lp])
    np.testing.assert_allclose(s[:5], expected, rtol=1e-12)


def test_predict_event_probability(fitted: tuple[CoxPH, pd.DataFrame]) -> None:
    model, x = fitted
    rows = x.iloc[:20]
    lp = model.linear_predictor(rows)
    at = np.linspace(0.0, 12.0, 20)
    got = model.predict_event_probability(rows, at=at, horizon=3.0)

    def surv(v: float, t: float) -> float:
        return float(np.exp(-hand_cumhaz(model, t) * np.exp(v)))

    expected = [1.0 - surv(v, a + 3.0) / surv(v, a) for v, a in zip(lp, at, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-15)
    assert np.all((got >= 0) & (got <= 1))
    scalar = model.predict_event_probability(rows, at=5.0, horizon=3.0)
    np.testing.assert_allclose(
        scalar, 1 - model.predict_survival(rows, [8.0])[:, 0] / model.predict_survival(rows, [5.0])[:, 0]
    )
    # a longer horizon can only add risk; the riskier row has the higher probability
    longer = model.predict_event_probability(rows, at=at, horizon=6.0)
    assert np.all(longer >= got)
    order = np.argsort(lp)
    assert np.all(np.diff(model.predict_event_probability(rows.iloc[order], at=5.0, horizon=3.0)) >= 0)


def test_contributions_sum_to_linear_predictor(fitted: tuple[CoxPH, pd.DataFrame]) -> None:
    model, x = fitted
    assert model.coef_ is not None and model.means_ is not None
    contrib = model.contributions(x)
    assert list(contrib.columns) == model.feature_names_
    assert contrib.index.equals(x.index)
    lp = model.linear_predictor(x)
    np.testing.assert_allclose(contrib.sum(axis=1).to_numpy(), lp, rtol=1e-12, atol=1e-12)
    # lp is x . beta minus the centring constant means . beta
    np.testing.assert_allclose(lp, x.to_numpy() @ model.coef_ - model.means_ @ model.coef_, rtol=1e-10, atol=1e-12)
    # columns are found by name, in any order, extra columns ignored
    shuffled = x[["d", "c", "b", "a"]].assign(extra=1.0)
    np.testing.assert_allclose(model.linear_predictor(shuffled), lp, rtol=1e-12)


def test_summary(fitted: tuple[CoxPH, pd.DataFrame]) -> None:
    model, x = fitted
    table = model.summary()
    assert list(table.index) == list(x.columns)
    np.testing.assert_allclose(table["hazard_ratio"], np.exp(table["coef"]))
    assert np.all(table["hr_lower"] < table["hazard_ratio"]) and np.all(table["hazard_ratio"] < table["hr_upper"])
    np.testing.assert_allclose(np.log(table["hr_upper"]) - table["coef"], 1.959963984540054 * table["se"])
    assert np.all((table["p"] > 0) & (table["p"] <= 1))


def test_json_round_trip(fitted: tuple[CoxPH, pd.DataFrame]) -> None:
    model, x = fitted
    data = json.loads(json.dumps(model.to_json(), allow_nan=False))
    assert data["engine"] == "coxph" and data["version"] == 1
    back = CoxPH.from_json(data)
    times = np.linspace(0, 30, 31)
    np.testing.assert_array_equal(back.predict_survival(x, times), model.predict_survival(x, times))
    np.testing.assert_array_equal(
        back.predict_event_probability(x, at=4.0, horizon=7.0), model.predict_event_probability(x, at=4.0, horizon=7.0)
    )
    np.testing.assert_array_equal(back.contributions(x).to_numpy(), model.contributions(x).to_numpy())
    pd.testing.assert_frame_equal(back.summary(), model.summary())
    assert back.get_params() == model.get_params()
    assert back.concordance_ == model.concordance_ and back.log_likelihood_ == model.log_likelihood_
    with pytest.raises(InvalidInputError, match="not a serialised coxph"):
        CoxPH.from_json({**data, "engine": "kmeans"})
    with pytest.raises(InvalidInputError, match="version"):
        CoxPH.from_json({**data, "version": 99})
    with pytest.raises(InvalidInputError, match="malformed"):
        CoxPH.from_json({**data, "coef": data["coef"][:-1]})


def test_not_fitted() -> None:
    model = CoxPH()
    x = pd.DataFrame({"a": [1.0, 2.0]})
    for call in (
        lambda: model.predict_survival(x, [1.0]),
        lambda: model.predict_event_probability(x, at=1.0, horizon=1.0),
        lambda: model.linear_predictor(x),
        lambda: model.contributions(x),
        model.summary,
        model.to_json,
    ):
        with pytest.raises(NotFittedError, match="not fitted"):
            call()


# --- bad input ----------------------------------------------------------------------------------------------------


def _fit(dur: Any, ev: Any, x: Any, **params: Any) -> CoxPH:
    return CoxPH(**params).fit(dur, ev, x)


def test_bad_inputs_are_named() -> None:
    dur, ev, x = random_data(n=60, seed=9)
    with pytest.raises(InvalidInputError, match="missing or non-finite values: 'c'") as info:
        _fit(dur, ev, x.assign(c=np.where(np.arange(60) == 7, np.nan, x["c"])))
    assert info.value.details["problems"][0] == {"column": "c", "row": 7, "reason": "missing or non-finite", "count": 1}
    with pytest.raises(InvalidInputError, match=r"durations.*non-finite"):
        _fit(np.where(np.arange(60) == 3, np.inf, dur), ev, x)
    with pytest.raises(InvalidInputError, match="durations must be positive"):
        _fit(np.where(np.arange(60) == 3, -1.0, dur), ev, x)
    with pytest.raises(InvalidInputError, match="durations must be positive"):
        _fit(np.where(np.arange(60) == 3, 0.0, dur), ev, x)
    with pytest.raises(InvalidInputError, match=r"events must be 0.*or 1") as info:
        _fit(dur, np.where(np.arange(60) == 5, 2.0, ev), x)
    assert info.value.details["problems"][0]["row"] == 5
    with pytest.raises(InvalidInputError, match=r"'const'.*constant"):
        _fit(dur, ev, x.assign(const=3.0))
    with pytest.raises(InvalidInputError, match=r"'name'.*not numeric"):
        _fit(dur, ev, x.assign(name="x"))
    with pytest.raises(InvalidInputError, match="collinear") as info:
        _fit(dur, ev, x.assign(e=x["a"] * 2 - x["b"]))
    assert {p["column"] for p in info.value.details["problems"]} == {"a", "b", "e"}
    with pytest.raises(InvalidInputError, match="differ in length"):
        _fit(dur[:-1], ev, x)
    with pytest.raises(InvalidInputError, match="rows"):
        _fit(dur, ev, x.iloc[:-1])
    with pytest.raises(InsufficientDataError, match="no events"):
        _fit(dur, np.zeros(60), x)
    with pytest.raises(InsufficientDataError, match="no row outlives the first event"):
        _fit([3.0, 1.0, 2.0], [1, 0, 0], x.iloc[:3])
    with pytest.raises(InvalidInputError, match="ties"):
        _fit(dur, ev, x, ties="exact")
    with pytest.raises(InvalidInputError, match="penalizer"):
        _fit(dur, ev, x, penalizer=-1.0)
    model = _fit(dur, ev, x)
    with pytest.raises(InvalidInputError, match=r"lack the model's column.*: d"):
        model.predict_survival(x.drop(columns="d"), [1.0])
    with pytest.raises(InvalidInputError, match="missing or non-finite values: 'b'"):
        model.linear_predictor(x.assign(b=np.nan))
    with pytest.raises(InvalidInputError, match="at and horizon"):
        model.predict_event_probability(x, at=-1.0, horizon=1.0)


def test_infinite_coefficient_is_an_error_unless_penalised() -> None:
    """Monotone likelihood (every event in one group): R warns "coefficient may be infinite"; we refuse."""
    rng = np.random.default_rng(4)
    n = 80
    group = (np.arange(n) % 2).astype(float)
    events = group.copy()  # only group 1 ever has an event
    x = pd.DataFrame({"group": group, "noise": rng.normal(size=n)})
    durations = rng.uniform(1, 10, n)
    with pytest.raises(InvalidInputError, match="no finite maximum in 'group'"):
        _fit(durations, events, x)
    model = _fit(durations, events, x, penalizer=0.1)
    assert model.coef_ is not None and 0 < model.coef_[0] < 50


def test_arrays_and_one_covariate() -> None:
    dur, ev, x = random_data(seed=10, ties=False)
    a = _fit(dur, ev, x[["a"]])
    b = _fit(dur, ev.astype(bool), x[["a"]].to_numpy())
    assert b.feature_names_ == ["x0"]
    np.testing.assert_array_equal(a.coef_, b.coef_)
    # without ties Efron and Breslow are the same model
    c = _fit(dur, ev, x, ties="breslow")
    d = _fit(dur, ev, x, ties="efron")
    np.testing.assert_allclose(c.coef_, d.coef_, rtol=1e-12)
