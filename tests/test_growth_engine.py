"""The hierarchical growth engine (``y ~ time + (time | unit)``, NumPyro NUTS) against brms, the truth and itself.

- **brms**: on ``tests/data/growth_200`` (a copy of ``../shared/reference/growth_200``; 200 students x 12 weeks,
  gaussian, iter=1000, chains=2) the
  posterior means of Intercept, time, sd(Intercept) and sd(time) lie within one brms posterior SD ("est. error") of
  brms's estimates, which are parsed from ``brms.md`` there (brms 2.18.0; the file is the only source of them).
- **Per-unit summary**: the gaussian family's per-unit moments equal an independent per-draw computation from the
  hyper-parameter draws (plain NumPy matrix inverses on the raw rows, not the engine's sufficient statistics), and
  the normal summary that ``predict`` / ``goal_probability`` use matches Monte-Carlo draws from the exact mixture;
  for the binomial family the NUTS samples are captured during the fit (the engine does not keep them), unit draws
  are rebuilt from them here, and the moments, P and the quantiles are held against those raw draws.
- **Truth**: simulated data with known fixed effects and SDs: the truth lies in the 95% intervals, and the 90%
  intervals of the units' true slopes cover them 80-97% of the time (150-300 units: about +-3 binomial SDs
  around 90%).
- The contract: new units, P in [0, 1], bounds, broadcasting, JSON round trips, input errors, not fitted.

Each dataset is fitted once (module-scoped fixtures): a NUTS run takes 10-40 s on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit, ndtr, ndtri

from learnpulse.engines import growth
from learnpulse.engines.growth import GrowthModel
from learnpulse.errors import InsufficientDataError, InvalidInputError, NotFittedError

# A copy of ../shared/reference/growth_200 (data and brms's published table) ships with the tests, so a clone
# outside the workspace runs them; LEARNPULSE_GROWTH_REFERENCE points elsewhere to hold the engine against other data.
REFERENCE = Path(os.environ.get("LEARNPULSE_GROWTH_REFERENCE", Path(__file__).resolve().parent / "data" / "growth_200"))
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BRMS_ROWS = {"Intercept": "Intercept", "week": "time", "sd(Intercept)": "sd(Intercept)", "sd(week)": "sd(time)"}
Z90 = float(ndtri(0.95))
LEVELS = (5, 25, 50, 75, 95)


# --- simulated data with a known truth ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    b0: float
    b1: float
    tau0: float
    tau1: float
    rho: float
    sigma: float | None = None

    def as_summary(self) -> dict[str, float]:
        out = {
            "Intercept": self.b0,
            "time": self.b1,
            "sd(Intercept)": self.tau0,
            "sd(time)": self.tau1,
            "cor(Intercept,time)": self.rho,
        }
        if self.sigma is not None:
            out["sigma"] = self.sigma
        return out


@dataclass
class Simulated:
    frame: pd.DataFrame  # unit, time, y[, trials]
    coef: np.ndarray  # (units, 2): each unit's true (intercept, slope) on the link scale
    truth: Truth


def simulate(truth: Truth, units: int, weeks: int, seed: int, *, sparse: int = 0) -> Simulated:
    """``units`` x ``weeks`` (t = 0..weeks-1) from the model itself; gaussian when ``truth.sigma`` is set, else
    binomial with 5..40 trials a week. The first ``sparse`` units keep only their first one or two weeks."""
    rng = np.random.default_rng(seed)
    cross = truth.rho * truth.tau0 * truth.tau1
    cov = np.array([[truth.tau0**2, cross], [cross, truth.tau1**2]])
    coef = np.array([truth.b0, truth.b1]) + rng.multivariate_normal([0.0, 0.0], cov, units)
    unit = np.repeat(np.arange(units), weeks)
    t = np.tile(np.arange(weeks, dtype=float), units)
    eta = coef[unit, 0] + coef[unit, 1] * t
    if truth.sigma is not None:
        frame = pd.DataFrame({"unit": unit, "time": t, "y": eta + rng.normal(0.0, truth.sigma, len(eta))})
    else:
        trials = rng.integers(5, 41, len(eta))
        frame = pd.DataFrame({"unit": unit, "time": t, "y": rng.binomial(trials, expit(eta)), "trials": trials})
    keep = (frame["unit"] >= sparse) | (frame["time"] <= frame["unit"] % 2)
    return Simulated(frame[keep].reset_index(drop=True), coef, truth)


GAUSSIAN_TRUTH = Truth(b0=0.55, b1=0.012, tau0=0.10, tau1=0.010, rho=-0.3, sigma=0.05)
BINOMIAL_TRUTH = Truth(b0=-0.2, b1=0.08, tau0=0.5, tau1=0.06, rho=0.3)
SPARSE = 4  # gaussian units 0..3 keep one (even ids) or two (odd ids) weeks


# --- fits (once per module) -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_data() -> pd.DataFrame:
    path = REFERENCE / "data.csv"
    if not path.exists():
        message = f"brms reference data not found at {path} (set LEARNPULSE_GROWTH_REFERENCE)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def brms() -> pd.DataFrame:
    """brms's table from brms.md: estimate, est. error, 2.5%, 97.5% per parameter (our names)."""
    text = (REFERENCE / "brms.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in BRMS_ROWS and re.fullmatch(r"[-+0-9.eE]+", cells[1]):
            rows[BRMS_ROWS[cells[0]]] = [float(c) for c in cells[1:]]
    assert set(rows) == set(BRMS_ROWS.values()), f"brms.md: parsed only {sorted(rows)}"
    return pd.DataFrame.from_dict(rows, orient="index", columns=["estimate", "est_error", "q2.5", "q97.5"])


@pytest.fixture(scope="module")
def reference_fit(reference_data: pd.DataFrame) -> GrowthModel:
    d = reference_data
    return GrowthModel("gaussian", iter=1000, chains=2, seed=1).fit(d["user"], d["week"], d["acc"])


@pytest.fixture(scope="module")
def gaussian_sim() -> Simulated:
    return simulate(GAUSSIAN_TRUTH, units=300, weeks=12, seed=20240601, sparse=SPARSE)


@pytest.fixture(scope="module")
def gaussian_fit(gaussian_sim: Simulated) -> GrowthModel:
    f = gaussian_sim.frame
    return GrowthModel("gaussian", iter=1000, chains=2, seed=5).fit(f["unit"], f["time"], f["y"])


@pytest.fixture(scope="module")
def binomial_sim() -> Simulated:
    return simulate(BINOMIAL_TRUTH, units=150, weeks=10, seed=11)


@dataclass
class BinomialFit:
    model: GrowthModel
    samples: dict[str, np.ndarray]  # NumPyro's samples, (chains, draws, ...), captured during the fit
    laplace: growth.UnitLaplace  # the per-unit modes and Cholesky factors of the reparameterisation


@pytest.fixture(scope="module")
def binomial_fit(binomial_sim: Simulated) -> Iterator[BinomialFit]:
    captured: dict[str, Any] = {}
    original = growth._binomial_unit_draws

    def capture(samples: dict[str, np.ndarray], laplace: growth.UnitLaplace) -> np.ndarray:
        captured["samples"] = {k: np.array(v, copy=True) for k, v in samples.items()}
        captured["laplace"] = laplace
        return original(samples, laplace)

    f = binomial_sim.frame
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(growth, "_binomial_unit_draws", capture)
        model = GrowthModel("binomial", iter=1000, chains=2, seed=3).fit(f["unit"], f["time"], f["y"], f["trials"])
    assert "samples" in captured, "the binomial fit no longer goes through _binomial_unit_draws"
    yield BinomialFit(model, captured["samples"], captured["laplace"])


# --- helpers ------------------------------------------------------------------------------------------------------


def problem_names(exc: InvalidInputError) -> set[str]:
    """The columns / parameters an error's details name."""
    return {p.get("column", p.get("parameter")) for p in exc.details.get("problems", [])}


def raw_binomial_draws(fit: BinomialFit) -> np.ndarray:
    """(draws, units, 2) unit coefficients from the sampled ``w`` and population parameters, rebuilt here from the
    model's definition with plain NumPy linear algebra: ``Sigma = L L'`` (``L = [[tau0, 0], [l10, l11]]``),
    ``P_i = Q_i + Sigma^-1``, ``mu_i = P_i^-1 (r_i + Sigma^-1 b)``, ``c_i = mu_i + chol(P_i)^-T w_i``."""
    s = {k: v.reshape(-1, *v.shape[2:]) for k, v in fit.samples.items()}
    n_draws = len(s["b0"])
    L = np.zeros((n_draws, 2, 2))
    L[:, 0, 0], L[:, 1, 0], L[:, 1, 1] = s["tau0"], s["l10"], s["l11"]
    # The factor's second row is (tau1 rho, tau1 sqrt(1 - rho^2)): the sampled SD and correlation.
    np.testing.assert_allclose(np.hypot(s["l10"], s["l11"]), s["tau1"], rtol=1e-12)
    prior = np.linalg.inv(L @ L.transpose(0, 2, 1))  # (D, 2, 2)
    q = fit.laplace.q
    Q = np.stack([np.stack([q[:, 0], q[:, 1]], 1), np.stack([q[:, 1], q[:, 2]], 1)], 1)  # (U, 2, 2)
    P = Q[None] + prior[:, None]  # (D, U, 2, 2)
    b = np.stack([s["b0"], s["b1"]], axis=1)  # (D, 2)
    rhs = fit.laplace.r[None] + np.einsum("dij,dj->di", prior, b)[:, None]
    mu = np.linalg.solve(P, rhs[..., None])[..., 0]
    U = np.linalg.cholesky(P)
    x = np.linalg.solve(U.transpose(0, 1, 3, 2), s["w"][..., None])[..., 0]
    return mu + x


def exact_gaussian_moments(
    model: GrowthModel, frame: pd.DataFrame, unit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per hyper draw: C = inv(inv(Sigma) + Z'Z/s2), m = b + C Z'(y - Zb)/s2 from the unit's raw rows. Returns the
    mixture's mean and covariance and the per-draw (m, C)."""
    assert model.hyper_draws_ is not None
    h = {k: v.ravel() for k, v in model.hyper_draws_.items()}
    rows = frame[frame["unit"] == unit]
    Z = np.column_stack([np.ones(len(rows)), rows["time"].to_numpy()])
    y = rows["y"].to_numpy()
    b = np.column_stack([h["Intercept"], h["time"]])  # (D, 2)
    t0, t1, rho, s2 = h["sd(Intercept)"], h["sd(time)"], h["cor(Intercept,time)"], h["sigma"] ** 2
    Sigma = np.empty((len(t0), 2, 2))
    Sigma[:, 0, 0], Sigma[:, 1, 1] = t0**2, t1**2
    Sigma[:, 0, 1] = Sigma[:, 1, 0] = rho * t0 * t1
    C = np.linalg.inv(np.linalg.inv(Sigma) + (Z.T @ Z)[None] / s2[:, None, None])
    resid = y[None, :] - b @ Z.T  # (D, n)
    m = b + np.einsum("dij,dj->di", C, resid @ Z / s2[:, None])
    mean = m.mean(axis=0)
    cov = (C + np.einsum("di,dj->dij", m, m)).mean(axis=0) - np.outer(mean, mean)
    return mean, cov, m, C


def check_normal_summary(
    model: GrowthModel, unit: Any, time: float, eta: np.ndarray, response: np.ndarray, *, tol_sd: float
) -> dict[str, float]:
    """``predict``'s quantiles/mean/SD and ``goal_probability``'s P against draws ``eta`` (link scale) and
    ``response = g(eta)`` of one unit at ``time``. Quantile errors are in units of the draws' link-scale SD."""
    pred = model.predict([unit], [time]).iloc[0]
    link = logit if model.family == "binomial" else float
    eta_sd = float(eta.std())
    worst_q = max(abs(float(np.quantile(eta, q / 100)) - link(float(pred[f"q{q:02d}"]))) / eta_sd for q in LEVELS)
    assert worst_q <= tol_sd, f"unit {unit} t={time}: quantile off by {worst_q:.3f} posterior SDs"
    assert abs(pred["mean"] - response.mean()) <= 0.1 * response.std(), (pred["mean"], response.mean())
    assert abs(pred["sd"] / response.std() - 1) <= 0.1, (pred["sd"], response.std())
    worst_p = 0.0
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        target = float(np.quantile(response, q))
        p = float(model.goal_probability([unit], [time], [target])["p"].iloc[0])
        worst_p = max(worst_p, abs(p - float(np.mean(response >= target))))
    return {"quantile_sd": worst_q, "p": worst_p}


# --- 1. agreement with brms -----------------------------------------------------------------------------------------


def test_agrees_with_brms_on_growth_200(reference_fit: GrowthModel, brms: pd.DataFrame) -> None:
    ours = reference_fit.fixed_effects()
    print("\nparameter       ours (est. error)          brms (est. error)          |diff| / brms est. error")
    for name, ref in brms.iterrows():
        diff = abs(ours.loc[name, "estimate"] - ref["estimate"])
        print(
            f"{name:15s} {ours.loc[name, 'estimate']:.6f} ({ours.loc[name, 'est_error']:.6f})   "
            f"{ref['estimate']:.6f} ({ref['est_error']:.6f})   {diff / ref['est_error']:.2f}"
        )
    for name, ref in brms.iterrows():
        diff = abs(ours.loc[name, "estimate"] - ref["estimate"])
        assert diff <= ref["est_error"], f"{name}: ours {ours.loc[name, 'estimate']} vs brms {ref['estimate']}"
        # The posterior spread agrees too (a loose check: two MCMC runs of ~1000 draws).
        assert 0.7 <= ours.loc[name, "est_error"] / ref["est_error"] <= 1.4, name
    diag = reference_fit.diagnostics_
    assert diag is not None
    print(f"diagnostics: {diag}")
    # Healthy as brms ran it (iter=1000, 2 chains): no divergences and near-independent draws. Its max R-hat is
    # left to the next test: with 2 x 500 draws the largest of six rank-normalised split R-hats lands between 1.004
    # and 1.013 depending on the seed and the machine's floating point (seed 1: 1.006 on one machine, 1.013 on
    # another), and brms's own run of this data reported 1.016.
    assert diag["max_rhat"] <= 1.02
    assert diag["min_ess_bulk"] >= 400 and diag["min_ess_tail"] >= 300
    assert diag["divergences"] == 0
    assert diag["draws"] == 1000  # iter=1000 with half warm-up, 2 chains: as brms
    assert set(ours.index) == {"Intercept", "time", "sd(Intercept)", "sd(time)", "cor(Intercept,time)", "sigma"}


def test_rhat_gate_passes_with_twice_the_iterations(reference_data: pd.DataFrame) -> None:
    """The job's gate (max R-hat <= 1.01) is redone with 2 x BRMS_ITER when it fails: at iter=2000 the reference
    set's fit passes it (six seeds on this data: 1.001-1.007)."""
    d = reference_data
    fit = GrowthModel("gaussian", iter=2000, chains=2, seed=1).fit(d["user"], d["week"], d["acc"])
    assert fit.diagnostics_ is not None
    assert fit.diagnostics_["max_rhat"] <= 1.01
    assert fit.diagnostics_["divergences"] == 0


def test_the_laplace_start_is_found_whatever_the_seed(gaussian_sim: Simulated) -> None:
    """The gaussian chains start around the posterior mode (L-BFGS) with its Laplace covariance as mass matrix.
    From one start (chain 0's random NumPyro start), seeds 15 and 28 of this data met a NaN on the way and fell back
    to NumPyro's random starts; on bench/growth.py's data 7 seeds in 40 did, and one left a chain stuck at
    cor ~ -1 (R-hat 2.2). From several starts every seed finds the same mode, so the same covariance."""
    f = gaussian_sim.frame
    data = growth.prepare_data("gaussian", f["unit"], f["time"], f["y"], None)
    kwargs = {
        "stats": growth._jax().numpy.asarray(growth._sufficient_stats(data)),
        "priors": growth.GrowthPriors(),
        "loc": float(np.median(data.y)),
    }
    starts = [growth._laplace_start(growth._gaussian_model, kwargs, 2, seed) for seed in (0, 15, 28)]
    assert all(start.laplace for start in starts)

    def sds_and_correlations(cov: Any) -> tuple[np.ndarray, np.ndarray]:
        cov = np.asarray(cov)
        sd = np.sqrt(np.diag(cov))
        return sd, cov / np.outer(sd, sd)

    sd0, cor0 = sds_and_correlations(starts[0].inverse_mass_matrix)
    for start in starts[1:]:
        sd, cor = sds_and_correlations(start.inverse_mass_matrix)
        np.testing.assert_allclose(sd, sd0, rtol=0.05)  # finite-difference Hessians at L-BFGS's stopping points
        np.testing.assert_allclose(cor, cor0, atol=0.05)


PROC_MAPS = Path("/proc/self/maps")


@pytest.mark.skipif(not PROC_MAPS.exists(), reason="counts the process's memory maps in /proc (Linux)")
def test_repeated_fits_do_not_accumulate_compiled_code(reference_data: pd.DataFrame, binomial_sim: Simulated) -> None:
    """The API and the in-process scheduler fit again and again in one process. Each fit's compiled programs are
    dropped when it ends: before, every fit added ~1,000 memory maps for good, and after ~60 fits the kernel's limit
    (65,530) stopped XLA from compiling anything ("LLVM compilation error: Cannot allocate memory")."""
    d, b = reference_data, binomial_sim.frame

    def one_of_each(seed: int) -> int:
        GrowthModel("gaussian", iter=100, chains=2, seed=seed).fit(d["user"], d["week"], d["acc"])
        GrowthModel("binomial", iter=100, chains=2, seed=seed).fit(b["unit"], b["time"], b["y"], b["trials"])
        return len(PROC_MAPS.read_text().splitlines())

    first = one_of_each(0)
    assert one_of_each(1) - first < 200  # one round added ~2,000 maps before


def test_fits_on_two_threads_at_once_give_the_sequential_answers(reference_data: pd.DataFrame) -> None:
    """The API fits on request threads: two fits started together run one after the other (each releases JAX's
    caches when it ends, which must not pull them from under the other) and give what each gives alone."""
    d = reference_data

    def fit(seed: int) -> pd.DataFrame:
        model = GrowthModel("gaussian", iter=100, chains=2, seed=seed).fit(d["user"], d["week"], d["acc"])
        assert model.summary_ is not None
        return model.summary_

    alone = [fit(0), fit(1)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(fit, [0, 1]))
    for a, b in zip(alone, together, strict=True):
        pd.testing.assert_frame_equal(a, b)


# --- 2. the per-unit normal summary ---------------------------------------------------------------------------------


def test_gaussian_unit_moments_equal_an_independent_computation(
    gaussian_fit: GrowthModel, gaussian_sim: Simulated
) -> None:
    units = [0, 1, 2, 3, 10, 150, 299]  # the first four have one or two observations
    mean, cov, known = gaussian_fit.unit_moments(units)
    assert known.all()
    for i, u in enumerate(units):
        m, c, _, _ = exact_gaussian_moments(gaussian_fit, gaussian_sim.frame, u)
        np.testing.assert_allclose(mean[i], m, rtol=1e-9, atol=1e-12, err_msg=f"mean of unit {u}")
        np.testing.assert_allclose(cov[i], c, rtol=1e-6, atol=1e-14, err_msg=f"covariance of unit {u}")


def test_gaussian_normal_summary_matches_mixture_draws(gaussian_fit: GrowthModel, gaussian_sim: Simulated) -> None:
    """The unit posterior is a mixture over hyper draws of N(m_d, C_d); ``predict`` summarises it by one normal."""
    rng = np.random.default_rng(1)
    worst = {"quantile_sd": 0.0, "p": 0.0}
    for u in (0, 1, 10, 150):
        _, _, m, C = exact_gaussian_moments(gaussian_fit, gaussian_sim.frame, u)
        per_draw = 20
        L = np.linalg.cholesky(C)
        z = rng.standard_normal((per_draw, len(m), 2))
        coef = (m[None] + np.einsum("dij,kdj->kdi", L, z)).reshape(-1, 2)
        for t in (5.0, 14.0):
            eta = coef[:, 0] + coef[:, 1] * t
            got = check_normal_summary(gaussian_fit, u, t, eta, eta, tol_sd=0.1)
            worst = {k: max(worst[k], got[k]) for k in worst}
    print(
        f"\ngaussian normal summary vs mixture draws: worst quantile {worst['quantile_sd']:.3f} SD, P {worst['p']:.4f}"
    )
    assert worst["p"] <= 0.03


def test_binomial_summary_matches_raw_draws(binomial_fit: BinomialFit, binomial_sim: Simulated) -> None:
    model = binomial_fit.model
    draws = raw_binomial_draws(binomial_fit)  # (1000, 150, 2)
    units = np.arange(draws.shape[1])
    mean, cov, known = model.unit_moments(units)
    assert known.all()
    # The stored moments are those of the raw draws.
    np.testing.assert_allclose(mean, draws.mean(axis=0), rtol=1e-10, atol=1e-12)
    centred = draws - draws.mean(axis=0)
    np.testing.assert_allclose(cov, np.einsum("dui,duj->uij", centred, centred) / (len(draws) - 1), rtol=1e-8)
    # The normal summary on the logit scale vs the raw draws, at the last observed week and two weeks beyond.
    worst = {"quantile_sd": 0.0, "p": 0.0}
    p_errors = []
    for u in units[::5]:
        for t in (9.0, 11.0):
            eta = draws[:, u, 0] + draws[:, u, 1] * t
            got = check_normal_summary(model, int(u), t, eta, expit(eta), tol_sd=0.3)
            worst = {k: max(worst[k], got[k]) for k in worst}
            p_errors.append(got["p"])
    print(
        f"\nbinomial normal summary vs raw draws (1000 draws): worst quantile {worst['quantile_sd']:.3f} SD, "
        f"worst P {worst['p']:.4f}, mean worst-P {np.mean(p_errors):.4f}"
    )
    # Monte-Carlo error of a probability from ~1000 autocorrelated draws is up to ~0.02.
    assert worst["p"] <= 0.06
    assert np.mean(p_errors) <= 0.025


def test_binomial_diagnostics_and_truth(binomial_fit: BinomialFit, binomial_sim: Simulated) -> None:
    model = binomial_fit.model
    diag = model.diagnostics_
    assert diag is not None
    print(f"\nbinomial diagnostics: {diag}")
    assert diag["max_rhat"] <= 1.05
    assert diag["divergences"] == 0
    assert {"units_max_rhat", "units_min_ess_bulk", "units_share_rhat_above_1_01"} <= set(diag)
    # The sampler's own figures: one step size per chain, each possibly nudged by the resonance probe.
    assert len(diag["step_size"]) == len(diag["step_size_nudged"]) == model.chains
    assert all(0 < s < 2 for s in diag["step_size"]) and 1 <= diag["mean_leapfrog_steps"] <= 2**model.max_tree_depth
    assert np.isfinite(diag["seconds"]) and diag["seconds"] > 0  # the whole fit, per-unit diagnostics included
    assert "sigma" not in model.fixed_effects().index
    assert_truth_in_95(model, binomial_sim.truth)


def test_binomial_slope_intervals_cover_the_truth(binomial_fit: BinomialFit, binomial_sim: Simulated) -> None:
    coverage = interval_coverage(binomial_fit.model, binomial_sim.coef)
    print(f"\nbinomial 90% interval coverage of the true slopes / intercepts (150 units): {coverage}")
    assert 0.80 <= coverage["slope"] <= 0.97
    assert 0.80 <= coverage["intercept"] <= 0.97


def textbook_binomial_draws(frame: pd.DataFrame, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The same model written the way brms's Stan code writes it, independently of the engine: non-centred
    ``u_i = diag(tau) L_corr z_i`` with ``L_corr ~ LKJCholesky(2, 1)`` and the engine's default priors, fitted by
    NumPyro's NUTS. Returns the hyper-parameters' draws by brms name and the unit coefficients (draws, units, 2)."""
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    unit = frame["unit"].to_numpy()
    n_units = int(unit.max()) + 1
    half_t = dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 2.5))

    def model(code: Any, time: Any, trials: Any, y: Any) -> None:
        b0 = numpyro.sample("b0", dist.StudentT(3.0, 0.0, 2.5))
        b1 = numpyro.sample("b1", dist.Normal(0.0, 2.5))
        tau = numpyro.sample("tau", half_t.expand([2]).to_event(1))
        l_corr = numpyro.sample("l_corr", dist.LKJCholesky(2, 1.0))
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([n_units, 2]).to_event(2))
        u = z @ (tau[:, None] * l_corr).T
        numpyro.deterministic("coef", jax.numpy.stack([b0 + u[:, 0], b1 + u[:, 1]], axis=1))
        eta = b0 + u[code, 0] + (b1 + u[code, 1]) * time
        numpyro.sample("y", dist.Binomial(total_count=trials, logits=eta), obs=y)

    mcmc = MCMC(NUTS(model), num_warmup=1000, num_samples=1000, num_chains=2, progress_bar=False)
    mcmc.run(
        jax.random.PRNGKey(seed),
        code=unit,
        time=frame["time"].to_numpy(),
        trials=frame["trials"].to_numpy(),
        y=frame["y"].to_numpy(),
    )
    s = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    hyper = {
        "Intercept": s["b0"],
        "time": s["b1"],
        "sd(Intercept)": s["tau"][:, 0],
        "sd(time)": s["tau"][:, 1],
        "cor(Intercept,time)": s["l_corr"][:, 1, 0],
    }
    return hyper, s["coef"]


def test_binomial_reparameterisation_keeps_the_posterior(binomial_fit: BinomialFit, binomial_sim: Simulated) -> None:
    """The engine samples the binomial model in per-unit Laplace coordinates (a change of variables); its posterior
    must be the textbook parameterisation's. Monte-Carlo error of two runs with 150-1,000 effective draws: ~0.05-0.12
    SD on a mean difference and 4-8% on an SD ratio, so: means within 0.4 posterior SDs for the hyper-parameters and
    0.3 for every unit's coefficients (the worst of 300), SDs within -20% / +25%. A wrong Jacobian or mode/scale mix-up
    moves them by whole SDs."""
    hyper, coef = textbook_binomial_draws(binomial_sim.frame, seed=8)
    ours = binomial_fit.model.fixed_effects()
    for name, draws in hyper.items():
        gap = abs(ours.loc[name, "estimate"] - draws.mean()) / draws.std()
        ratio = ours.loc[name, "est_error"] / draws.std()
        print(f"{name:20s} engine {ours.loc[name, 'estimate']: .4f} textbook {draws.mean(): .4f} gap {gap:.3f} SD")
        assert gap <= 0.4, name
        assert 0.8 <= ratio <= 1.25, (name, ratio)
    mean, cov, _ = binomial_fit.model.unit_moments(np.arange(coef.shape[1]))
    sd = coef.std(axis=0)
    gaps = np.abs(mean - coef.mean(axis=0)) / sd
    ratios = np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1)) / sd
    print(f"units: worst mean gap {gaps.max():.3f} SD, SD ratios {ratios.min():.3f}-{ratios.max():.3f}")
    assert gaps.max() <= 0.3
    assert ratios.min() >= 0.8 and ratios.max() <= 1.25


# --- 3. recovery (gaussian) -----------------------------------------------------------------------------------------


def assert_truth_in_95(model: GrowthModel, truth: Truth) -> None:
    summary = model.fixed_effects()
    for name, value in truth.as_summary().items():
        lo, hi = summary.loc[name, "q2.5"], summary.loc[name, "q97.5"]
        print(f"{name:20s} truth {value: .4f}  estimate {summary.loc[name, 'estimate']: .4f}  95% [{lo:.4f}, {hi:.4f}]")
        assert lo <= value <= hi, f"{name}: truth {value} outside [{lo}, {hi}]"


def interval_coverage(model: GrowthModel, coef: np.ndarray) -> dict[str, float]:
    mean, cov, _ = model.unit_moments(np.arange(len(coef)))
    out = {}
    for j, name in enumerate(("intercept", "slope")):
        out[name] = float(np.mean(np.abs(coef[:, j] - mean[:, j]) <= Z90 * np.sqrt(cov[:, j, j])))
    return out


def test_gaussian_recovers_the_truth(gaussian_fit: GrowthModel, gaussian_sim: Simulated) -> None:
    print()
    assert_truth_in_95(gaussian_fit, gaussian_sim.truth)
    diag = gaussian_fit.diagnostics_
    assert diag is not None
    assert diag["max_rhat"] <= 1.01
    assert diag["divergences"] == 0
    coverage = interval_coverage(gaussian_fit, gaussian_sim.coef)
    print(f"gaussian 90% interval coverage of the true slopes / intercepts (300 units): {coverage}")
    assert 0.80 <= coverage["slope"] <= 0.97
    assert 0.80 <= coverage["intercept"] <= 0.97


def test_little_history_is_partially_pooled(gaussian_fit: GrowthModel) -> None:
    """A unit with one or two weeks: its slope is uncertain (wider than a full history's) but pooled (narrower than
    the population's)."""
    assert gaussian_fit.population_cov_ is not None
    _, cov, _ = gaussian_fit.unit_moments(np.arange(SPARSE + 50))
    full_sd = np.sqrt(cov[SPARSE:, 1, 1])
    pop_sd = float(np.sqrt(gaussian_fit.population_cov_[1, 1]))
    for u in range(SPARSE):
        sd = float(np.sqrt(cov[u, 1, 1]))
        assert full_sd.max() < sd < pop_sd, (u, sd, full_sd.max(), pop_sd)
    n_obs = gaussian_fit.n_observations([0, 1, 5, "nobody"])
    assert n_obs.tolist() == [1, 2, 12, 0]


def test_gaussian_sampler_start(gaussian_fit: GrowthModel, gaussian_sim: Simulated) -> None:
    """The chains start at over-dispersed draws from the Laplace approximation (near the posterior), and a fit whose
    mode search fails still runs from NumPyro's own starts."""
    f = gaussian_sim.frame
    data = growth.prepare_data("gaussian", f["unit"], f["time"], f["y"])
    kwargs = {"stats": growth._sufficient_stats(data), "priors": growth.GrowthPriors(), "loc": float(f["y"].median())}
    start = growth._laplace_start(growth._gaussian_model, kwargs, 2, 0)
    assert start.laplace
    assert np.all(np.linalg.eigvalsh(np.asarray(start.inverse_mass_matrix)) > 0)
    starts = start.constrain({k: np.asarray(v)[:, None] for k, v in start.init_params.items()})
    summary = gaussian_fit.fixed_effects()
    for name, site in (("Intercept", "b0"), ("time", "b1"), ("sd(Intercept)", "tau0"), ("sd(time)", "tau1")):
        z = (starts[site].ravel() - summary.loc[name, "estimate"]) / summary.loc[name, "est_error"]
        assert np.all(np.abs(z) < 8) and len(np.unique(starts[site])) == 2, (name, z)

    def no_mode(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("no mode")

    small = simulate(GAUSSIAN_TRUTH, units=40, weeks=6, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("scipy.optimize.minimize", no_mode)
        assert not growth._laplace_start(growth._gaussian_model, kwargs, 2, 0).laplace
        g = small.frame
        model = GrowthModel("gaussian", iter=400, chains=2, seed=2).fit(g["unit"], g["time"], g["y"])
    assert model.diagnostics_ is not None and model.diagnostics_["max_rhat"] < 1.05
    assert_truth_in_95(model, small.truth)


# --- 4. new units, P, bounds, broadcasting --------------------------------------------------------------------------


def test_new_units_get_the_population_prediction(reference_fit: GrowthModel) -> None:
    model = reference_fit
    assert model.hyper_draws_ is not None
    h = {k: v.ravel() for k, v in model.hyper_draws_.items()}
    t = 12.0
    pred = model.predict(["u0", "nobody", 12345], t, bounds=(0.0, 1.0))
    assert pred["known"].tolist() == [True, False, False]
    pd.testing.assert_series_equal(pred.iloc[1], pred.iloc[2], check_names=False)
    # Population: eta = (b0 + u0) + (b1 + u1) t with mean E[b] . x and variance x'(Cov(b) + E[Sigma]) x.
    x = np.array([1.0, t])
    b = np.column_stack([h["Intercept"], h["time"]])
    tau0, tau1, rho = h["sd(Intercept)"], h["sd(time)"], h["cor(Intercept,time)"]
    e_sigma = np.array([[np.mean(tau0**2), np.mean(rho * tau0 * tau1)], [np.mean(rho * tau0 * tau1), np.mean(tau1**2)]])
    mu = float(b.mean(axis=0) @ x)
    sd = float(np.sqrt(x @ (np.cov(b, rowvar=False) + e_sigma) @ x))
    assert pred.loc[1, "q50"] == pytest.approx(np.clip(mu, 0, 1), rel=1e-9)
    assert pred.loc[1, "q95"] == pytest.approx(np.clip(mu + Z90 * sd, 0, 1), rel=1e-9)
    assert pred.loc[1, "q05"] == pytest.approx(np.clip(mu - Z90 * sd, 0, 1), rel=1e-9)
    # The population is far less certain than a student with 12 weeks of data.
    assert pred.loc[1, "sd"] > 3 * pred.loc[0, "sd"]
    gp = model.goal_probability(["nobody", "u0"], t, 0.7, bounds=(0.0, 1.0))
    assert gp["known"].tolist() == [False, True]
    assert gp["n_obs"].tolist() == [0, 12]
    assert gp.loc[0, "p"] == pytest.approx(float(ndtr((mu - 0.7) / sd)), rel=1e-9)


def test_probabilities_and_predictions_stay_in_bounds(gaussian_fit: GrowthModel) -> None:
    units = [*range(0, 300, 7), "nobody"]
    times = np.linspace(-20, 60, 9)  # far outside the data: the clipped expected accuracy must stay in [0, 1]
    for t in times:
        pred = gaussian_fit.predict(units, t, bounds=(0.0, 1.0))
        cols = ["mean", *(f"q{q:02d}" for q in LEVELS)]
        values = pred[cols].to_numpy()
        assert np.all((values >= 0) & (values <= 1)), t
        assert np.all(np.diff(pred[[f"q{q:02d}" for q in LEVELS]].to_numpy(), axis=1) >= 0)
        assert np.all((pred["sd"] >= 0) & (pred["sd"] <= 0.5))
        for target in (-0.1, 0.0, 0.3, 0.6, 0.9, 1.0, 1.2):
            gp = gaussian_fit.goal_probability(units, t, target, bounds=(0.0, 1.0))
            assert np.all((gp["p"] >= 0) & (gp["p"] <= 1)), (t, target)
            if target > 1:
                assert np.all(gp["p"] == 0)
            if target <= 0:
                assert np.all(gp["p"] == 1)
    # P falls as the target rises.
    ps = [float(gaussian_fit.goal_probability([5], 11.0, target)["p"].iloc[0]) for target in np.linspace(0.2, 1, 9)]
    assert np.all(np.diff(ps) <= 0) and ps[0] > 0.99 and ps[-1] < 0.01
    # Without bounds the gaussian family's prediction is the unclipped linear predictor.
    raw = gaussian_fit.predict(["nobody"], 200.0)
    clipped = gaussian_fit.predict(["nobody"], 200.0, bounds=(0.0, 1.0))
    assert raw.loc[0, "q50"] > 1 and clipped.loc[0, "q50"] == 1.0


def test_binomial_predictions_are_probabilities(binomial_fit: BinomialFit) -> None:
    model = binomial_fit.model
    pred = model.predict([0, 1, "nobody"], [-50.0, 9.0, 80.0])
    values = pred[["mean", *(f"q{q:02d}" for q in LEVELS)]].to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    gp = model.goal_probability([0, 1, "nobody"], 9.0, [0.0, 0.5, 1.0])
    assert np.all((gp["p"] >= 0) & (gp["p"] <= 1))
    assert gp.loc[0, "p"] == pytest.approx(1.0) and gp.loc[2, "p"] == pytest.approx(0.0)


def test_scalars_broadcast(reference_fit: GrowthModel) -> None:
    m = reference_fit
    many_times = m.predict("u3", [0, 6, 12])
    explicit = m.predict(["u3", "u3", "u3"], [0, 6, 12])
    pd.testing.assert_frame_equal(many_times, explicit)
    many_units = m.goal_probability(["u1", "u2", "nobody"], 12, 0.7)
    explicit_gp = m.goal_probability(["u1", "u2", "nobody"], [12, 12, 12], [0.7, 0.7, 0.7])
    pd.testing.assert_frame_equal(many_units, explicit_gp)
    single = m.goal_probability("u1", 12, 0.7)
    assert len(single) == 1 and single.iloc[0].equals(many_units.iloc[0])
    with pytest.raises(InvalidInputError):
        m.predict(["u1", "u2"], [1, 2, 3])


# --- 5. JSON ----------------------------------------------------------------------------------------------------------


def _predictions(model: GrowthModel, units: list[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        model.predict(units, [3.0] * len(units), bounds=(0.0, 1.0)),
        model.goal_probability(units, 12.0, 0.75, bounds=(0.0, 1.0)),
    )


@pytest.mark.parametrize("which", ["reference_fit", "gaussian_fit", "binomial_fit"])
def test_json_round_trip(which: str, request: pytest.FixtureRequest) -> None:
    fitted = request.getfixturevalue(which)
    model: GrowthModel = fitted.model if isinstance(fitted, BinomialFit) else fitted
    assert model.units_ is not None
    units = [*model.units_[:5], "nobody"]
    expected = _predictions(model, units)
    data = json.loads(json.dumps(model.to_json()))
    back = GrowthModel.from_json(data)
    for got, want in zip(_predictions(back, units), expected, strict=True):
        pd.testing.assert_frame_equal(got, want)
    pd.testing.assert_frame_equal(back.fixed_effects(), model.fixed_effects(), check_exact=True)
    assert back.get_params() == model.get_params()
    assert back.formula == model.formula
    # Without the units block, with the rows the job stores instead.
    slim = json.loads(json.dumps(model.to_json(include_units=False)))
    assert "units" not in slim
    frame = model.unit_frame()
    back2 = GrowthModel.from_json(slim, units=frame)
    for got, want in zip(_predictions(back2, units), expected, strict=True):
        pd.testing.assert_frame_equal(got, want)
    with pytest.raises(InvalidInputError):
        GrowthModel.from_json(slim)  # no units anywhere


def test_json_refuses_other_engines_and_versions(reference_fit: GrowthModel) -> None:
    data = reference_fit.to_json(include_units=False)
    units = reference_fit.unit_frame()
    for bad in ({**data, "engine": "survival"}, {**data, "version": 999}, {**data, "version": None}):
        with pytest.raises(InvalidInputError):
            GrowthModel.from_json(bad, units=units)
    with pytest.raises(InvalidInputError):
        GrowthModel.from_json([1, 2, 3], units=units)  # type: ignore[arg-type]
    broken = json.loads(json.dumps(data))
    del broken["population_cov"]
    with pytest.raises(InvalidInputError):
        GrowthModel.from_json(broken, units=units)


def test_not_fitted() -> None:
    model = GrowthModel()
    for call in (
        lambda: model.predict(["a"], [1.0]),
        lambda: model.goal_probability(["a"], [1.0], [0.5]),
        model.to_json,
        model.fixed_effects,
        model.unit_frame,
    ):
        with pytest.raises(NotFittedError):
            call()


# --- 6. input errors ------------------------------------------------------------------------------------------------

UNITS = ["a", "a", "b", "b"]
TIMES = [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("family", "kwargs", "y", "trials", "column"),
    [
        ("gaussian", {}, [0.1, np.nan, 0.3, 0.4], None, "y"),
        ("gaussian", {}, [0.1, "x", 0.3, 0.4], None, "y"),
        ("binomial", {}, [1, 2, 3, 4], None, "trials"),
        ("binomial", {}, [1, 2, 9, 4], [5, 5, 5, 5], "y"),  # more successes than trials
        ("binomial", {}, [1, 2, 3, 4], [5, np.nan, 5, 5], "trials"),
        ("binomial", {}, [1, 2, 3, 4], [5, 0, 5, 5], "trials"),
        ("binomial", {}, [1, 2.5, 3, 4], [5, 5, 5, 5], "y"),
        ("poisson", {}, [1, 2, 3, 4], None, "family"),
        ("gaussian", {"iter": 1001}, [0.1, 0.2, 0.3, 0.4], None, "iter"),
        ("gaussian", {"iter": 10}, [0.1, 0.2, 0.3, 0.4], None, "iter"),
        ("gaussian", {"chains": 0}, [0.1, 0.2, 0.3, 0.4], None, "chains"),
    ],
)
def test_input_errors_name_the_column(
    family: str, kwargs: dict[str, Any], y: list[Any], trials: list[Any] | None, column: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        GrowthModel(family, **kwargs).fit(UNITS, TIMES, y, trials)
    assert column in problem_names(info.value), info.value.details
    assert column in str(info.value)


def test_draw_moments_are_each_units_mean_and_covariance() -> None:
    """The binomial fit's per-unit moments, summed a block of draws at a time, equal NumPy's mean and np.cov."""
    rng = np.random.default_rng(2)
    draws = rng.normal(size=(250, 7, 2)) @ np.array([[1.0, 0.4], [0.0, 0.3]]) + np.array([2.0, -1.0])
    mean, cov = growth._draw_moments(draws, block=100)
    np.testing.assert_allclose(mean, draws.mean(axis=0), rtol=1e-12)
    for u in range(7):
        np.testing.assert_allclose(cov[u], np.cov(draws[:, u, :], rowvar=False), rtol=1e-12)


@pytest.mark.parametrize("family", ["gaussian", "binomial"])
def test_times_far_from_zero_are_refused_with_the_reason(family: str) -> None:
    """Day numbers (or years) as time make the intercept at time 0 an extrapolation NUTS cannot fit (R-hat ~2 in the
    study of _check_time_origin): a clear error instead; times within MAX_TIME_OFFSET ranges of 0 are accepted."""
    trials = [10, 10, 10, 10] if family == "binomial" else None
    y = [3, 4, 5, 6] if family == "binomial" else [0.3, 0.4, 0.5, 0.6]
    days = [20_431.0, 20_438.0, 20_431.0, 20_438.0]
    with pytest.raises(InvalidInputError) as info:
        GrowthModel(family).fit(UNITS, days, y, trials)
    assert problem_names(info.value) == {"time"}
    assert "20431 to 20438" in str(info.value) and "origin near the data" in str(info.value)
    near = [200.0, 210.0, 200.0, 210.0]  # middle 205 = 20.5 ranges of 10 from 0: just over
    with pytest.raises(InvalidInputError):
        growth.prepare_data(family, UNITS, near, y, trials)
    within = [190.0, 200.0, 190.0, 200.0]  # 19.5 ranges
    assert growth.prepare_data(family, UNITS, within, y, trials).time.max() == 200.0
    assert growth.prepare_data(family, UNITS, [-0.5, 0.5, 11.5, 3.0], y, trials).time.min() == -0.5


def test_nan_time_and_unit_and_lengths_are_named() -> None:
    with pytest.raises(InvalidInputError) as info:
        GrowthModel().fit(UNITS, [0.0, np.inf, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4])
    assert problem_names(info.value) == {"time"} and info.value.details["problems"][0]["row"] == 1
    with pytest.raises(InvalidInputError) as info:
        GrowthModel().fit(["a", None, "b", "b"], TIMES, [0.1, 0.2, 0.3, 0.4])
    assert problem_names(info.value) == {"unit"}
    with pytest.raises(InvalidInputError) as info:
        GrowthModel().fit(UNITS, TIMES, [0.1, 0.2, 0.3])
    assert problem_names(info.value) == {"y"}


def test_insufficient_data() -> None:
    with pytest.raises(InsufficientDataError):
        GrowthModel().fit(["a", "a", "a"], [0.0, 1.0, 2.0], [0.1, 0.2, 0.3])  # a single unit
    with pytest.raises(InsufficientDataError):
        GrowthModel().fit(["a", "b", "c"], [1.0, 1.0, 1.0], [0.1, 0.2, 0.3])  # a single time
    with pytest.raises(InsufficientDataError):
        GrowthModel().fit([], [], [])
