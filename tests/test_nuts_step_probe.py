"""The step-size probe (engines/nuts_step_probe.py) on a 40,000-dim normal, where the U-turn resonance is sharp:
with the step size fixed inside the band it must step out (trees from hundreds of steps to 31) and still sample
the target; outside the band (also where a nudge would merely halve the trees) it must keep the step size; with too
little warm-up it must be exactly plain NUTS."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC, NUTS

from learnpulse.engines.nuts_step_probe import NUDGE, ProbedNUTS, nudged_chains

DIM = 40_000
# Variances scattered ~15% around the (identity) mass matrix, like the binomial units' after adaptation. With
# NumPyro's NUTS a fixed step of 0.0995 or less takes 63 leapfrog steps per draw, 0.102 or more 31, and 0.1005
# about 520 (measured while writing the probe).
VAR = np.exp(0.15 * np.random.default_rng(0).standard_normal(DIM))
IN_BAND, ABOVE_BAND, BELOW_SWITCH = 0.1005, 0.105, 0.0995


def _potential(x: dict[str, jax.Array]) -> jax.Array:
    return 0.5 * jnp.sum(x["x"] ** 2 / jnp.asarray(VAR))


def _run(kernel: NUTS, warmup: int, samples: int) -> MCMC:
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, progress_bar=False)
    start = {"x": jnp.asarray(np.sqrt(VAR) * np.random.default_rng(1).standard_normal(DIM))}
    mcmc.run(jax.random.PRNGKey(2), init_params=start, extra_fields=("num_steps",))
    return mcmc


def _fixed_step(kernel: type[NUTS], step: float) -> NUTS:
    return kernel(potential_fn=_potential, step_size=step, adapt_step_size=False, adapt_mass_matrix=False)


def test_a_step_size_in_the_resonance_band_is_nudged_out_and_the_target_kept() -> None:
    mcmc = _run(_fixed_step(ProbedNUTS, IN_BAND), warmup=100, samples=60)
    probe = np.asarray(mcmc.last_state.probe_steps)
    print(f"\nprobe: summed tree lengths at the adapted / nudged step: {probe}")
    assert probe[0] > 4 * probe[1]  # the band's trees are long, the nudged step's short
    assert nudged_chains(mcmc.last_state) == [True]
    assert float(mcmc.last_state.adapt_state.step_size) == pytest.approx(IN_BAND * (1 + NUDGE), rel=1e-6)
    assert np.asarray(mcmc.get_extra_fields()["num_steps"]).max() <= 31
    # Still the target: each coordinate's mean square over its variance averages 1 (40,000 x 60 draws).
    x = np.asarray(mcmc.get_samples()["x"])
    assert np.mean(x**2 / VAR) == pytest.approx(1.0, abs=0.02)
    assert np.mean(x / np.sqrt(VAR)) == pytest.approx(0.0, abs=0.01)


@pytest.mark.parametrize(
    ("step", "steps"), [(ABOVE_BAND, 31), (BELOW_SWITCH, 63)], ids=["above-band", "below-an-ordinary-halving"]
)
def test_outside_the_band_the_adapted_step_size_is_kept(step: float, steps: int) -> None:
    # Below the switch from 63- to 31-step trees the nudged step would halve the trees; that is no resonance (the
    # longer trees' draws are worth more), so the probe must leave it.
    probed = _run(_fixed_step(ProbedNUTS, step), warmup=100, samples=20)
    assert nudged_chains(probed.last_state) == [False]
    assert float(probed.last_state.adapt_state.step_size) == pytest.approx(step, rel=1e-6)
    assert set(np.asarray(probed.get_extra_fields()["num_steps"]).tolist()) == {steps}


def test_with_too_little_warmup_it_is_plain_nuts_draw_for_draw() -> None:
    probed = _run(_fixed_step(ProbedNUTS, IN_BAND), warmup=40, samples=10)
    plain = _run(_fixed_step(NUTS, IN_BAND), warmup=40, samples=10)
    assert nudged_chains(probed.last_state) == [False]
    np.testing.assert_array_equal(np.asarray(probed.get_samples()["x"]), np.asarray(plain.get_samples()["x"]))


def test_with_adaptation_the_probe_runs_after_it_and_sampling_keeps_one_step_size() -> None:
    # Step-size adaptation on: dual averaging gets all but the probe's 16 warm-up draws, then the step is frozen.
    kernel = ProbedNUTS(potential_fn=_potential, adapt_mass_matrix=False)
    mcmc = _run(kernel, warmup=150, samples=30)
    probe = np.asarray(mcmc.last_state.probe_steps)
    assert probe.sum() > 0  # the probe ran
    step = float(mcmc.last_state.adapt_state.step_size)
    assert 0.05 < step < 0.2
    x = np.asarray(mcmc.get_samples()["x"])
    assert np.mean(x**2 / VAR) == pytest.approx(1.0, abs=0.03)
