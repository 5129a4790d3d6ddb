"""The binomial growth model's gibbs sampler (``GrowthModel(sampler="gibbs")``: NumPyro NUTS on the population within
a Gibbs sweep whose units take BlackJAX independence Metropolis-Hastings steps; :mod:`learnpulse.engines.growth_gibbs`)
against the joint NUTS sampler on the same data, the truth, and known targets.

- **Same posterior as joint NUTS** (150 units x 10 weeks, both fitted here): two independent runs with ~1,000 draws
  differ by Monte-Carlo error, ~0.05-0.12 posterior SD on a mean and 4-8% on an SD: hyper-parameter means within 0.4
  SDs and SDs within -20% / +25%; every unit's coefficient means within 0.3 SDs (the worst of 300) and SDs within
  -20% / +25%. An acceptance ratio with the proposal's density on the wrong side narrows the units by ~20-35%.
- **The Metropolis-Hastings step** (the proposal as BlackJAX uses it) leaves a known bivariate normal invariant.
- **Truth**: the truth in the 95% intervals, 90% intervals of the true slopes covering them 80-97% (150 units),
  R-hat <= 1.01, no divergences, most proposals accepted.
- The data layout the units need (one grid column per unit) gives the flat rows' likelihood; the sampler is refused
  for the gaussian family, with the parameter named.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from learnpulse.engines import growth
from learnpulse.engines.growth import GrowthModel
from learnpulse.errors import InvalidInputError
from tests.test_growth_engine import (
    BINOMIAL_TRUTH,
    GAUSSIAN_TRUTH,
    Simulated,
    assert_truth_in_95,
    interval_coverage,
    problem_names,
    simulate,
)


@pytest.fixture(scope="module")
def binomial_sim() -> Simulated:
    return simulate(BINOMIAL_TRUTH, units=150, weeks=10, seed=11)


def fit(sim: Simulated, sampler: str, seed: int) -> GrowthModel:
    f = sim.frame
    model = GrowthModel("binomial", iter=1000, chains=2, seed=seed, sampler=sampler)
    return model.fit(f["unit"], f["time"], f["y"], f["trials"])


@pytest.fixture(scope="module")
def gibbs_fit(binomial_sim: Simulated) -> GrowthModel:
    return fit(binomial_sim, "gibbs", seed=3)


@pytest.fixture(scope="module")
def nuts_fit(binomial_sim: Simulated) -> GrowthModel:
    return fit(binomial_sim, "nuts", seed=8)


def test_gibbs_has_the_joint_samplers_posterior(gibbs_fit: GrowthModel, nuts_fit: GrowthModel) -> None:
    ours, theirs = gibbs_fit.fixed_effects(), nuts_fit.fixed_effects()
    for name in ours.index:
        gap = abs(ours.loc[name, "estimate"] - theirs.loc[name, "estimate"]) / theirs.loc[name, "est_error"]
        ratio = ours.loc[name, "est_error"] / theirs.loc[name, "est_error"]
        print(
            f"{name:20s} gibbs {ours.loc[name, 'estimate']: .4f} nuts {theirs.loc[name, 'estimate']: .4f} "
            f"gap {gap:.3f} SD, SD ratio {ratio:.3f}"
        )
        assert gap <= 0.4, name
        assert 0.8 <= ratio <= 1.25, (name, ratio)
    units = np.arange(150)
    mean, cov, _ = gibbs_fit.unit_moments(units)
    ref_mean, ref_cov, _ = nuts_fit.unit_moments(units)
    ref_sd = np.sqrt(np.stack([ref_cov[:, 0, 0], ref_cov[:, 1, 1]], axis=1))
    gaps = np.abs(mean - ref_mean) / ref_sd
    ratios = np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1)) / ref_sd
    print(
        f"units: worst mean gap {gaps.max():.3f} SD, SD ratios {ratios.min():.3f}-{ratios.max():.3f} "
        f"(mean {ratios.mean():.3f})"
    )
    assert gaps.max() <= 0.3
    assert ratios.min() >= 0.8 and ratios.max() <= 1.25
    assert 0.95 <= ratios.mean() <= 1.05


def test_gibbs_diagnostics_and_truth(gibbs_fit: GrowthModel, binomial_sim: Simulated) -> None:
    print()
    assert_truth_in_95(gibbs_fit, binomial_sim.truth)
    diag = gibbs_fit.diagnostics_
    assert diag is not None
    print({k: diag[k] for k in ("max_rhat", "min_ess_bulk", "units_acceptance", "mean_leapfrog_steps", "sampler")})
    assert diag["sampler"] == "gibbs"
    assert diag["max_rhat"] <= 1.01
    assert diag["min_ess_bulk"] >= 400
    assert diag["divergences"] == 0
    assert 0.6 <= diag["units_acceptance"] < 1.0
    assert diag["units_min_ess_bulk"] >= 100
    coverage = interval_coverage(gibbs_fit, binomial_sim.coef)
    print(f"gibbs 90% interval coverage of the true slopes / intercepts (150 units): {coverage}")
    assert 0.80 <= coverage["slope"] <= 0.97
    assert 0.80 <= coverage["intercept"] <= 0.97


def test_the_units_step_keeps_a_known_target() -> None:
    """BlackJAX's independence Metropolis-Hastings with :func:`student_t_proposal` on N(m, S): 60,000 steps
    (~45,000 effective at ~75% acceptance) give the mean within ~0.005 and the covariance within ~0.01."""
    import blackjax
    import jax
    import jax.numpy as jnp

    from learnpulse.engines.growth_gibbs import student_t_proposal

    m = jnp.array([0.3, -0.2])
    s = jnp.array([[1.2, 0.3], [0.3, 0.8]])
    precision = jnp.linalg.inv(s)

    def log_density(x: jax.Array) -> jax.Array:
        d = x - m
        return -0.5 * d @ precision @ d

    draw, proposal_log_density = student_t_proposal(4, 2)
    irmh = blackjax.irmh(log_density, draw, proposal_log_density)

    def step(state: object, key: jax.Array) -> tuple[object, tuple[jax.Array, jax.Array]]:
        state, info = irmh.step(key, state)
        return state, (state.position, info.is_accepted)

    _, (x, accepted) = jax.lax.scan(step, irmh.init(jnp.zeros(2)), jax.random.split(jax.random.PRNGKey(0), 60_000))
    x = np.asarray(x, dtype=np.float64)
    print(f"acceptance {float(accepted.mean()):.3f}, mean {x.mean(axis=0)}, cov {np.cov(x, rowvar=False).ravel()}")
    np.testing.assert_allclose(x.mean(axis=0), np.asarray(m), atol=0.03)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.asarray(s), atol=0.05)


def test_the_sweeps_keep_a_known_joint_target_and_count_every_transition() -> None:
    """``nuts_within_gibbs`` on ``x ~ N(0, 1)``, ``w ~ N(x, I_2)``: NUTS on ``x`` given ``w``, the units' step on ``w``
    given ``x``. The marginals are N(0, 1) and N(0, 2 I); 10,000 draws of two sweeps (~4,000 effective for ``x``) give
    the variances within ~0.03 / 0.05. An iteration is two sweeps: the NUTS block makes two transitions per
    iteration, and the divergences / steps recorded are summed over both and the units' acceptance averaged (the
    blocks' own fields hold the last)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    from learnpulse.engines.growth_gibbs import GIBBS_FIELDS, nuts_within_gibbs

    def model() -> None:
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("w", dist.Normal(x, 1.0).expand([1, 2]).to_event(2))

    def unit_log_density(w: jax.Array, population: dict[str, jax.Array], data: dict[str, jax.Array]) -> jax.Array:
        return -0.5 * jnp.sum((w - population["x"]) ** 2)

    mcmc = MCMC(
        nuts_within_gibbs(NUTS(model), unit_log_density, {}), num_warmup=500, num_samples=10_000, progress_bar=False
    )
    mcmc.run(
        jax.random.PRNGKey(1),
        init_params={"x": jnp.asarray(0.0), "w": jnp.zeros((1, 2))},
        extra_fields=(*GIBBS_FIELDS, "block_states.1.num_steps", "block_states.0.acceptance"),
    )
    draws = {k: np.asarray(v, dtype=np.float64) for k, v in mcmc.get_samples().items()}
    print(f"x mean {draws['x'].mean():.3f} var {draws['x'].var():.3f}; w var {draws['w'].var(axis=0).ravel()}")
    assert abs(draws["x"].mean()) <= 0.1
    assert draws["x"].var() == pytest.approx(1.0, abs=0.12)
    np.testing.assert_allclose(draws["w"].var(axis=0).ravel(), 2.0, atol=0.2)
    fields = mcmc.get_extra_fields()
    steps, last = np.asarray(fields["steps"]), np.asarray(fields["block_states.1.num_steps"])
    assert (steps >= last + 1).all() and steps.mean() == pytest.approx(2 * last.mean(), rel=0.1)
    assert int(mcmc.last_state.block_states[1].i) == 2 * (500 + 10_000)  # the NUTS block's transitions
    # one unit, one proposal per sweep: the acceptance recorded is the mean over the two sweeps, 0, 0.5 or 1, and its
    # mean is the last sweep's mean (either sweep is accepted equally often)
    acceptance, last_sweep = np.asarray(fields["acceptance"]), np.asarray(fields["block_states.0.acceptance"])
    assert set(np.unique(acceptance)) <= {0.0, 0.5, 1.0} and (acceptance == 0.5).mean() > 0.05
    assert acceptance.mean() == pytest.approx(last_sweep.mean(), abs=0.03)


def test_the_units_grid_gives_the_flat_rows_likelihood() -> None:
    """Irregular rows (each unit its own weeks, not enough overlap for the shared grid) laid out as the gibbs
    sampler's padded grid: the same log likelihood as the flat rows, for any coefficients."""
    growth._jax()  # double precision on, as for a fit
    import jax.numpy as jnp

    from learnpulse.engines.binomial_loglik import binomial_loglik, grid_loglik

    rng = np.random.default_rng(4)
    units = np.repeat(np.arange(40), rng.integers(1, 6, 40))
    times = rng.uniform(0, 30, len(units)).round(1)
    trials = rng.integers(1, 30, len(units))
    data = growth.prepare_data("binomial", units, times, rng.binomial(trials, 0.6), trials)
    flat, grid = growth._binomial_layout(data), growth._binomial_layout(data, grid=True)
    assert "code" in flat and "code" not in grid
    assert grid["time"].shape == grid["y"].shape == (5, 40)
    c0, c1 = (jnp.asarray(rng.normal(0, 1, 40), jnp.float32) for _ in range(2))
    expected = float(binomial_loglik(c0, c1, *(jnp.asarray(flat[k]) for k in ("time", "y", "trials", "code"))))
    per_unit = grid_loglik(c0, c1, *(jnp.asarray(grid[k]) for k in ("time", "y", "trials")))
    assert float(jnp.sum(per_unit.astype(jnp.float64))) == pytest.approx(expected, rel=1e-5)


def test_a_grid_of_mostly_padding_is_refused_naming_the_unit() -> None:
    """One unit with far more (irregular) rows than the rest would make the gibbs sampler's grid mostly padding:
    refused before any sampling, naming the unit; the same rows without it are laid out."""
    rng = np.random.default_rng(5)
    units = np.concatenate([np.arange(100_000), np.full(200, 7)])
    times = rng.uniform(0, 30, len(units)).round(2)
    trials = rng.integers(1, 30, len(units))
    correct = rng.binomial(trials, 0.6)
    with pytest.raises(InvalidInputError) as err:
        GrowthModel("binomial", sampler="gibbs").fit(units, times, correct, trials)
    assert problem_names(err.value) == {"unit"}
    assert "unit 7 has 201 rows" in str(err.value) and "sampler='nuts'" in str(err.value)
    data = growth.prepare_data("binomial", units[:-200], times[:-200], correct[:-200], trials[:-200])
    assert growth._binomial_layout(data, grid=True)["y"].shape == (1, 100_000)


def test_sparse_weekly_data_is_laid_out_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long window where most units are active in a few weeks and some in all of them takes the padded grid
    (units x weeks is more than twice the rows) and is laid out, however large: no unit is an outlier."""
    monkeypatch.setattr(growth, "GRID_FREE_CELLS", 100)  # what matters here is the outlier test, not the size
    rng = np.random.default_rng(6)
    active = [np.sort(rng.choice(52, size=k, replace=False)) for k in rng.integers(1, 16, 2_000)]
    active[0] = np.arange(52)  # one student active every week
    units = np.repeat(np.arange(len(active)), [len(a) for a in active])
    weeks = np.concatenate(active).astype(np.float64)
    trials = rng.integers(1, 30, len(units))
    data = growth.prepare_data("binomial", units, weeks, rng.binomial(trials, 0.6), trials)
    assert 52 * len(active) > 2 * len(units)  # not the shared grid
    assert growth._binomial_layout(data, grid=True)["y"].shape == (52, len(active))


def test_gibbs_is_for_the_binomial_family() -> None:
    sim = simulate(GAUSSIAN_TRUTH, units=20, weeks=4, seed=1)
    f: pd.DataFrame = sim.frame
    with pytest.raises(InvalidInputError) as err:
        GrowthModel("gaussian", sampler="gibbs").fit(f["unit"], f["time"], f["y"])
    assert problem_names(err.value) == {"sampler"}
    assert "binomial" in str(err.value)
    with pytest.raises(InvalidInputError, match="unknown sampler 'hmc'"):
        GrowthModel("binomial", sampler="hmc").fit(f["unit"], f["time"], f["y"].clip(0, 1).round(), np.ones(len(f)))
