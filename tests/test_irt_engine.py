"""The 2PL IRT engine against girth's MML 2PL, an independent dense oracle, the simulator's truth, and its contract.

Agreement with girth (``twopl_mml``, default options) is measured on complete data (girth's input is a dense items x
persons matrix): our estimates do not move with the quadrature grid (< 1e-5 between 41 nodes on +-5 and 161 on +-8),
while girth's sit off the maximum by up to about 0.005 in ``a`` and 0.01 in ``b`` on datasets of this size (its
marginal likelihood at its own estimate is below ours, tested here). The bars, ``max |a - a_girth| <= 0.01``,
``max |b - b_girth| <= 0.015`` and correlations >= 0.9999, are about twice the largest difference measured over
several seeds.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any, Literal

import numpy as np
import pandas as pd
import pytest

from learnpulse.engines.irt import (
    FLAG_NO_VARIANCE,
    FLAG_TOO_FEW,
    IRT2PL,
    learning_index,
    link,
)
from learnpulse.errors import InsufficientDataError, InvalidInputError, NotFittedError
from learnpulse.synthetic import WorldParams, generate_world

Method = Literal["stocking_lord", "mean_sigma"]
METHODS: list[Method] = ["stocking_lord", "mean_sigma"]

GIRTH_MAX_DIFF_A = 0.01
GIRTH_MAX_DIFF_B = 0.015
GIRTH_MIN_CORR = 0.9999


def fitted(values: np.ndarray | None) -> np.ndarray:
    """A learned array (asserting it is set)."""
    assert values is not None
    return values


# --- simulated data -----------------------------------------------------------------------------------------------


def simulate(
    n_items: int, n_persons: int, seed: int, *, mean: float = 0.0, sd: float = 1.0, missing: float = 0.0
) -> dict[str, Any]:
    """Complete (or, with ``missing``, randomly incomplete) 2PL answers: ``a ~ LN(0, 0.3)``, ``b ~ N(0, 1)``,
    ``theta ~ N(mean, sd^2)``; returns the long list and the dense items x persons matrix."""
    rng = np.random.default_rng(seed)
    a = np.exp(rng.normal(0.0, 0.3, n_items))
    b = rng.normal(0.0, 1.0, n_items)
    theta = rng.normal(mean, sd, n_persons)
    dense = rng.random((n_items, n_persons)) < 1.0 / (1.0 + np.exp(-a[:, None] * (theta[None, :] - b[:, None])))
    observed = rng.random((n_items, n_persons)) >= missing
    item, person = np.nonzero(observed)
    return {
        "a": a,
        "b": b,
        "theta": theta,
        "dense": dense,
        "observed": observed,
        "person": person,
        "item": item,
        "correct": dense[item, person],
    }


def oracle_loglik(
    a: np.ndarray, b: np.ndarray, person: np.ndarray, item: np.ndarray, correct: np.ndarray, *, nodes: np.ndarray
) -> float:
    """Marginal log-likelihood by brute force: one dense (persons x nodes) table filled answer by answer, normal
    weights on ``nodes`` (the engine's documented quadrature)."""
    w = np.exp(-0.5 * nodes**2)
    w /= w.sum()
    p = 1.0 / (1.0 + np.exp(-a[item][:, None] * (nodes[None, :] - b[item][:, None])))
    per_answer = np.where(correct[:, None], np.log(p), np.log1p(-p))
    table = np.zeros((int(person.max()) + 1, len(nodes)))
    np.add.at(table, person, per_answer)
    top = table.max(axis=1)
    return float(np.sum(top + np.log(np.exp(table - top[:, None]) @ w)))


# --- agreement with girth -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def girth_data() -> dict[str, Any]:
    return simulate(30, 2000, seed=12)


@pytest.fixture(scope="module")
def girth_fit(girth_data: dict[str, Any]) -> dict[str, Any]:
    from girth import twopl_mml

    result: dict[str, Any] = twopl_mml(girth_data["dense"].astype(int))
    return result


def test_agrees_with_girth_twopl_mml(girth_data: dict[str, Any], girth_fit: dict[str, Any]) -> None:
    d = girth_data
    ours = IRT2PL(tol=1e-6).fit(d["person"], d["item"], d["correct"])
    ga, gb = np.asarray(girth_fit["Discrimination"]), np.asarray(girth_fit["Difficulty"])
    assert ours.a_ is not None and ours.b_ is not None
    assert np.max(np.abs(ours.a_ - ga)) <= GIRTH_MAX_DIFF_A, np.max(np.abs(ours.a_ - ga))
    assert np.max(np.abs(ours.b_ - gb)) <= GIRTH_MAX_DIFF_B, np.max(np.abs(ours.b_ - gb))
    assert np.corrcoef(ours.a_, ga)[0, 1] >= GIRTH_MIN_CORR
    assert np.corrcoef(ours.b_, gb)[0, 1] >= GIRTH_MIN_CORR
    # the remaining difference is girth's: at its estimate the marginal likelihood (fine grid) is lower than at ours
    fine = np.linspace(-8, 8, 321)
    args = (d["person"], d["item"], d["correct"])
    assert oracle_loglik(ours.a_, ours.b_, *args, nodes=fine) > oracle_loglik(ga, gb, *args, nodes=fine)


def test_estimate_does_not_depend_on_the_grid(girth_data: dict[str, Any]) -> None:
    d = girth_data
    coarse = IRT2PL(tol=1e-7).fit(d["person"], d["item"], d["correct"])
    fine = IRT2PL(tol=1e-7, quadrature_points=161, quadrature_range=8.0).fit(d["person"], d["item"], d["correct"])
    np.testing.assert_allclose(fitted(coarse.a_), fitted(fine.a_), atol=1e-4)
    np.testing.assert_allclose(fitted(coarse.b_), fitted(fine.b_), atol=1e-4)


def test_incomplete_data_reaches_at_least_girths_likelihood() -> None:
    """With missing answers (what a sparse list always is) girth's estimate is not the MML maximum; ours is."""
    from girth import twopl_mml

    d = simulate(20, 800, seed=5, missing=0.4)
    dense = d["dense"].astype(int)
    dense[~d["observed"]] = -99999  # girth's code for "not answered"
    g = twopl_mml(dense)
    ours = IRT2PL(tol=1e-7).fit(d["person"], d["item"], d["correct"])
    assert ours.a_ is not None and ours.b_ is not None
    fine = np.linspace(-8, 8, 321)
    args = (d["person"], d["item"], d["correct"])
    ll_ours = oracle_loglik(ours.a_, ours.b_, *args, nodes=fine)
    assert ll_ours > oracle_loglik(np.asarray(g["Discrimination"]), np.asarray(g["Difficulty"]), *args, nodes=fine)
    assert np.corrcoef(ours.b_, g["Difficulty"])[0, 1] > 0.99  # same estimator, same data: close


# --- the likelihood, its maximum and the standard errors, against a brute-force oracle ------------------------------


@pytest.fixture(scope="module")
def small() -> tuple[dict[str, Any], IRT2PL, np.ndarray]:
    d = simulate(8, 400, seed=21, missing=0.3)
    # repeated answers count: the first 150 answers are given a second time, some with the other outcome
    rng = np.random.default_rng(0)
    again = np.arange(150)
    d["person"] = np.concatenate([d["person"], d["person"][again]])
    d["item"] = np.concatenate([d["item"], d["item"][again]])
    d["correct"] = np.concatenate([d["correct"], np.where(rng.random(150) < 0.3, ~d["correct"][again], True)])
    model = IRT2PL(tol=1e-10, max_iter=5000).fit(d["person"], d["item"], d["correct"])
    nodes = np.linspace(-5.0, 5.0, 41)
    return d, model, nodes


def test_log_likelihood_is_the_marginal_likelihood(small: tuple[dict[str, Any], IRT2PL, np.ndarray]) -> None:
    d, model, nodes = small
    assert model.a_ is not None and model.b_ is not None and model.converged_
    expected = oracle_loglik(model.a_, model.b_, d["person"], d["item"], d["correct"], nodes=nodes)
    assert model.log_likelihood_ == pytest.approx(expected, rel=1e-10)
    assert model.n_obs_ == len(d["correct"])


def _numeric_block(d: dict[str, Any], model: IRT2PL, nodes: np.ndarray, j: int, h: float = 1e-4) -> Any:
    """Gradient and Hessian of the oracle log-likelihood in (a_j, b_j), by central differences."""
    assert model.a_ is not None and model.b_ is not None

    def ll(da: float, db: float) -> float:
        a, b = fitted(model.a_).copy(), fitted(model.b_).copy()
        a[j] += da
        b[j] += db
        return oracle_loglik(a, b, d["person"], d["item"], d["correct"], nodes=nodes)

    f0 = ll(0, 0)
    grad = np.array([(ll(h, 0) - ll(-h, 0)) / (2 * h), (ll(0, h) - ll(0, -h)) / (2 * h)])
    haa = (ll(h, 0) - 2 * f0 + ll(-h, 0)) / h**2
    hbb = (ll(0, h) - 2 * f0 + ll(0, -h)) / h**2
    hab = (ll(h, h) - ll(h, -h) - ll(-h, h) + ll(-h, -h)) / (4 * h * h)
    return grad, np.array([[haa, hab], [hab, hbb]])


def test_estimate_is_the_maximum_and_standard_errors_are_the_observed_information(
    small: tuple[dict[str, Any], IRT2PL, np.ndarray],
) -> None:
    """Louis' formula equals the item's block of minus the numerical Hessian of the marginal log-likelihood."""
    d, model, nodes = small
    assert model.se_a_ is not None and model.se_b_ is not None and model.cov_ab_ is not None
    for j in range(8):
        grad, hess = _numeric_block(d, model, nodes, j)
        assert np.max(np.abs(grad)) < 1e-4, (j, grad)
        cov = np.linalg.inv(-hess)
        assert model.se_a_[j] == pytest.approx(math.sqrt(cov[0, 0]), rel=2e-3), j
        assert model.se_b_[j] == pytest.approx(math.sqrt(cov[1, 1]), rel=2e-3), j
        assert model.cov_ab_[j] == pytest.approx(cov[0, 1], rel=5e-3, abs=1e-6), j


def test_standard_errors_match_the_sampling_spread() -> None:
    """(estimate - truth) / SE has SD close to 1 over 150 items (complete-data information alone would be too small)."""
    d = simulate(150, 3000, seed=8, missing=0.7)
    model = IRT2PL().fit(d["person"], d["item"], d["correct"])
    assert model.a_ is not None and model.se_a_ is not None and model.b_ is not None and model.se_b_ is not None
    za = (model.a_ - d["a"]) / model.se_a_
    zb = (model.b_ - d["b"]) / model.se_b_
    assert 0.8 <= float(np.std(za)) <= 1.25, np.std(za)
    assert 0.8 <= float(np.std(zb)) <= 1.25, np.std(zb)


# --- recovery on the default simulated school ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_answers() -> dict[str, Any]:
    """The default world's answers with a person per student-week (the unit whose ability the world defines)."""
    params = WorldParams()
    world = generate_world(params)
    att = world.attempts
    start = pd.Timestamp(params.start_date)
    local_day = att["answered_at"].dt.tz_convert(params.timezone).dt.tz_localize(None).dt.normalize()
    week = ((local_day - start).dt.days // 7).to_numpy()
    truth = world.student_weeks.assign(week=(world.student_weeks["week_start"] - start).dt.days // 7)
    truth["person"] = truth["user_id"] * 100 + truth["week"]
    return {
        "person": att["user_id"].to_numpy() * 100 + week,
        "item": att["item_id"].to_numpy(),
        "correct": att["is_correct"].to_numpy(),
        "items": world.items,
        "truth": truth[["person", "theta"]],
    }


@pytest.fixture(scope="module")
def world_model(world_answers: dict[str, Any]) -> IRT2PL:
    w = world_answers
    return IRT2PL(latent="empirical").fit(w["person"], w["item"], w["correct"])


def _item_correlations(model: IRT2PL, items: pd.DataFrame) -> tuple[float, float]:
    params = model.item_parameters().merge(items, on="item_id", suffixes=("", "_true"))
    assert params["flag"].isna().all()
    return (
        float(np.corrcoef(params["a"], params["a_true"])[0, 1]),
        float(np.corrcoef(params["b"], params["b_true"])[0, 1]),
    )


def test_item_recovery_on_default_world(world_answers: dict[str, Any], world_model: IRT2PL) -> None:
    corr_a, corr_b = _item_correlations(world_model, world_answers["items"])
    assert corr_a >= 0.9, corr_a  # measured 0.959
    assert corr_b >= 0.97, corr_b  # measured 0.992
    assert world_model.converged_


def test_item_recovery_on_default_world_with_normal_population(world_answers: dict[str, Any]) -> None:
    w = world_answers
    corr_a, corr_b = _item_correlations(IRT2PL().fit(w["person"], w["item"], w["correct"]), w["items"])
    assert corr_a >= 0.9, corr_a  # measured 0.920: the mixture of learner types is not normal
    assert corr_b >= 0.97, corr_b  # measured 0.990


def test_ability_recovery_on_default_world(world_answers: dict[str, Any], world_model: IRT2PL) -> None:
    w = world_answers
    scores = world_model.score(w["person"], w["item"], w["correct"]).merge(w["truth"], on="person")
    busy = scores[scores["n_responses"] >= 30]
    assert len(busy) > 1000
    corr = float(np.corrcoef(busy["theta_x"], busy["theta_y"])[0, 1])
    assert corr >= 0.9, corr  # measured 0.911 (normal population: 0.890; true items + normal prior: 0.897)


# --- scoring ------------------------------------------------------------------------------------------------------


def test_eap_matches_brute_force_for_any_subset_of_items() -> None:
    d = simulate(300, 500, seed=3)
    model = IRT2PL().fit(d["person"], d["item"], d["correct"])
    assert model.a_ is not None and model.b_ is not None
    rng = np.random.default_rng(1)
    rows = []
    for student, k in enumerate([1, 3, 10, 40, 120, 300]):  # students answering from 1 to 300 items
        items = rng.choice(300, size=k, replace=False)
        correct = d["dense"][items, student]
        rows.append(pd.DataFrame({"person": f"s{student}", "item": items, "correct": correct}))
    answers = pd.concat(rows).sample(frac=1.0, random_state=2)  # order does not matter
    scores = model.score(answers["person"], answers["item"], answers["correct"]).set_index("person")
    grid = np.linspace(-8, 8, 4001)
    for person, group in answers.groupby("person"):
        a, b = model.a_[group["item"].to_numpy()], model.b_[group["item"].to_numpy()]
        p = 1.0 / (1.0 + np.exp(-a[None, :] * (grid[:, None] - b[None, :])))
        y = group["correct"].to_numpy()
        log_post = np.where(y, np.log(p), np.log1p(-p)).sum(axis=1) - 0.5 * grid**2
        post = np.exp(log_post - log_post.max())
        post /= post.sum()
        mean = post @ grid
        sd = math.sqrt(post @ grid**2 - mean**2)
        mine = scores.loc[str(person)]
        assert mine["theta"] == pytest.approx(mean, abs=1e-4)
        assert mine["sd"] == pytest.approx(sd, abs=1e-4)
        assert mine["n_responses"] == len(group)


def test_score_is_vectorised_consistently() -> None:
    """Scoring many persons at once equals scoring them one at a time."""
    d = simulate(40, 300, seed=4, missing=0.5)
    model = IRT2PL().fit(d["person"], d["item"], d["correct"])
    together = model.score(d["person"], d["item"], d["correct"])
    assert list(together["person"]) == sorted(set(d["person"]))
    for person in (0, 17, 299):
        mine = d["person"] == person
        alone = model.score(d["person"][mine], d["item"][mine], d["correct"][mine])
        row = together[together["person"] == person]
        np.testing.assert_allclose(alone[["theta", "sd"]].to_numpy(), row[["theta", "sd"]].to_numpy(), rtol=1e-12)


# --- flagged items ------------------------------------------------------------------------------------------------


def test_flagged_items_are_left_out() -> None:
    d = simulate(20, 600, seed=6)
    base = IRT2PL(min_responses=30).fit(d["person"], d["item"], d["correct"])
    rng = np.random.default_rng(7)
    rare_persons = rng.choice(600, 10, replace=False)
    # item 100: 10 answers (too few); item 101: 50 answers, all correct; a student who only answers item 100
    extra = pd.DataFrame(
        {
            "person": np.concatenate([rare_persons, np.arange(50), [9999]]),
            "item": np.concatenate([np.full(10, 100), np.full(50, 101), [100]]),
            "correct": np.concatenate([rng.random(10) < 0.5, np.ones(50, dtype=bool), [True]]),
        }
    )
    person = np.concatenate([d["person"], extra["person"]])
    item = np.concatenate([d["item"], extra["item"]])
    correct = np.concatenate([d["correct"], extra["correct"]])
    model = IRT2PL(min_responses=30).fit(person, item, correct)

    params = model.item_parameters().set_index("item_id")
    assert params.loc[100, "flag"] == FLAG_TOO_FEW and params.loc[100, "n_responses"] == 11
    assert params.loc[101, "flag"] == FLAG_NO_VARIANCE and params.loc[101, "p_correct"] == 1.0
    assert params.loc[[100, 101], ["a", "b", "se_a", "se_b"]].isna().all().all()
    assert params.loc[list(range(20)), "flag"].isna().all()
    assert list(model.calibrated_items()) == list(range(20))
    # left out entirely: the other items are exactly as without them, and so is the person count
    np.testing.assert_allclose(params.loc[list(range(20)), "a"], fitted(base.a_), rtol=1e-12)
    np.testing.assert_allclose(params.loc[list(range(20)), "b"], fitted(base.b_), rtol=1e-12)
    assert model.n_persons_ == base.n_persons_ == 600
    assert model.n_obs_ == base.n_obs_
    # and ignored when scoring: the lone student of item 100 has no usable answer
    scores = model.score(person, item, correct).set_index("person")
    lone = scores.loc[9999]
    assert lone["n_responses"] == 0 and np.isnan(lone["theta"])
    plain = base.score(d["person"], d["item"], d["correct"]).set_index("person")
    np.testing.assert_allclose(scores.loc[plain.index, "theta"], plain["theta"], rtol=1e-12)


def test_too_few_usable_items_is_insufficient_data() -> None:
    d = simulate(5, 100, seed=1)
    with pytest.raises(InsufficientDataError) as err:
        IRT2PL(min_responses=101).fit(d["person"], d["item"], d["correct"])
    assert err.value.details["usable_items"] == 0 and err.value.details["too_few_responses"] == 5
    with pytest.raises(InsufficientDataError):
        IRT2PL().fit([], [], [])


def test_log_normal_prior_keeps_slopes_positive() -> None:
    d = simulate(10, 400, seed=9)
    rng = np.random.default_rng(3)
    noise = rng.random(400) < 0.5  # item 10: answers unrelated to ability
    person = np.concatenate([d["person"], np.arange(400)])
    item = np.concatenate([d["item"], np.full(400, 10)])
    correct = np.concatenate([d["correct"], noise])
    mle = IRT2PL().fit(person, item, correct)
    pri = IRT2PL(a_prior_log_sd=0.5).fit(person, item, correct)
    assert mle.a_ is not None and pri.a_ is not None and pri.se_a_ is not None
    assert (pri.a_ > 0).all() and np.isfinite(pri.se_a_).all()
    assert pri.a_[10] < 0.5  # the noise item stays weak
    # the prior pulls the slopes together (its mode is exp(0 - 0.5^2))
    assert np.std(np.log(pri.a_[:10])) < np.std(np.log(mle.a_[:10]))
    assert pri.log_likelihood_ is not None and mle.log_likelihood_ is not None
    assert pri.log_likelihood_ < mle.log_likelihood_  # MAP, not the MLE


def test_non_convergence_is_recorded_and_warned() -> None:
    d = simulate(10, 300, seed=2)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        model = IRT2PL(max_iter=2).fit(d["person"], d["item"], d["correct"])
    assert model.converged_ is False and model.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert IRT2PL().fit(d["person"], d["item"], d["correct"]).converged_


# --- linking ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model() -> tuple[dict[str, Any], IRT2PL]:
    d = simulate(40, 1500, seed=31, missing=0.3)
    return d, IRT2PL().fit(d["person"], d["item"], d["correct"])


@pytest.mark.parametrize("method", METHODS)
def test_linking_same_data_has_no_drift(base_model: tuple[dict[str, Any], IRT2PL], method: Method) -> None:
    """A second calibration on the same answers, shuffled and with other person ids, links with A = 1, B = 0."""
    d, base = base_model
    rng = np.random.default_rng(5)
    order = rng.permutation(len(d["person"]))
    relabel = rng.permutation(1500)
    persons = np.array([f"p{relabel[v]:05d}" for v in d["person"][order]])  # other ids in another order
    again = IRT2PL().fit(persons, d["item"][order], d["correct"][order])
    result = link(again, base, method=method)
    assert len(result.anchors) == 40
    assert pytest.approx(1.0, abs=1e-6) == result.A
    assert pytest.approx(0.0, abs=1e-6) == result.B
    assert result.drift["drift_a"].abs().max() < 1e-6
    assert result.drift["drift_b"].abs().max() < 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_linking_recovers_a_known_linear_transformation(
    base_model: tuple[dict[str, Any], IRT2PL], method: Method
) -> None:
    _, base = base_model
    moved = base.rescaled(1.7, -0.4)  # theta_moved = 1.7 theta - 0.4
    result = link(moved, base, method=method)
    assert pytest.approx(1 / 1.7, rel=1e-6) == result.A
    assert pytest.approx(0.4 / 1.7, abs=1e-6) == result.B
    np.testing.assert_allclose(fitted(result.model.a_), fitted(base.a_), rtol=1e-6)
    np.testing.assert_allclose(fitted(result.model.b_), fitted(base.b_), atol=1e-6)
    assert result.model.prior_mean_ == pytest.approx(0.0, abs=1e-6)
    assert result.model.prior_sd_ == pytest.approx(1.0, rel=1e-6)


def test_linking_puts_another_population_on_the_base_scale(base_model: tuple[dict[str, Any], IRT2PL]) -> None:
    """Base: theta ~ N(0, 1). New: the same 40 items plus 10 new ones, taken by a population N(0.5, 1.3^2)."""
    d, base = base_model
    new = simulate(50, 3000, seed=32, mean=0.5, sd=1.3, missing=0.3)
    # the same item bank for the anchors (seed 31's first 40 items), 10 items only the new run has
    rng = np.random.default_rng(33)
    a = np.concatenate([d["a"], np.exp(rng.normal(0, 0.3, 10))])
    b = np.concatenate([d["b"], rng.normal(0, 1, 10)])
    p = 1.0 / (1.0 + np.exp(-a[new["item"]] * (new["theta"][new["person"]] - b[new["item"]])))
    correct = rng.random(len(p)) < p
    fitted = IRT2PL().fit(new["person"], new["item"], correct)
    for method in METHODS:
        result = link(fitted, base, method=method)
        assert len(result.anchors) == 40
        assert pytest.approx(1.3, abs=0.1) == result.A, method
        assert pytest.approx(0.5, abs=0.1) == result.B, method
        linked = result.model
        assert linked.b_ is not None and linked.a_ is not None
        # every item, new ones included, is now on the base (= true) scale
        assert np.max(np.abs(linked.b_ - b)) < 0.35
        assert np.corrcoef(linked.a_, a)[0, 1] > 0.9
        assert result.drift["drift_b"].abs().mean() < 0.1
        # scores on the linked scale are the new scale's scores mapped by theta -> A theta + B (normal prior)
        s_new = fitted.score(new["person"], new["item"], correct)
        s_linked = linked.score(new["person"], new["item"], correct)
        np.testing.assert_allclose(s_linked["theta"], result.A * s_new["theta"] + result.B, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s_linked["sd"], result.A * s_new["sd"], rtol=1e-9)


def test_linking_errors(base_model: tuple[dict[str, Any], IRT2PL]) -> None:
    _, base = base_model
    other = simulate(5, 300, seed=40)
    disjoint = IRT2PL().fit(other["person"], other["item"] + 1000, other["correct"])
    with pytest.raises(InsufficientDataError):
        link(disjoint, base)
    with pytest.raises(InvalidInputError) as err:
        link(base, base, anchors=[0, 1, 1234])
    assert err.value.details["problems"][0]["column"] == "anchors"
    with pytest.raises(InvalidInputError):
        link(base, base, method="mean_mean")  # type: ignore[arg-type]
    with pytest.raises(NotFittedError):
        link(IRT2PL(), base)
    only_two = link(base.rescaled(2.0, 1.0), base, anchors=[3, 7], method="mean_sigma")
    assert list(only_two.anchors) == [3, 7] and pytest.approx(0.5) == only_two.A


# --- serialisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("latent", ["normal", "empirical"])
def test_json_round_trip(latent: Literal["normal", "empirical"]) -> None:
    d = simulate(25, 700, seed=14, missing=0.2)
    person = np.array([f"u{v}" for v in d["person"]])
    item = d["item"].copy()
    item[:5] = 99  # a flagged item (too few answers)
    model = IRT2PL(latent=latent).fit(person, item, d["correct"])
    for m in (model, model.rescaled(1.2, 0.3)):
        text = json.dumps(m.to_json(), allow_nan=False)
        back = IRT2PL.from_json(json.loads(text))
        assert back.to_json() == m.to_json()
        pd.testing.assert_frame_equal(back.item_parameters(), m.item_parameters())
        pd.testing.assert_frame_equal(back.score(person, item, d["correct"]), m.score(person, item, d["correct"]))
        assert back.get_params() == m.get_params()
    # a scale change maps every EAP (and SD) by the same line, whatever the population
    moved = model.rescaled(1.2, 0.3).score(person, item, d["correct"])
    plain = model.score(person, item, d["correct"])
    np.testing.assert_allclose(moved["theta"], 1.2 * plain["theta"] + 0.3, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(moved["sd"], 1.2 * plain["sd"], rtol=1e-9)


def test_from_json_refuses_other_and_malformed_models(base_model: tuple[dict[str, Any], IRT2PL]) -> None:
    _, base = base_model
    good = base.to_json()
    for bad in (
        {**good, "engine": "coxph"},
        {**good, "version": 99},
        {**good, "a": good["a"][:-1]},
        {**good, "flags": ["weird"] * len(good["flags"])},
        {**good, "item_ids": [1.5] * len(good["item_ids"])},
        {**good, "latent_nodes": [0.0, 1.0]},
        {k: v for k, v in good.items() if k != "b"},
    ):
        with pytest.raises(InvalidInputError):
            IRT2PL.from_json(bad)


def test_not_fitted() -> None:
    model = IRT2PL()
    for call in (
        model.to_json,
        model.item_parameters,
        model.calibrated_items,
        lambda: model.score([1], [1], [1]),
        lambda: model.rescaled(1.0, 0.0),
    ):
        with pytest.raises(NotFittedError):
            call()


# --- input errors -------------------------------------------------------------------------------------------------


def _problem(err: pytest.ExceptionInfo[InvalidInputError]) -> dict[str, Any]:
    problem: dict[str, Any] = err.value.details["problems"][0]
    return problem


def test_invalid_input_names_the_column() -> None:
    ok_p, ok_i, ok_c = [1, 2, 3], [1, 1, 2], [1, 0, 1]
    cases: list[tuple[Any, Any, Any, str]] = [
        (ok_p, ok_i, [1, 2, 1], "correct"),
        (ok_p, ok_i, [1, float("nan"), 1], "correct"),
        (ok_p, ok_i, [1, 0], "correct"),
        (ok_p, ok_i, ["yes", "no", "yes"], "correct"),
        ([1, None, 3], ok_i, ok_c, "person"),
        ([1.0, 2.5, 3.0], ok_i, ok_c, "person"),
        (ok_p, [1, 1], ok_c, "item"),
        (ok_p, [[1, 1, 2]], ok_c, "item"),
        (ok_p, np.array([1, "x", 2], dtype=object), ok_c, "item"),
        (ok_p, [True, False, True], ok_c, "item"),
    ]
    for persons, items, correct, column in cases:
        with pytest.raises(InvalidInputError) as err:
            IRT2PL().fit(persons, items, correct)
        assert _problem(err)["column"] == column, (persons, items, correct)
    with pytest.raises(InvalidInputError) as err:
        IRT2PL().fit(np.array([1, None, 3], dtype=object), ok_i, ok_c)
    assert _problem(err)["row"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"min_responses": 0},
        {"quadrature_points": 2},
        {"quadrature_range": -1.0},
        {"tol": 0.0},
        {"max_iter": 1.5},
        {"a_prior_log_sd": 0.0},
        {"latent": "uniform"},
        {"histogram_smoothing": -0.1},
        {"score_points": True},
    ],
)
def test_invalid_parameters(params: dict[str, Any]) -> None:
    d = simulate(5, 50, seed=1)
    with pytest.raises(InvalidInputError) as err:
        IRT2PL(**params).fit(d["person"], d["item"], d["correct"])
    assert err.value.details["problems"][0]["parameter"] == next(iter(params))


def test_score_unknown_items(base_model: tuple[dict[str, Any], IRT2PL]) -> None:
    _, base = base_model
    with pytest.raises(InvalidInputError) as err:
        base.score([1, 1, 2], [0, 777, 3], [1, 0, 1])
    assert _problem(err)["items"] == [777]
    scores = base.score([1, 1, 2], [0, 777, 3], [1, 0, 1], unknown_items="ignore")
    assert list(scores["n_responses"]) == [1, 1]
    with pytest.raises(InvalidInputError):
        base.score([1], ["0"], [1])  # string ids for an integer-id model are unknown


# --- the learning index -------------------------------------------------------------------------------------------


def test_learning_index() -> None:
    out = learning_index([0.0, 1.0, -2.0, 7.0, -6.0, float("nan")])
    np.testing.assert_array_equal(out[:5], [50.0, 60.0, 30.0, 100.0, 0.0])
    assert np.isnan(out[5])
    # monotone in ability: a better EAP is a higher index
    theta = np.linspace(-4, 4, 17)
    assert (np.diff(learning_index(theta)) > 0).all()
