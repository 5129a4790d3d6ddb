"""Vectorised R-hat / bulk and tail ESS (``engines/mcmc_diagnostics``) against ArviZ, the reference implementation.

The draws are built to reach every branch of Geyer's sequence: AR(1) chains from strongly negative to strongly
positive autocorrelation (early and late truncation, the monotone correction), chains that disagree (R-hat >> 1),
ties (discrete draws), an odd number of draws (the split drops the middle one), a constant parameter, and short
chains where the sequence runs to the end of the series.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from learnpulse.engines.mcmc_diagnostics import chain_diagnostics


def arviz_figures(draws: np.ndarray) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        data: Any = az.convert_to_dataset({"x": draws})
        return {
            "rhat": np.asarray(az.rhat(data)["x"].values, dtype=float),
            "ess_bulk": np.asarray(az.ess(data, method="bulk")["x"].values, dtype=float),
            "ess_tail": np.asarray(az.ess(data, method="tail")["x"].values, dtype=float),
        }


def ar1(rng: np.random.Generator, chains: int, n: int, phi: np.ndarray) -> np.ndarray:
    """(chains, n, params) AR(1) series with coefficient ``phi[j]`` for parameter j."""
    x = np.empty((chains, n, len(phi)))
    x[:, 0] = rng.standard_normal((chains, len(phi)))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + rng.standard_normal((chains, len(phi)))
    return x


@pytest.mark.parametrize(("chains", "n"), [(2, 1000), (4, 301), (2, 9), (1, 200)])
def test_agrees_with_arviz(chains: int, n: int) -> None:
    rng = np.random.default_rng(chains * 1000 + n)
    phi = np.linspace(-0.9, 0.97, 40)
    x = ar1(rng, chains, n, phi)
    shifted = x[..., :5] + np.arange(chains)[:, None, None] * 2.0 * x[..., :5].std()  # chains that disagree
    discrete = np.round(x[..., :5])  # ties
    constant = np.ones((chains, n, 1))
    draws = np.concatenate([x, shifted, discrete, constant], axis=2)
    ours, ref = chain_diagnostics(draws), arviz_figures(draws)
    for key in ("rhat", "ess_bulk", "ess_tail"):
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=key)
    if chains > 1:
        assert np.all(ours["rhat"][40:45] > 1.05), "disagreeing chains must show"


def test_chunks_give_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    from learnpulse.engines import mcmc_diagnostics

    draws = ar1(np.random.default_rng(3), 2, 200, np.linspace(0.0, 0.9, 25))
    whole = chain_diagnostics(draws)
    monkeypatch.setattr(mcmc_diagnostics, "_CHUNK", 7)
    chunked = chain_diagnostics(draws)
    for key in whole:
        np.testing.assert_array_equal(whole[key], chunked[key])


def test_shapes() -> None:
    with pytest.raises(ValueError, match="chains, draws, parameters"):
        chain_diagnostics(np.zeros((2, 100)))
    short = chain_diagnostics(np.zeros((2, 3, 4)))
    assert all(np.isnan(v).all() and v.shape == (4,) for v in short.values())
