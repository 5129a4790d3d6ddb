"""The binomial growth likelihood with its hand-written gradient (engines/binomial_loglik.py) against double-precision
arithmetic and JAX's automatic differentiation of the textbook formula, in both data layouts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.stats import binom

from learnpulse.engines import growth


@pytest.fixture(scope="module")
def jax() -> Any:
    return growth._jax()


def _data(seed: int = 3) -> dict[str, np.ndarray]:
    """40 units x 6 rows, some padded (trials 0); coefficients include extreme logits (|eta| up to ~30)."""
    rng = np.random.default_rng(seed)
    units, width = 40, 6
    c0 = rng.normal(0.0, 1.5, units)
    c1 = rng.normal(0.1, 0.3, units)
    c0[:3] = [25.0, -25.0, 0.0]
    c1[:3] = [1.0, -1.0, 0.0]
    time = np.tile(np.arange(width, dtype=float), (units, 1))
    trials = rng.integers(1, 40, (units, width)).astype(float)
    trials[5:10, 4:] = 0.0  # padding rows
    p = 1.0 / (1.0 + np.exp(-(c0[:, None] + c1[:, None] * time)))
    y = rng.binomial(trials.astype(int), p).astype(float)
    return {"c0": c0, "c1": c1, "time": time, "trials": trials, "y": y}


def _textbook(c0: Any, c1: Any, d: dict[str, np.ndarray]) -> Any:
    """The formula as written, in double precision, for JAX to differentiate."""
    import jax.numpy as jnp

    eta = c0[:, None] + c1[:, None] * d["time"]
    return jnp.sum(d["y"] * eta - d["trials"] * jnp.logaddexp(0.0, eta))


def test_value_is_the_binomial_log_likelihood(jax: Any) -> None:
    from learnpulse.engines.binomial_loglik import binomial_loglik

    d = _data()
    value = float(binomial_loglik(d["c0"], d["c1"], d["time"].T, d["y"].T, d["trials"].T, None))  # times first
    eta = d["c0"][:, None] + d["c1"][:, None] * d["time"]
    coefficients = binom.logpmf(d["y"], d["trials"], 0.5) + d["trials"] * np.log(2.0)  # log C(n, y)
    expected = float(np.sum(binom.logpmf(d["y"], d["trials"], 1.0 / (1.0 + np.exp(-eta))) - coefficients))
    assert value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_equals_autodiff_in_both_layouts(jax: Any, dtype: str) -> None:
    import jax.numpy as jnp

    from learnpulse.engines.binomial_loglik import binomial_loglik

    d = _data()
    c0, c1 = jnp.asarray(d["c0"], dtype), jnp.asarray(d["c1"], dtype)
    dense = tuple(jnp.asarray(d[k].T, jnp.float32) for k in ("time", "y", "trials"))  # the grid is times x units
    want = jax.grad(_textbook, argnums=(0, 1))(d["c0"], d["c1"], d)
    got_dense = jax.grad(binomial_loglik, argnums=(0, 1))(c0, c1, *dense, None)

    keep = d["trials"].ravel() > 0  # the flat layout carries no padding
    code = jnp.asarray(np.repeat(np.arange(len(d["c0"])), d["time"].shape[1])[keep])
    flat = tuple(jnp.asarray(d[k].ravel()[keep], jnp.float32) for k in ("time", "y", "trials"))
    value_flat, got_flat = jax.value_and_grad(binomial_loglik, argnums=(0, 1))(c0, c1, *flat, code)

    for got in (got_dense, got_flat):
        for g, w in zip(got, want, strict=True):
            assert g.dtype == jnp.dtype(dtype)  # a cotangent keeps its primal's dtype
            np.testing.assert_allclose(np.asarray(g, float), np.asarray(w), rtol=2e-5, atol=2e-4)
    assert value_flat.dtype == jnp.float64
    assert float(value_flat) == pytest.approx(float(binomial_loglik(c0, c1, *dense, None)), rel=1e-7)


def test_gradient_under_jit_and_scaled_cotangent(jax: Any) -> None:
    import jax.numpy as jnp

    from learnpulse.engines.binomial_loglik import binomial_loglik

    d = _data(seed=5)
    args = tuple(jnp.asarray(d[k].T, jnp.float32) for k in ("time", "y", "trials"))

    def scaled(c0: Any, c1: Any) -> Any:
        return -3.0 * binomial_loglik(c0, c1, *args, None)

    got = jax.jit(jax.grad(scaled, argnums=(0, 1)))(jnp.asarray(d["c0"]), jnp.asarray(d["c1"]))
    want = jax.grad(lambda a, b: -3.0 * _textbook(a, b, d), argnums=(0, 1))(d["c0"], d["c1"])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=5e-4)


@pytest.mark.parametrize(
    ("times", "layout", "max_trials"),
    [("weekly", "grid", 40), ("irregular", "flat", 40), ("weekly", "grid", 50_000)],
)
def test_each_layout_holds_the_rows_likelihood(jax: Any, times: str, layout: str, max_trials: int) -> None:
    """Weekly rows (some missing, some repeated for a unit and week) go on a units x weeks grid, irregular times
    stay flat; counts are 16-bit when they fit. Either way the likelihood is that of the original rows."""
    import jax.numpy as jnp

    from learnpulse.engines.binomial_loglik import binomial_loglik

    rng = np.random.default_rng(11)
    units, weeks = 30, 8
    unit = np.repeat(np.arange(units), weeks)
    time = np.tile(np.arange(weeks, dtype=float), units)
    keep = rng.random(len(unit)) > 0.15
    unit, time = unit[keep], time[keep]
    unit, time = np.concatenate([unit, unit[:7]]), np.concatenate([time, time[:7]])  # repeated (unit, week) rows
    if times == "irregular":
        time = time + rng.uniform(0.0, 0.9, len(time))
    trials = rng.integers(1, max_trials, len(unit)).astype(float)
    y = rng.binomial(trials.astype(int), 0.6).astype(float)
    data = growth.prepare_data("binomial", unit, time, y, trials)
    arrays = growth._binomial_layout(data)

    assert ("code" in arrays) == (layout == "flat")
    counts = np.int16 if max_trials * 2 <= np.iinfo(np.int16).max else np.float32
    assert arrays["y"].dtype == counts and arrays["trials"].dtype == counts
    c0, c1 = rng.normal(0.3, 0.5, units), rng.normal(0.05, 0.1, units)
    got = binomial_loglik(
        jnp.asarray(c0), jnp.asarray(c1), *(jnp.asarray(arrays[k]) for k in ("time", "y", "trials")), arrays.get("code")
    )
    eta = c0[data.code] + c1[data.code] * data.time
    want = float(np.sum(data.y * eta - data.trials * np.logaddexp(0.0, eta)))
    assert float(got) == pytest.approx(want, rel=1e-6)
