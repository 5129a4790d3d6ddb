"""Hierarchical linear growth model (brms: ``y ~ time + (time | unit)``) fitted by NUTS with NumPyro.

**Model.** Unit ``i`` (a student) observed at times ``t_ij`` (weeks):

    eta_ij = (b0 + u0_i) + (b1 + u1_i) * t_ij,     (u0_i, u1_i) ~ N(0, Sigma),
    Sigma = [[tau0^2, rho tau0 tau1], [rho tau0 tau1, tau1^2]]

- ``gaussian``: ``y_ij ~ N(eta_ij, sigma^2)`` (identity link; e.g. weekly accuracy);
- ``binomial``: ``correct_ij ~ Binomial(trials_ij, logistic(eta_ij))`` (brms ``correct | trials(attempts)``).

**Priors** (``GrowthPriors``; brms 2.18's defaults for the same formula in brackets):

- ``b0`` (intercept at ``t = 0``) ~ Student-t(3, loc, 2.5), loc = median(y) (gaussian) or 0 (binomial)
  [brms: the same, on the intercept of the *centred* time];
- ``b1`` ~ N(0, 2.5) [brms: flat; at the data sizes here N(0, 2.5) is flat for all practical purposes,
  and a proper prior keeps the posterior proper with one time point];
- ``tau0, tau1`` ~ half-Student-t(3, 0, 2.5) [brms: the same]; ``sigma`` ~ half-Student-t(3, 0, 2.5) [the same];
- correlation ``rho`` ~ LKJ(1), i.e. uniform on (-1, 1) in two dimensions [brms: the same].

brms widens 2.5 to mad(y) when that is larger; on accuracy data (|y| <= 1) it never is.

**Time origin.** The intercept and its SD are those at ``t = 0``, so time must be measured from an origin near the
data (the job uses weeks since the window's start): times whose middle lies more than ``MAX_TIME_OFFSET`` (20) times
their range from 0, such as day numbers or years, are refused with an error saying so (``_check_time_origin``).

**Inference.** NUTS (NumPyro, ``iter`` iterations per chain of which half are warm-up, as ``BRMS_ITER`` /
``BRMS_CHAINS`` mean in brms). The gaussian family is sampled in an *exact marginalisation*: the random
effects integrate out in closed form, ``y_i ~ N(Z_i b, Z_i Sigma Z_i' + sigma^2 I)`` with ``Z_i = [1, t_i]``,
whose log density depends on six sufficient statistics per unit (``n, St, Stt, Sy, Sty, Syy``) via Woodbury, so
NUTS explores only the six hyper-parameters (dense mass matrix, started from the Laplace approximation at the
posterior mode: see ``_laplace_start``) whatever the number of units. The units'
coefficients then follow exactly from their conditional posterior given each hyper-parameter draw,
``c_i | h ~ N(b + C_i Z_i' r_i / sigma^2, C_i)``, ``C_i = (Sigma^-1 + Z_i'Z_i / sigma^2)^-1``, ``r_i = y_i - Z_i b``
(Rao-Blackwellised: their posterior means and covariances are exact averages over the draws). The binomial family
has no closed form: NUTS samples every unit's coefficients, through each unit's approximate *conditional*
posterior given the population parameters ``h``: ``c_i = mu_i(h) + U_i(h)^-T w_i``, where ``N(mu_i(h), (U_i U_i')^-1)``
combines a fixed Gaussian approximation of the unit's likelihood (at its Laplace mode) with ``N(b, Sigma)``
(:mod:`learnpulse.engines.growth_laplace`). That is an exact change of variables (its log Jacobian is added), so
the posterior is the model's own, but every ``w_i`` is near standard normal and nearly independent of ``h``,
whether the unit has 500 answers or 5: no funnel between the SDs and the units' effects (brms's non-centred
``u_i = L z_i`` has none only for units with little data), one dense mass-matrix block for the population.
Each gradient is one pass over the rows that yields the likelihood and its gradient together
(:mod:`learnpulse.engines.binomial_loglik`), the cost of the binomial family at scale. Because those many ``w_i``
are all near standard normal, NUTS's tree length is a step function of the step size with narrow bands where trees
grow tens of times longer (a U-turn resonance); the binomial sampler therefore checks its adapted step size at the
end of warm-up and nudges it 4% up when that makes trees several times shorter
(:mod:`learnpulse.engines.nuts_step_probe`: the kept draws are still NUTS at one fixed step size).

``sampler="gibbs"`` (binomial family; the job's ``BRMS_SAMPLER=gibbs``) samples the same model and posterior by
NUTS-within-Gibbs (:mod:`learnpulse.engines.growth_gibbs`): NumPyro NUTS on the five population parameters given the
units, and for each unit's ``w_i`` given the population, BlackJAX's independence Metropolis-Hastings with Student-t
proposals (the ``w_i`` are near standard normal, so most proposals are accepted and each is a fresh draw); two sweeps
per iteration. A sweep costs ~6 gradient passes over the rows for the population and two gradient-free ones for
the units, against ~63 gradients per draw for joint NUTS, so it is several times faster on large data
(bench/RESULTS.md). The units' data are then a grid even for irregular rows (:func:`_binomial_layout` with ``grid``):
every unit padded to the most rows of one unit, so data where one unit has far more rows than nearly all others are
refused with an error naming it (:func:`_check_grid`).

**Per-unit posterior.** Predictions use, for every unit, the posterior mean ``m_i`` and covariance ``V_i`` of its
coefficients ``c_i = (b0 + u0_i, b1 + u1_i)`` (exact first two moments) and treat ``c_i`` as bivariate normal; a unit
not in the fit gets the population draw ``c = b + u`` with mean ``E[b]`` and covariance ``Cov(b) + E[Sigma]``.
At time ``t``, ``eta = c . (1, t) ~ N(m . x, x' V x)``; the expected response is ``g(eta)`` with ``g`` = identity
clipped to ``bounds`` (gaussian) or the logistic function (binomial); quantiles map through ``g`` (monotone), its mean
and SD come from a 256-point quadrature on the normal's quantiles. ``tests/test_growth_engine.py`` checks this
summary against the raw draws.

**Goal probability.** ``P = P(g(eta_T) >= target) = Phi((m . x_T - g^-1(target)) / sqrt(x_T' V x_T))`` and
``sigma = SD(g(eta_T))`` at the deadline's time ``T``.

**Diagnostics.** Rank-normalised split R-hat and bulk/tail ESS (ArviZ's definitions, vectorised in
:mod:`learnpulse.engines.mcmc_diagnostics`) of the hyper-parameters (``max_rhat``,
``min_ess_bulk``, ``min_ess_tail``), the divergent transitions, the sampler's mean leapfrog steps per kept draw
and each chain's step size (binomial: and whether the probe nudged it), and the seconds spent. For the binomial
family the same figures over every unit's coefficients are reported beside them (``units_*``): with thousands of
units some exceed 1.01 by chance alone, so a gate should use the hyper-parameters' (the gaussian family's unit
coefficients are exact conditional draws given the hyper-parameters, so theirs are the hyper-parameters' too).
"""

from __future__ import annotations

import functools
import gc
import math
import os
import threading
import time as _time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.special import expit, logit, ndtr, ndtri

from learnpulse.engines.base import check_fitted, envelope, float_vector, open_envelope
from learnpulse.engines.growth_laplace import UnitLaplace, conditional_map, mean_inverse, unit_laplace
from learnpulse.engines.growth_options import FAMILIES, SAMPLERS
from learnpulse.engines.mcmc_diagnostics import chain_diagnostics
from learnpulse.errors import InsufficientDataError, InvalidInputError

FloatArray = npt.NDArray[np.float64]
ENGINE = "growth"
FORMAT_VERSION = 1
_QUAD_POINTS = 256
# Hyper-parameter names as brms prints them (the summary's rows).
PARAMETERS: tuple[str, ...] = ("Intercept", "time", "sd(Intercept)", "sd(time)", "cor(Intercept,time)", "sigma")

# The sampler's site of each population parameter, by brms name.
_SITES = dict(zip(PARAMETERS, ("b0", "b1", "tau0", "tau1", "rho", "sigma"), strict=True))

__all__ = ["FAMILIES", "GrowthModel", "GrowthPriors", "by_brms_name", "units_squares"]


def by_brms_name(samples: dict[str, FloatArray]) -> dict[str, FloatArray]:
    """The population parameters' draws from the sampler's sites (``b0, b1, tau0, tau1, rho[, sigma]``), keyed by
    brms name in :data:`PARAMETERS`' order; ``sigma`` only where it was sampled (gaussian family)."""
    return {name: samples[site] for name, site in _SITES.items() if site in samples}


@dataclass(frozen=True)
class GrowthPriors:
    """Weakly-informative priors (see the module docstring for brms's defaults beside them).

    ``intercept_loc=None`` means median(y) for the gaussian family and 0 for the binomial (logit) one.
    """

    intercept_df: float = 3.0
    intercept_loc: float | None = None
    intercept_scale: float = 2.5
    slope_sd: float = 2.5
    sd_df: float = 3.0
    sd_scale: float = 2.5
    sigma_df: float = 3.0
    sigma_scale: float = 2.5
    lkj_eta: float = 1.0

    def describe(self, intercept_loc: float) -> dict[str, str]:
        """The priors as brms would print them (for the model's metadata)."""
        return {
            "Intercept": f"student_t({self.intercept_df:g}, {intercept_loc:.4g}, {self.intercept_scale:g})",
            "time": f"normal(0, {self.slope_sd:g})",
            "sd": f"student_t({self.sd_df:g}, 0, {self.sd_scale:g}) truncated at 0",
            "sigma": f"student_t({self.sigma_df:g}, 0, {self.sigma_scale:g}) truncated at 0 (gaussian only)",
            "cor": f"lkj_corr_cholesky({self.lkj_eta:g})",
        }


@dataclass
class GrowthData:
    """Validated long-format data: unit codes ``0..n_units-1``, times, responses and (binomial) trials."""

    units: list[Any]
    code: npt.NDArray[np.int64]
    time: FloatArray
    y: FloatArray
    trials: FloatArray | None
    n_obs: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.n_obs = np.bincount(self.code, minlength=len(self.units)).astype(np.int64)


def _invalid(message: str, column: str, reason: str, row: int | None = None) -> InvalidInputError:
    problem: dict[str, Any] = {"column": column, "reason": reason}
    if row is not None:
        problem["row"] = row
    return InvalidInputError(message, {"problems": [problem]})


def _python_label(value: Any) -> Any:
    """A unit label as a plain JSON scalar (NumPy integers become ``int``, everything else ``str``)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return str(value)


# How far (in multiples of the times' range) the middle of the times may lie from time 0; see _check_time_origin.
MAX_TIME_OFFSET = 20.0


def _check_time_origin(t: FloatArray) -> None:
    """Refuse times far from 0 for their range. The intercept and its SD are those at time 0 (as in brms), so with
    times like day numbers (~20,000) or years (~2,025) they are extrapolations correlated ~1 with the slopes, and
    NUTS cannot fit that reliably: on 300 simulated students x 12 weeks shifted by 500 weeks the binomial fit had
    R-hat 1.07, by 1,000 R-hat 1.9 with a wrong slope; the gaussian failed at 20,000 (R-hat 1.06, divergences).
    Shifted by 220 (the middle 20 ranges from 0) both were as at 0. A clear error beats such a fit."""
    low, high = float(t.min()), float(t.max())
    middle, spread = (low + high) / 2.0, max(high - low, 1.0)
    if abs(middle) > MAX_TIME_OFFSET * spread:
        raise _invalid(
            f"time runs from {low:g} to {high:g}, far from 0 for its range: the intercept and its SD are those at "
            "time 0 (as in brms), here an extrapolation the sampler cannot fit reliably; measure time from an origin "
            "near the data (e.g. weeks since the first observation)",
            "time",
            f"middle more than {MAX_TIME_OFFSET:g} ranges from 0",
        )


def prepare_data(
    family: str, unit: npt.ArrayLike, time: npt.ArrayLike, y: npt.ArrayLike, trials: npt.ArrayLike | None = None
) -> GrowthData:
    """Check and encode long-format data (one row per unit and time). ``y`` is the response (gaussian) or the
    number of successes out of ``trials`` (binomial); errors name the column and the first bad row."""
    if family not in FAMILIES:
        raise _invalid(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}", "family", "unknown")
    units_raw = np.asarray(unit)
    if units_raw.ndim != 1:
        raise _invalid("unit must be one-dimensional", "unit", f"shape {units_raw.shape}")
    if pd.isna(units_raw).any():
        row = int(np.flatnonzero(pd.isna(units_raw))[0])
        raise _invalid(f"unit is missing at row {row}", "unit", "missing", row)
    t = float_vector(time, "time")
    yy = float_vector(y, "y")
    for name, arr in (("time", t), ("y", yy)):
        if len(arr) != len(units_raw):
            raise _invalid(f"{name} has {len(arr)} rows but unit has {len(units_raw)}", name, "length differs")
    if len(yy) == 0:
        raise InsufficientDataError("no observations to fit", {"rows": 0})
    _check_time_origin(t)
    n_trials: FloatArray | None = None
    if family == "binomial":
        if trials is None:
            raise _invalid("the binomial family needs trials (y successes out of trials)", "trials", "missing")
        n_trials = float_vector(trials, "trials")
        if len(n_trials) != len(yy):
            raise _invalid("trials and y differ in length", "trials", "length differs")
        checks = (
            ("trials", (n_trials < 1) | (n_trials != np.round(n_trials)), "not a positive whole number"),
            ("y", (yy < 0) | (yy > n_trials) | (yy != np.round(yy)), "not a whole number between 0 and trials"),
        )
        for name, bad, reason in checks:
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise _invalid(f"{name} at row {row}: {reason}", name, reason, row)
    labels, code = np.unique(units_raw, return_inverse=True)
    return GrowthData([_python_label(v) for v in labels], code.astype(np.int64), t, yy, n_trials)


# --- NumPyro models (imported lazily: JAX start-up costs ~1 s and is only needed to fit) ---------------------------


def _jaxlib_at_least(major: int, minor: int) -> bool:
    """Whether the installed jaxlib is at least ``major.minor`` (XLA aborts on flags it does not know)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        parts = version("jaxlib").split(".")[:2]
        return (int(parts[0]), int(parts[1])) >= (major, minor)
    except (PackageNotFoundError, ValueError, IndexError):
        return False


def _jax() -> Any:
    # Two host devices let the chains run in parallel on the two cores; must be set before JAX starts.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={max(2, os.cpu_count() or 1)}"
    if "xla_cpu_experimental_ynn_fusion_type" not in flags and _jaxlib_at_least(0, 10):
        # XLA 0.10's YNNPACK fusions slow the binomial sampler's gradient on large data (they materialise
        # broadcast constants and split the row pass): at 100,000 units x 12 weeks with both chains running, ~10-12
        # -> ~7-9 ms (bench/growth_gradient.py); a 10,000-student fit 55 -> 42-47 s. They help small fits a little
        # (1,000 students: 7-8 s with them, 10-12 s without) and leave the gaussian family as it is; the flag is
        # process-wide, so it is set for the case where the time matters.
        flags += " --xla_cpu_experimental_ynn_fusion_type="
    os.environ["XLA_FLAGS"] = flags.strip()
    import jax
    import numpyro

    numpyro.enable_x64()  # the Woodbury marginal likelihood loses precision in float32
    return jax


# One fit at a time per process (the API serves requests on threads): a fit already runs a chain per core, and
# _release_compiled clears caches process-wide, which must not happen while another fit compiles.
_FIT_LOCK = threading.Lock()


def _release_compiled(jax: Any) -> None:
    """Drop JAX's compiled programs once a fit is done. Every fit compiles its own (the model's data are closed
    over), and JAX keeps them: ~1,000 memory mappings and tens of MB per gaussian fit, so a long-lived process (the
    API, the in-process scheduler) hit the kernel's map limit (vm.max_map_count, 65,530) after about 60 fits and
    then failed to compile at all. Nothing is lost: the next fit compiles anew in any case. Clears every JAX cache
    of the process: learnpulse uses JAX only here."""
    jax.clear_caches()
    gc.collect()  # the executables go with the last Python references to them


def _sufficient_stats(data: GrowthData) -> FloatArray:
    """Per unit ``(n, St, Stt, Sy, Sty, Syy)``: all the gaussian marginal likelihood needs, shape (units, 6)."""
    k = len(data.units)
    t, y, c = data.time, data.y, data.code
    cols = [np.ones_like(t), t, t * t, y, t * y, y * y]
    return np.stack([np.bincount(c, weights=v, minlength=k) for v in cols], axis=1)


def _hyper_sites(priors: GrowthPriors, loc: float, gaussian: bool) -> dict[str, Any]:
    """The population parameters with their priors.

    The slope's SD and the correlation are sampled through the second row of the Cholesky factor of ``Sigma``,
    ``(l10, l11) = tau1 (rho, sqrt(1 - rho^2))`` (polar coordinates, ``l11 > 0``), with the priors of ``tau1`` and
    ``rho`` and the Jacobian ``sqrt(1 - rho^2) / tau1`` added: the same model, but without the funnel that
    ``(log tau1, rho)`` form when the slopes vary little and ``rho`` is then unidentified.
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    def half_t(df: float, scale: float) -> Any:
        return dist.FoldedDistribution(dist.StudentT(df, 0.0, scale))

    l10 = numpyro.sample("l10", dist.ImproperUniform(constraints.real, (), ()))
    l11 = numpyro.sample("l11", dist.ImproperUniform(constraints.positive, (), ()))
    tau1 = numpyro.deterministic("tau1", jnp.sqrt(l10 * l10 + l11 * l11))
    rho = numpyro.deterministic("rho", l10 / tau1)
    # LKJ(eta) in two dimensions: (rho + 1) / 2 ~ Beta(eta, eta), so p(rho) = Beta((rho + 1) / 2) / 2.
    log_prior = (
        half_t(priors.sd_df, priors.sd_scale).log_prob(tau1)
        + dist.Beta(priors.lkj_eta, priors.lkj_eta).log_prob((rho + 1.0) / 2.0)
        - jnp.log(2.0)
        + 0.5 * jnp.log1p(-rho * rho)
        - jnp.log(tau1)
    )
    numpyro.factor("tau1_rho_prior", log_prior)
    out = {
        "b0": numpyro.sample("b0", dist.StudentT(priors.intercept_df, loc, priors.intercept_scale)),
        "b1": numpyro.sample("b1", dist.Normal(0.0, priors.slope_sd)),
        "tau0": numpyro.sample("tau0", half_t(priors.sd_df, priors.sd_scale)),
        "tau1": tau1,
        "rho": rho,
        "l10": l10,
        "l11": l11,
    }
    if gaussian:
        out["sigma"] = numpyro.sample("sigma", half_t(priors.sigma_df, priors.sigma_scale))
    return out


def _gaussian_model(*, stats: Any, priors: GrowthPriors, loc: float) -> None:
    import jax.numpy as jnp
    import numpyro

    h = _hyper_sites(priors, loc, gaussian=True)
    b0, b1, tau0, tau1, rho, sigma = h["b0"], h["b1"], h["tau0"], h["tau1"], h["rho"], h["sigma"]
    n, st, stt, sy, sty, syy = (stats[:, j] for j in range(6))
    s2 = sigma * sigma
    # Sigma^-1 for the 2x2 covariance, then M = Sigma^-1 + Z'Z / s2 (per unit).
    det_sigma = tau0**2 * tau1**2 * (1.0 - rho**2)
    p00, p01, p11 = tau1**2 / det_sigma, -rho * tau0 * tau1 / det_sigma, tau0**2 / det_sigma
    m00, m01, m11 = p00 + n / s2, p01 + st / s2, p11 + stt / s2
    det_m = m00 * m11 - m01 * m01
    # r = y - Z b: r'r and Z'r from the sufficient statistics.
    rr = syy - 2 * b0 * sy - 2 * b1 * sty + n * b0**2 + 2 * b0 * b1 * st + b1**2 * stt
    z0, z1 = sy - n * b0 - st * b1, sty - st * b0 - stt * b1
    quad_m = (m11 * z0 * z0 - 2 * m01 * z0 * z1 + m00 * z1 * z1) / det_m
    quad = (rr - quad_m / s2) / s2
    # log|V| = n log s2 + log|Sigma| + log|M| (matrix determinant lemma).
    logdet = n * jnp.log(s2) + jnp.log(det_sigma) + jnp.log(det_m)
    numpyro.factor("y_marginal", -0.5 * jnp.sum(quad + logdet + n * math.log(2 * math.pi)))


def _binomial_model(
    *, time: Any, y: Any, trials: Any, q: Any, r: Any, priors: GrowthPriors, loc: float, code: Any = None
) -> None:
    """The binomial family with unit coefficients ``c_i = mu_i(h) + U_i(h)^-T w_i``: each unit's approximate
    conditional posterior given the population parameters ``h``, from its likelihood's Gaussian approximation
    ``(q_i, r_i)`` (:mod:`learnpulse.engines.growth_laplace`). The density is the model's own, ``N(c_i | b, Sigma)``
    times the binomial likelihood, in ``(h, w)`` with the change of variables' log Jacobian added, without the
    binomial coefficients (constant). Data: ``time, y, trials`` as :func:`_binomial_layout` gives them: a times x
    units grid (``code=None``: no gather, whose gradient, a scatter-add, dominated the cost on CPU) or flat rows
    with each row's unit index ``code``. ``q`` and ``r`` in single precision.

    The per-unit arithmetic runs in single precision and is summed in double: at 100,000 units it is dozens of
    passes over (units,) arrays per gradient, memory-bound, and half the bytes halve it; the rounding (~1e-7
    relative per unit) is far below the energy errors NUTS tolerates."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    from learnpulse.engines.binomial_loglik import binomial_loglik

    h = _hyper_sites(priors, loc, gaussian=False)
    n_units = q.shape[0]
    w = numpyro.sample("w", dist.ImproperUniform(constraints.real, (), (n_units, 2)))
    single = {k: jnp.asarray(h[k], jnp.float32) for k in ("b0", "b1", "tau0", "l10", "l11")}
    c0, c1, log_jacobian = conditional_map(jnp, w.astype(jnp.float32), single, q, r)
    numpyro.factor("units", _units_log_density(c0, c1, h) + log_jacobian)
    numpyro.factor("y", binomial_loglik(c0, c1, time, y, trials, code))


def units_squares(c0: Any, c1: Any, h: dict[str, Any]) -> Any:
    """Per unit ``|z_i|^2`` with ``z_i = L^-1 (c_i - b)``, ``L = [[tau0, 0], [l10, l11]]``, in the dtype of ``c0, c1``
    (units,): ``-|z_i|^2 / 2`` is ``log N(c_i | b, L L')`` up to ``-log det L`` and a constant."""
    import jax.numpy as jnp

    b0, b1, tau0, l10, l11 = (jnp.asarray(h[k], c0.dtype) for k in ("b0", "b1", "tau0", "l10", "l11"))
    z0 = (c0 - b0) / tau0
    z1 = (c1 - b1 - l10 * z0) / l11
    return z0 * z0 + z1 * z1


def _units_log_density(c0: Any, c1: Any, h: dict[str, Any]) -> Any:
    """``sum_i log N(c_i | b, L L')`` without its constant (:func:`units_squares`), the sum and ``-units log det L``
    in double."""
    import jax.numpy as jnp

    squares = jnp.sum(units_squares(c0, c1, h).astype(jnp.float64))
    return -0.5 * squares - c0.shape[-1] * (jnp.log(h["tau0"]) + jnp.log(h["l11"]))


@dataclass
class _Start:
    """Where and how NUTS starts on the gaussian family's hyper-parameters (see :func:`_laplace_start`)."""

    potential_fn: Any  # unconstrained parameters -> minus the log posterior density
    constrain: Any  # unconstrained samples (chains, draws, ...) -> every site, deterministic ones included
    init_params: Any  # unconstrained, one per chain
    inverse_mass_matrix: Any  # (d, d), or None for NumPyro's identity
    laplace: bool


def _laplace_start(model: Any, kwargs: dict[str, Any], chains: int, seed: int) -> _Start:
    """Start NUTS from the Laplace approximation: the posterior mode (L-BFGS on the unconstrained potential) and
    the inverse Hessian there (central differences of the gradient). The chains start at independent draws from that
    normal with its SDs doubled (over-dispersed, as R-hat assumes) and its covariance is the initial inverse mass
    matrix (the warm-up keeps adapting it). Without this, with many units the posterior is so narrow that from
    NumPyro's default start (uniform on (-2, 2) unconstrained) the warm-up spent hundreds of maximal trees reaching
    it, and sometimes a chain had not reached it when sampling began (100,000 units: 375 s and R-hat 2.2 with one
    seed, 105 s and 1.013 with another). Falls back to NumPyro's own starts when the mode or a positive-definite
    Hessian is not found. Only where the chains start and the initial mass matrix change, not the posterior. The mode
    is searched from several starts (each chain's and the origin), the lowest kept."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import initialize_model
    from scipy.optimize import minimize

    info = initialize_model(jax.random.split(jax.random.PRNGKey(seed), chains), model, model_kwargs=kwargs)
    potential = info.potential_fn
    x0, unravel = ravel_pytree(jax.tree_util.tree_map(lambda v: v[0], info.param_info.z))
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: potential(unravel(x))))

    def fun(x: FloatArray) -> tuple[float, FloatArray]:
        value, grad = value_and_grad(jnp.asarray(x))
        return float(value), np.asarray(grad, dtype=np.float64)

    def constrain(samples: dict[str, Any]) -> dict[str, FloatArray]:
        lead = jax.tree_util.tree_leaves(samples)[0].shape[:2]
        flat = jax.tree_util.tree_map(lambda v: jnp.reshape(v, (-1, *v.shape[2:])), samples)
        out = jax.jit(jax.vmap(info.postprocess_fn))(flat)
        return {k: np.asarray(v, dtype=np.float64).reshape(*lead, *np.shape(v)[1:]) for k, v in out.items()}

    def single(params: Any) -> Any:  # MCMC wants one chain's parameters without the chain axis
        return jax.tree_util.tree_map(lambda v: v[0], params) if chains == 1 else params

    fallback = _Start(potential, constrain, single(info.param_info.z), None, False)
    # From every chain's NumPyro start and from the origin; the lowest finite minimum wins. One start alone failed on
    # some data (a NaN on the way: no Laplace start, and a chain left stuck in a corner at cor ~ -1, R-hat 2.2) and
    # could stop at a secondary mode.
    origins = [ravel_pytree(jax.tree_util.tree_map(lambda v, i=i: v[i], info.param_info.z))[0] for i in range(chains)]
    found = []
    for origin in [*origins, jnp.zeros_like(x0)]:
        try:
            opt = minimize(fun, np.asarray(origin, np.float64), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
        except ValueError:
            continue
        if np.isfinite(opt.fun) and np.all(np.isfinite(opt.x)):
            found.append(opt)
    if not found:
        return fallback
    res = min(found, key=lambda opt: float(opt.fun))
    try:
        mode = np.asarray(res.x, dtype=np.float64)
        # Steps of 1e-3 approximate posterior SDs (L-BFGS's own inverse-Hessian estimate) for the differences.
        step = 1e-3 * np.sqrt(np.maximum(np.diag(res.hess_inv.todense()), 1e-20))
        eye = np.eye(len(mode))
        rows = [(fun(mode + h * e)[1] - fun(mode - h * e)[1]) / (2 * h) for h, e in zip(step, eye, strict=True)]
        hess = np.stack(rows)
        if not (np.isfinite(res.fun) and np.all(np.isfinite(mode)) and np.all(np.isfinite(hess))):
            return fallback
        cov = np.linalg.inv(0.5 * (hess + hess.T))
        chol = np.linalg.cholesky(0.5 * (cov + cov.T))  # LinAlgError unless positive definite
    except (np.linalg.LinAlgError, ValueError):
        return fallback
    if not np.all(np.isfinite(chol)):
        return fallback
    rng = np.random.default_rng(seed)
    starts = mode + 2.0 * rng.standard_normal((chains, len(mode))) @ chol.T
    starts = np.array([x if np.isfinite(fun(x)[0]) else mode for x in starts])
    init = jax.vmap(unravel)(jnp.asarray(starts))
    return _Start(potential, constrain, single(init), jnp.asarray(cov), True)


# --- diagnostics -----------------------------------------------------------------------------------------------


# --- the estimator -----------------------------------------------------------------------------------------------


class GrowthModel:
    """``y ~ time + (time | unit)`` with NUTS. ``fit`` then ``predict`` / ``goal_probability``; see the module doc.

    Parameters: ``family`` (gaussian | binomial), ``iter`` (per chain, warm-up included, as brms),
    ``chains``, ``seed``, ``priors``, ``target_accept`` (brms's ``adapt_delta``), ``max_tree_depth``, ``sampler``
    (``nuts``; or ``gibbs`` for the binomial family: see the module docstring).
    """

    def __init__(
        self,
        family: str = "gaussian",
        *,
        iter: int = 1000,
        chains: int = 2,
        seed: int = 0,
        priors: GrowthPriors | None = None,
        target_accept: float = 0.8,
        max_tree_depth: int = 10,
        sampler: str = "nuts",
    ) -> None:
        self.family = family
        self.iter = iter
        self.chains = chains
        self.seed = seed
        self.priors = priors or GrowthPriors()
        self.target_accept = target_accept
        self.max_tree_depth = max_tree_depth
        self.sampler = sampler
        self.units_: list[Any] | None = None
        self.coef_mean_: FloatArray | None = None  # (units, 2): posterior mean of (b0 + u0_i, b1 + u1_i)
        self.coef_cov_: FloatArray | None = None  # (units, 2, 2)
        self.n_obs_: npt.NDArray[np.int64] | None = None
        self.population_mean_: FloatArray | None = None
        self.population_cov_: FloatArray | None = None
        self.summary_: pd.DataFrame | None = None
        self.diagnostics_: dict[str, Any] | None = None
        self.time_range_: tuple[float, float] | None = None
        self.intercept_loc_: float | None = None
        self.hyper_draws_: dict[str, FloatArray] | None = None  # (chains, draws) per parameter

    # -- parameters ----------------------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "iter": self.iter,
            "chains": self.chains,
            "seed": self.seed,
            "priors": asdict(self.priors),
            "target_accept": self.target_accept,
            "max_tree_depth": self.max_tree_depth,
            "sampler": self.sampler,
        }

    def _check_params(self) -> None:
        problems = []
        if self.family not in FAMILIES:
            problems.append(("family", f"unknown family {self.family!r}: use one of {', '.join(FAMILIES)}"))
        if self.iter < 20 or self.iter % 2:
            problems.append(("iter", f"iter must be an even number >= 20 (got {self.iter})"))
        if self.chains < 1:
            problems.append(("chains", f"chains must be >= 1 (got {self.chains})"))
        if self.sampler not in SAMPLERS:
            problems.append(("sampler", f"unknown sampler {self.sampler!r}: use one of {', '.join(SAMPLERS)}"))
        elif self.sampler == "gibbs" and self.family != "binomial":
            problems.append(
                (
                    "sampler",
                    "the gibbs sampler is for the binomial family: the gaussian family's units are integrated out "
                    "exactly and NUTS samples its six population parameters alone",
                )
            )
        if not 0.5 <= self.target_accept < 1:
            problems.append(("target_accept", f"target_accept must be in [0.5, 1) (got {self.target_accept})"))
        if problems:
            raise InvalidInputError(
                "; ".join(m for _, m in problems), {"problems": [{"parameter": p, "reason": m} for p, m in problems]}
            )

    @property
    def formula(self) -> str:
        lhs = "correct | trials(attempts)" if self.family == "binomial" else "y"
        return f"{lhs} ~ time + (time | unit)"

    # -- fitting -------------------------------------------------------------------------------------------------

    def fit(
        self,
        unit: npt.ArrayLike,
        time: npt.ArrayLike,
        y: npt.ArrayLike,
        trials: npt.ArrayLike | None = None,
    ) -> GrowthModel:
        """Fit on long-format data: one row per (unit, time) with response ``y`` (binomial: successes of
        ``trials``). Needs at least two units and two distinct times. Fits in one process run one at a time (a
        second waits for the first: each runs a chain per core already); ``diagnostics_["seconds"]`` excludes the
        wait."""
        self._check_params()
        data = prepare_data(self.family, unit, time, y, trials)
        if len(data.units) < 2 or len(np.unique(data.time)) < 2:
            raise InsufficientDataError(
                "a growth model needs at least two units and two distinct times",
                {"units": len(data.units), "times": len(np.unique(data.time))},
            )
        loc = self.priors.intercept_loc
        if loc is None:
            loc = float(np.median(data.y)) if self.family == "gaussian" else 0.0
        jax = _jax()
        with _FIT_LOCK:
            started = _time.perf_counter()
            try:
                hyper, unit_draws, mean, cov, sampler = self._sample(jax, data, loc)
            finally:
                _release_compiled(jax)
        self._finish(
            data=data,
            hyper=hyper,
            unit_draws=unit_draws,
            mean=mean,
            cov=cov,
            sampler=sampler,
            loc=loc,
        )
        assert self.diagnostics_ is not None
        # After _finish: its per-unit diagnostics take a while at 100,000 units, and the seconds are the user's wait.
        self.diagnostics_["seconds"] = _time.perf_counter() - started
        return self

    def _sample(
        self, jax: Any, data: GrowthData, loc: float
    ) -> tuple[dict[str, FloatArray], FloatArray | None, FloatArray, FloatArray, dict[str, Any]]:
        """NUTS: the population parameters' draws (chains, draws) by brms name, the binomial family's unit
        coefficient draws (chains, draws, units, 2) or None, the units' posterior means (units, 2) and covariances
        (units, 2, 2), and the sampler's statistics (:func:`_sampler_stats`)."""
        from numpyro.infer import MCMC, NUTS

        gaussian = self.family == "gaussian"
        if gaussian:
            start = _laplace_start(
                _gaussian_model,
                {"stats": jax.numpy.asarray(_sufficient_stats(data)), "priors": self.priors, "loc": loc},
                self.chains,
                self.seed,
            )
            kernel = NUTS(
                potential_fn=start.potential_fn,
                target_accept_prob=self.target_accept,
                max_tree_depth=self.max_tree_depth,
                dense_mass=True,
                inverse_mass_matrix=start.inverse_mass_matrix,
                # Stan's shrinkage of the adapted covariance towards 1e-3 * I swamps the hyper-parameters' posterior
                # variances once there are many units (they shrink like 1 / units: ~1e-8 for the slope at 20,000),
                # so the trajectories grew with the data (~40 leapfrog steps per draw at 1,000 units, ~110 at 20,000).
                # Unregularised, the 6 x 6 covariance (>= 25 warm-up draws per window) keeps them at ~6.
                regularize_mass_matrix=False,
            )
            kwargs: dict[str, Any] = {"init_params": start.init_params}
        else:
            assert data.trials is not None
            laplace = unit_laplace(data.code, data.time, data.y, data.trials, len(data.units), loc)
            kernel, kwargs = _binomial_kernel(data, laplace, self, loc)
        half = self.iter // 2
        method = "parallel" if jax.local_device_count() >= self.chains else "sequential"
        mcmc = MCMC(
            kernel,
            num_warmup=half,
            num_samples=half,
            num_chains=self.chains,
            chain_method=method,
            progress_bar=False,
        )
        mcmc.run(jax.random.PRNGKey(self.seed), extra_fields=_extra_fields(kernel), **kwargs)
        raw = mcmc.get_samples(group_by_chain=True)
        if gaussian:
            raw = start.constrain(raw)  # the potential's unconstrained draws -> b0, tau0, ..., tau1, rho, sigma
        # Host copies, then the sampler's own dropped: at 100,000 binomial units its w draws alone are 1.6 GB.
        samples = {k: np.array(v, dtype=np.float64) for k, v in raw.items()}
        sampler = _sampler_stats(mcmc)
        del mcmc, raw, kwargs
        hyper = by_brms_name(samples)
        if gaussian:
            mean, cov = _gaussian_unit_moments(_sufficient_stats(data), {k: v.ravel() for k, v in hyper.items()})
            unit_draws = None
        else:
            unit_draws = _binomial_unit_draws(samples, laplace)  # (chains, draws, units, 2), in place of w
            mean, cov = _draw_moments(unit_draws.reshape(-1, len(data.units), 2))
        return hyper, unit_draws, mean, cov, sampler

    def _finish(
        self,
        *,
        data: GrowthData,
        hyper: dict[str, FloatArray],
        unit_draws: FloatArray | None,
        mean: FloatArray,
        cov: FloatArray,
        sampler: dict[str, Any],
        loc: float,
    ) -> None:
        names = list(hyper)
        stacked = np.stack([hyper[k] for k in names], axis=-1)  # (chains, draws, params)
        diag = chain_diagnostics(stacked)
        flat = stacked.reshape(-1, len(names))
        q = np.quantile(flat, [0.025, 0.975], axis=0)
        self.summary_ = pd.DataFrame(
            {
                "estimate": flat.mean(axis=0),
                "est_error": flat.std(axis=0, ddof=1),
                "q2.5": q[0],
                "q97.5": q[1],
                "rhat": diag["rhat"],
                "ess_bulk": diag["ess_bulk"],
                "ess_tail": diag["ess_tail"],
            },
            index=pd.Index(names, name="parameter"),
        )
        n_draws = flat.shape[0]
        self.diagnostics_ = {
            "max_rhat": float(diag["rhat"].max()),
            "min_ess_bulk": float(diag["ess_bulk"].min()),
            "min_ess_tail": float(diag["ess_tail"].min()),
            "sampler": self.sampler,
            **sampler,
            "divergence_share": sampler["divergences"] / n_draws,
            "draws": n_draws,
            "seconds": float("nan"),  # set by fit once everything is done
        }
        if unit_draws is not None:
            # Thousands of unit coefficients: some exceed 1.01 by chance alone, so they are reported, not gated.
            per_unit = chain_diagnostics(unit_draws.reshape(*unit_draws.shape[:2], -1))
            self.diagnostics_ |= {
                "units_max_rhat": float(np.nanmax(per_unit["rhat"])),
                "units_share_rhat_above_1_01": float(np.mean(per_unit["rhat"] > 1.01)),
                "units_min_ess_bulk": float(np.nanmin(per_unit["ess_bulk"])),
                "units_min_ess_tail": float(np.nanmin(per_unit["ess_tail"])),
            }
        b = np.stack([hyper["Intercept"].ravel(), hyper["time"].ravel()], axis=1)
        tau0, tau1 = hyper["sd(Intercept)"].ravel(), hyper["sd(time)"].ravel()
        rho = hyper["cor(Intercept,time)"].ravel()
        sigma_mean = np.stack(
            [np.stack([tau0**2, rho * tau0 * tau1], 1), np.stack([rho * tau0 * tau1, tau1**2], 1)], 1
        ).mean(axis=0)
        self.population_mean_ = b.mean(axis=0)
        self.population_cov_ = np.cov(b, rowvar=False) + sigma_mean
        self.units_ = data.units
        self.coef_mean_ = mean
        self.coef_cov_ = cov
        self.n_obs_ = data.n_obs
        self.time_range_ = (float(data.time.min()), float(data.time.max()))
        self.intercept_loc_ = loc
        self.hyper_draws_ = hyper

    # -- prediction ----------------------------------------------------------------------------------------------

    def unit_moments(self, units: npt.ArrayLike) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
        """Posterior mean (n, 2) and covariance (n, 2, 2) of each unit's (intercept, slope) on the link scale, and
        whether the unit was in the fit (others get the population draw)."""
        check_fitted(self, "coef_mean_")
        assert self.units_ is not None and self.coef_mean_ is not None and self.coef_cov_ is not None
        assert self.population_mean_ is not None and self.population_cov_ is not None
        index = pd.Index(self.units_)
        asked = pd.Index([_python_label(u) for u in np.asarray(units, dtype=object).ravel()])
        pos = index.get_indexer(asked)
        known = pos >= 0
        mean = np.broadcast_to(self.population_mean_, (len(pos), 2)).copy()
        cov = np.broadcast_to(self.population_cov_, (len(pos), 2, 2)).copy()
        mean[known] = self.coef_mean_[pos[known]]
        cov[known] = self.coef_cov_[pos[known]]
        return mean, cov, known

    def n_observations(self, units: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Observations each unit had in the fit (0 for units not in it)."""
        check_fitted(self, "coef_mean_")
        assert self.units_ is not None and self.n_obs_ is not None
        pos = pd.Index(self.units_).get_indexer([_python_label(u) for u in np.asarray(units, dtype=object).ravel()])
        out = np.zeros(len(pos), dtype=np.int64)
        out[pos >= 0] = self.n_obs_[pos[pos >= 0]]
        return out

    def _link_normal(self, units: npt.ArrayLike, times: npt.ArrayLike) -> tuple[FloatArray, FloatArray, Any]:
        """Normal mean and SD of the linear predictor for each (unit, time) pair (scalars broadcast)."""
        u_arr = np.atleast_1d(np.asarray(units, dtype=object))
        t_arr = np.atleast_1d(np.asarray(times, dtype=object))
        if u_arr.ndim != 1 or t_arr.ndim != 1 or (len(u_arr) not in (1, len(t_arr)) and len(t_arr) != 1):
            raise _invalid(
                f"units ({len(u_arr)}) and times ({len(t_arr)}) must have the same length or length one",
                "time",
                "length differs",
            )
        u_arr, t_arr = np.broadcast_arrays(u_arr, t_arr)
        t = float_vector(t_arr.astype(np.float64), "time")
        mean, cov, known = self.unit_moments(u_arr)
        mu = mean[:, 0] + mean[:, 1] * t
        var = cov[:, 0, 0] + 2 * t * cov[:, 0, 1] + t * t * cov[:, 1, 1]
        return mu, np.sqrt(np.maximum(var, 0.0)), known

    def _inverse_link(self, eta: FloatArray, bounds: tuple[float, float] | None) -> FloatArray:
        if self.family == "binomial":
            return cast(FloatArray, expit(eta))
        return np.clip(eta, *bounds) if bounds is not None else eta

    def _link(self, value: FloatArray, bounds: tuple[float, float] | None) -> FloatArray:
        if self.family == "binomial":
            return cast(FloatArray, logit(np.clip(value, 1e-12, 1 - 1e-12)))
        return value

    def predict(
        self, units: npt.ArrayLike, times: npt.ArrayLike, *, bounds: tuple[float, float] | None = None
    ) -> pd.DataFrame:
        """Expected response of each ``(unit, time)`` pair: mean, SD and the 5/25/50/75/95% quantiles
        (``bounds`` clips the gaussian family's expected response, e.g. (0, 1) for accuracy; the binomial
        family is a probability anyway). Units not in the fit get the population prediction (``known`` False)."""
        mu, sd, known = self._link_normal(units, times)
        levels = (0.05, 0.25, 0.5, 0.75, 0.95)
        out = {f"q{int(p * 100):02d}": self._inverse_link(mu + sd * ndtri(p), bounds) for p in levels}
        m, s = self._response_moments(mu, sd, bounds)
        return pd.DataFrame({"mean": m, "sd": s, **out, "known": known})

    def _response_moments(
        self, mu: FloatArray, sd: FloatArray, bounds: tuple[float, float] | None
    ) -> tuple[FloatArray, FloatArray]:
        """Mean and SD of g(eta), eta ~ N(mu, sd^2), by the midpoint rule on the normal's quantiles."""
        z = ndtri((np.arange(_QUAD_POINTS) + 0.5) / _QUAD_POINTS)
        values = self._inverse_link(mu[:, None] + sd[:, None] * z[None, :], bounds)
        mean = values.mean(axis=1)
        return mean, np.sqrt(np.maximum((values * values).mean(axis=1) - mean * mean, 0.0))

    def goal_probability(
        self,
        units: npt.ArrayLike,
        target_time: npt.ArrayLike,
        target: npt.ArrayLike,
        *,
        bounds: tuple[float, float] | None = None,
    ) -> pd.DataFrame:
        """``P`` = posterior probability that the expected response at ``target_time`` reaches ``target``, and
        ``sigma`` = its posterior SD (see the module doc), with ``expected`` (posterior mean), ``known`` and
        ``n_obs`` per unit."""
        mu, sd, known = self._link_normal(units, target_time)
        goal = np.broadcast_to(float_vector(np.atleast_1d(np.asarray(target, dtype=np.float64)), "target"), mu.shape)
        threshold = self._link(goal.astype(np.float64), bounds)
        with np.errstate(divide="ignore"):
            p = np.where(sd > 0, ndtr((mu - threshold) / np.where(sd > 0, sd, 1.0)), (mu >= threshold) * 1.0)
        if bounds is not None and self.family == "gaussian":
            # The clipped response reaches a target above the upper bound never, one below the lower bound always.
            p = np.where(goal > bounds[1], 0.0, np.where(goal <= bounds[0], 1.0, p))
        m, s = self._response_moments(mu, sd, bounds)
        return pd.DataFrame(
            {
                "p": p,
                "sigma": s,
                "expected": m,
                "known": known,
                "n_obs": self.n_observations(np.broadcast_to(np.atleast_1d(np.asarray(units, dtype=object)), mu.shape)),
            }
        )

    def fixed_effects(self) -> pd.DataFrame:
        """The hyper-parameters' posterior summary (brms's table plus R-hat and ESS)."""
        check_fitted(self, "summary_")
        assert self.summary_ is not None
        return self.summary_.copy()

    # -- JSON ----------------------------------------------------------------------------------------------------

    def to_json(self, *, include_units: bool = True) -> dict[str, Any]:
        """Everything ``predict`` needs as plain JSON (units' moments left out with ``include_units=False``: the
        job stores them as rows instead)."""
        check_fitted(self, "coef_mean_")
        assert self.summary_ is not None and self.population_mean_ is not None
        assert self.population_cov_ is not None and self.coef_mean_ is not None and self.coef_cov_ is not None
        assert self.units_ is not None and self.n_obs_ is not None
        body: dict[str, Any] = {
            "params": self.get_params(),
            "formula": self.formula,
            "priors_text": self.priors.describe(float(self.intercept_loc_ or 0.0)),
            "intercept_loc": self.intercept_loc_,
            "summary": {name: {k: float(v) for k, v in row.items()} for name, row in self.summary_.iterrows()},
            "diagnostics": self.diagnostics_,
            "time_range": list(self.time_range_ or ()),
            "population_mean": self.population_mean_.tolist(),
            "population_cov": self.population_cov_.tolist(),
        }
        if include_units:
            body["units"] = {
                "unit": list(self.units_),
                "n_obs": self.n_obs_.tolist(),
                "mean": self.coef_mean_.tolist(),
                "cov": [[c[0][0], c[0][1], c[1][1]] for c in self.coef_cov_.tolist()],
            }
        return envelope(ENGINE, FORMAT_VERSION, body)

    @classmethod
    def from_json(cls, data: dict[str, Any], units: pd.DataFrame | None = None) -> GrowthModel:
        """Rebuild from :meth:`to_json`. ``units`` (columns unit, n_obs, m0, m1, v00, v01, v11) replaces the units
        block when the JSON was written without it."""
        body = open_envelope(data, ENGINE, {FORMAT_VERSION})
        try:
            params = dict(body["params"])
            params["priors"] = GrowthPriors(**params["priors"])
            family = params.pop("family")
            model = cls(family, **params)
            model._check_params()
            summary = pd.DataFrame.from_dict(body["summary"], orient="index")
            summary.index.name = "parameter"
            model.summary_ = summary
            model.diagnostics_ = dict(body["diagnostics"])
            model.time_range_ = (float(body["time_range"][0]), float(body["time_range"][1]))
            model.intercept_loc_ = float(body["intercept_loc"])
            model.population_mean_ = np.asarray(body["population_mean"], dtype=np.float64).reshape(2)
            model.population_cov_ = np.asarray(body["population_cov"], dtype=np.float64).reshape(2, 2)
            if units is None:
                block = body["units"]
                units = pd.DataFrame(
                    {"unit": block["unit"], "n_obs": block["n_obs"]}
                    | dict(zip(("m0", "m1"), np.asarray(block["mean"], dtype=np.float64).T, strict=True))
                    | dict(zip(("v00", "v01", "v11"), np.asarray(block["cov"], dtype=np.float64).T, strict=True))
                )
            model.set_units(units)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidInputError(f"malformed {ENGINE} model: {exc}", {"engine": ENGINE}) from exc
        return model

    def unit_frame(self) -> pd.DataFrame:
        """The per-unit posterior moments as rows (unit, n_obs, m0, m1, v00, v01, v11): what the job stores."""
        check_fitted(self, "coef_mean_")
        assert self.coef_mean_ is not None and self.coef_cov_ is not None and self.n_obs_ is not None
        return pd.DataFrame(
            {
                "unit": self.units_,
                "n_obs": self.n_obs_,
                "m0": self.coef_mean_[:, 0],
                "m1": self.coef_mean_[:, 1],
                "v00": self.coef_cov_[:, 0, 0],
                "v01": self.coef_cov_[:, 0, 1],
                "v11": self.coef_cov_[:, 1, 1],
            }
        )

    def set_units(self, frame: pd.DataFrame) -> None:
        """Install per-unit moments from :meth:`unit_frame` rows (used by :meth:`from_json`)."""
        self.units_ = [_python_label(u) for u in frame["unit"]]
        self.n_obs_ = frame["n_obs"].to_numpy(dtype=np.int64)
        self.coef_mean_ = frame[["m0", "m1"]].to_numpy(dtype=np.float64)
        v00, v01, v11 = (frame[c].to_numpy(dtype=np.float64) for c in ("v00", "v01", "v11"))
        self.coef_cov_ = np.stack([np.stack([v00, v01], 1), np.stack([v01, v11], 1)], 1)


def _gaussian_unit_moments(stats: FloatArray, hyper: dict[str, FloatArray]) -> tuple[FloatArray, FloatArray]:
    """Exact posterior mean and covariance of every unit's (b0 + u0, b1 + u1), averaging the conditional normal
    ``N(b + C Z'r / sigma^2, C)`` over the hyper-parameter draws (law of total variance), in chunks of draws."""
    n, st, stt, sy, sty = (stats[:, j] for j in range(5))
    units = len(n)
    s1 = np.zeros((units, 2))
    s2 = np.zeros((units, 2, 2))
    draws = len(hyper["Intercept"])
    chunk = max(1, 4_000_000 // max(units, 1))
    for lo in range(0, draws, chunk):
        sl = slice(lo, lo + chunk)
        b0, b1 = hyper["Intercept"][sl, None], hyper["time"][sl, None]
        tau0, tau1, rho = (
            hyper["sd(Intercept)"][sl, None],
            hyper["sd(time)"][sl, None],
            hyper["cor(Intercept,time)"][sl, None],
        )
        s2_ = hyper["sigma"][sl, None] ** 2
        det_sigma = tau0**2 * tau1**2 * (1 - rho**2)
        m00 = tau1**2 / det_sigma + n / s2_
        m01 = -rho * tau0 * tau1 / det_sigma + st / s2_
        m11 = tau0**2 / det_sigma + stt / s2_
        det_m = m00 * m11 - m01 * m01
        c00, c01, c11 = m11 / det_m, -m01 / det_m, m00 / det_m  # C = M^-1
        z0 = (sy - n * b0 - st * b1) / s2_
        z1 = (sty - st * b0 - stt * b1) / s2_
        e0 = b0 + c00 * z0 + c01 * z1
        e1 = b1 + c01 * z0 + c11 * z1
        s1[:, 0] += e0.sum(0)
        s1[:, 1] += e1.sum(0)
        s2[:, 0, 0] += (c00 + e0 * e0).sum(0)
        s2[:, 0, 1] += (c01 + e0 * e1).sum(0)
        s2[:, 1, 1] += (c11 + e1 * e1).sum(0)
    mean = s1 / draws
    s2[:, 1, 0] = s2[:, 0, 1]
    cov = s2 / draws - np.einsum("ui,uj->uij", mean, mean)
    return mean, cov


def _binomial_unit_draws(samples: dict[str, FloatArray], laplace: UnitLaplace) -> FloatArray:
    """Unit coefficients ``c_i = mu_i(h) + U_i(h)^-T w_i`` per draw from the sampled ``w`` and population
    parameters: (chains, draws, units, 2), 50 draws at a time (its temporaries are a dozen (draws, units) arrays),
    written over ``samples["w"]``, which is removed (at 100,000 units each is 1.6 GB)."""
    out = samples.pop("w")
    chains, draws = out.shape[:2]
    for chain in range(chains):
        for start in range(0, draws, 50):
            part = slice(start, start + 50)
            h = {k: samples[k][chain, part, None] for k in ("b0", "b1", "tau0", "l10", "l11")}
            c0, c1, _ = conditional_map(np, out[chain, part], h, laplace.q, laplace.r)
            out[chain, part, :, 0], out[chain, part, :, 1] = c0, c1  # this part's w is read: overwrite it
    return out


def _draw_moments(draws: FloatArray, block: int = 100) -> tuple[FloatArray, FloatArray]:
    """Mean (units, 2) and covariance (units, 2, 2) of draws (draws, units, 2), ``ddof=1``: the mean, then the
    centred cross-products summed ``block`` draws at a time (a centred copy of all draws would be 1.6 GB at 100,000
    units)."""
    n = len(draws)
    mean = draws.mean(axis=0)
    cross = np.zeros((draws.shape[1], 2, 2))
    for start in range(0, n, block):
        centred = draws[start : start + block] - mean
        cross += np.einsum("dui,duj->uij", centred, centred)
    return mean, cross / max(n - 1, 1)


def _extra_fields(kernel: Any) -> tuple[str, ...]:
    """What :func:`_sampler_stats` needs recorded per iteration by ``kernel``."""
    from learnpulse.engines.growth_gibbs import GIBBS_FIELDS, SweepsGibbs

    return GIBBS_FIELDS if isinstance(kernel, SweepsGibbs) else ("diverging", "num_steps")


def _sampler_stats(mcmc: Any) -> dict[str, Any]:
    """What NUTS did, after a run: divergent transitions (sampling), mean leapfrog steps per kept draw (the cost
    of a draw, in gradients), each chain's step size and, for :class:`ProbedNUTS`, whether each chain's step size
    was nudged out of a U-turn resonance (see :mod:`learnpulse.engines.nuts_step_probe`). For the gibbs sampler the
    population block's figures and the units' acceptance rate (:func:`learnpulse.engines.growth_gibbs.gibbs_stats`).
    """
    from learnpulse.engines.growth_gibbs import SweepsGibbs, gibbs_stats

    fields = mcmc.get_extra_fields()
    last = mcmc.last_state
    if isinstance(mcmc.sampler, SweepsGibbs):
        return gibbs_stats(fields, last)
    stats: dict[str, Any] = {
        "divergences": int(np.asarray(fields["diverging"]).sum()),
        "mean_leapfrog_steps": float(np.asarray(fields["num_steps"]).mean()),
        "step_size": [float(s) for s in np.atleast_1d(np.asarray(last.adapt_state.step_size))],
    }
    if hasattr(last, "probe_steps"):
        from learnpulse.engines.nuts_step_probe import nudged_chains

        stats["step_size_nudged"] = nudged_chains(last)
    return stats


def _binomial_kernel(
    data: GrowthData, laplace: UnitLaplace, model: GrowthModel, loc: float
) -> tuple[Any, dict[str, Any]]:
    """The sampler for :func:`_binomial_model` (``model.sampler``: NUTS on everything, or NUTS on the population
    within a Gibbs sweep over the units, :func:`learnpulse.engines.growth_gibbs.nuts_within_gibbs`) and the keyword
    arguments of its run (data, starting points).

    Mass matrix: one dense block for the five population parameters (``b0, b1, l10`` and ``log tau0, log l11``)
    and a diagonal for the units' ``w``, which the Laplace reparameterisation has already made near-standard;
    initially the identity for ``w`` and, for the population block, rough posterior SDs from the moment estimates
    (``~ sqrt(Var / units)`` on each scale, doubled). Chains start at over-dispersed points: the moment estimates
    plus two rough SDs of noise, and ``w ~ N(0, I)``, the units' approximate conditional posterior.
    """
    import jax.numpy as jnp
    from numpyro.infer import NUTS

    from learnpulse.engines.nuts_step_probe import ProbedNUTS

    n = len(data.units)
    cov = laplace.cov
    tau0 = math.sqrt(cov[0, 0])
    l10 = cov[1, 0] / tau0
    l11 = math.sqrt(max(cov[1, 1] - l10 * l10, 1e-12))
    # Unconstrained coordinates (tau0 and l11 are positive: log scale).
    centre = {"b0": laplace.b[0], "b1": laplace.b[1], "l10": l10, "tau0": math.log(tau0), "l11": math.log(l11)}
    prior = np.linalg.inv(cov)
    total = cov + mean_inverse(laplace.q + prior[[0, 0, 1], [0, 1, 1]])  # population + average posterior covariance
    rough = {
        "b0": math.sqrt(total[0, 0] / n),
        "b1": math.sqrt(total[1, 1] / n),
        "l10": math.sqrt(total[1, 1] / n),
        "tau0": math.sqrt(2.0 / n) * total[0, 0] / cov[0, 0],
        "l11": math.sqrt(2.0 / n) * total[1, 1] / cov[1, 1],
    }
    block = tuple(sorted(centre))
    gibbs = model.sampler == "gibbs"
    inverse_mass = {block: jnp.diag(jnp.asarray([(2.0 * rough[k]) ** 2 for k in block]))}
    if not gibbs:  # the gibbs sampler's NUTS has the population block only
        inverse_mass[("w",)] = jnp.ones(2 * n)
    rng = np.random.default_rng(model.seed)
    chains = model.chains
    init = {k: jnp.asarray(centre[k] + 2.0 * rough[k] * rng.standard_normal(chains)) for k in block}
    init["w"] = jnp.asarray(rng.standard_normal((chains, n, 2)))
    if chains == 1:
        init = {k: v[0] for k, v in init.items()}
    # NUTS with the step-size probe: in the units' many near-standard coordinates a step size can fall in a U-turn
    # resonance that makes every tree up to ~30x longer (see nuts_step_probe). The gibbs sampler's NUTS has the five
    # population parameters only.
    kernel = (NUTS if gibbs else ProbedNUTS)(
        functools.partial(_binomial_model, priors=model.priors, loc=loc),
        target_accept_prob=model.target_accept,
        max_tree_depth=model.max_tree_depth,
        dense_mass=[block],
        inverse_mass_matrix=inverse_mass,
        # As for the gaussian family: Stan's shrinkage towards 1e-3 I would swamp the population parameters'
        # posterior variances, which shrink like 1 / units.
        regularize_mass_matrix=False,
    )
    # The approximations in single precision (see _binomial_model).
    kwargs = {"init_params": init, "q": jnp.asarray(laplace.q, jnp.float32), "r": jnp.asarray(laplace.r, jnp.float32)}
    layout = _binomial_layout(data, grid=gibbs)
    kwargs |= {k: jnp.asarray(v) for k, v in layout.items()}
    if gibbs:
        from learnpulse.engines.growth_gibbs import nuts_within_gibbs

        axes = {"q": 0, "r": 0, "y": 1, "trials": 1, "time": 1 if layout["time"].ndim == 2 else None}
        return nuts_within_gibbs(kernel, _unit_log_density_given, axes), kwargs
    return kernel, kwargs


def _unit_log_density_given(w: Any, population: Any, data: Any) -> Any:
    """One unit's ``log p(w_i | h, data_i)`` in :func:`_binomial_model`'s coordinates, up to a constant in ``w_i``
    (the change of variables' log Jacobian depends on ``h`` only): ``log N(c_i | b, Sigma) +`` the unit's binomial
    log likelihood, ``c_i`` from ``w_i`` (2,). ``population``: the constrained ``b0, b1, tau0, l10, l11``;
    ``data``: the unit's ``q`` (3,), ``r`` (2,), ``y``, ``trials`` and ``time`` (its grid column, or the shared
    times). For the gibbs sampler's units (:mod:`learnpulse.engines.growth_gibbs`), which vmaps it."""
    import jax.numpy as jnp

    from learnpulse.engines.binomial_loglik import grid_loglik

    f32 = jnp.float32
    h = {k: jnp.asarray(population[k], f32) for k in ("b0", "b1", "tau0", "l10", "l11")}
    c0, c1, _ = conditional_map(jnp, w[None].astype(f32), h, data["q"][None], data["r"][None])
    loglik = grid_loglik(c0, c1, data["time"][:, None], data["y"][:, None], data["trials"][:, None])
    return loglik[0] - 0.5 * units_squares(c0, c1, h)[0]


# The gibbs sampler's padded grid (most rows of a unit x units) is refused when one unit is an outlier, with more than
# GRID_OUTLIER_FACTOR times the rows of 99% of the units, and the grid exceeds GRID_FREE_CELLS: every cell is read at
# each sweep, so a grid mostly of one unit's padding costs time and memory for nothing. Sparse weekly data (units
# active in a few of the window's weeks, some in all) is not an outlier case and is laid out as before.
GRID_OUTLIER_FACTOR = 4
GRID_FREE_CELLS = 10_000_000


def _check_grid(data: GrowthData) -> None:
    """Refuse a padded grid made mostly of one outlying unit's padding; names the unit."""
    busiest = int(np.argmax(data.n_obs))
    most = int(data.n_obs[busiest])
    typical = float(np.quantile(data.n_obs, 0.99))
    cells = most * len(data.units)
    if most > GRID_OUTLIER_FACTOR * max(typical, 1.0) and cells > GRID_FREE_CELLS:
        raise _invalid(
            f"the gibbs sampler gives every unit as many rows as the unit with the most: unit "
            f"{_python_label(data.units[busiest])!r} has {most:,} rows where 99% of the units have at most "
            f"{typical:g}, a grid of {cells:,} cells for {len(data.code):,} rows; aggregate its rows, leave it out "
            "or use sampler='nuts'",
            "unit",
            "too_many_rows_for_gibbs",
        )


def _binomial_layout(data: GrowthData, *, grid: bool = False) -> dict[str, npt.NDArray[Any]]:
    """The rows for :func:`_binomial_model`, in as few bytes as they allow (the sampler reads them at every step).

    When every unit has rows at about the same times (weekly data: units x distinct times at most twice the rows):
    ``time`` (distinct times,) and ``y``, ``trials`` as (distinct times, units) matrices, zero where a unit has no
    row; rows of one unit at one time are added up, which leaves the likelihood unchanged (both are linear in
    ``(y, trials)`` at a given ``eta``). Otherwise the flat rows with each row's unit index ``code``, or, with
    ``grid`` (the gibbs sampler's units need one column each), a (most rows of a unit, units) grid of each unit's
    rows in turn with its own ``time`` grid, zero-padded. Counts are 16-bit integers when they fit (the sampler
    converts them as it reads), times single precision."""
    assert data.trials is not None
    n_units = len(data.units)
    times, column = np.unique(data.time, return_inverse=True)
    y: npt.NDArray[Any]
    trials: npt.NDArray[Any]
    out: dict[str, npt.NDArray[Any]]
    if n_units * len(times) <= 2 * len(data.code):
        cell = data.code * len(times) + column
        y, trials = (
            np.ascontiguousarray(np.bincount(cell, weights=v, minlength=n_units * len(times)).reshape(n_units, -1).T)
            for v in (data.y, data.trials)
        )
        out = {"time": times.astype(np.float32)}
    elif grid:
        _check_grid(data)
        order = np.argsort(data.code, kind="stable")
        code = data.code[order]
        slot = np.arange(len(code)) - np.searchsorted(code, code)  # the row's place among its unit's rows
        shape = (int(slot.max()) + 1, n_units)

        def padded(values: FloatArray) -> FloatArray:
            cells = np.zeros(shape)
            cells[slot, code] = values[order]
            return cells

        y, trials = padded(data.y), padded(data.trials)
        out = {"time": padded(data.time).astype(np.float32)}
    else:
        y, trials = data.y, data.trials
        out = {"time": data.time.astype(np.float32), "code": data.code}
    counts = np.int16 if float(trials.max()) <= np.iinfo(np.int16).max else np.float32
    return out | {"y": y.astype(counts), "trials": trials.astype(counts)}
