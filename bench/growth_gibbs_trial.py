"""Study (issue 5, the 100,000-student binomial target): the binomial growth model sampled by NUTS-within-Gibbs,
with an independence Metropolis-Hastings update of the units, against the engine's joint NUTS.

Not the engine's sampler: issue 5 asks for NUTS over the whole model and no hand-written sampler, and the units'
update here is hand-written. It measures option (b) of the issue note so that its owner can decide on figures: the
joint NUTS takes ~765 s at 100,000 binomial students x 12 weeks (bench/RESULTS.md), the target is 300 s.

Sampler: NumPyro's ``Gibbs`` composite over the engine's own binomial model (``growth._binomial_model``: the units'
coefficients in per-unit Laplace coordinates ``w``, the same priors and likelihood) with two blocks:

- the population ``h = (b0, b1, tau0, l10, l11)``: NumPyro NUTS given the units (its dense mass matrix and step size
  adapted in warm-up, as the engine's population block);
- the units ``w``: given ``h`` they are independent, and each ``w_i``'s conditional is near ``N(0, I)`` (what the
  Laplace coordinates are for), so each unit gets ``--proposals`` independence Metropolis-Hastings steps with a
  bivariate Student-t proposal of ``--df`` degrees of freedom (tails heavier than the target's keep the importance
  weights bounded; with normal proposals a few units stuck and the slope's R-hat was 1.017 at 100,000). Each step
  leaves the unit's conditional exactly invariant and costs one pass over the rows without a gradient.

Data: ``bench/growth.py``'s simulation (trials 5-40 a week, known truth). Printed per size: total seconds (data
layout, Laplace start, compilation, sampling, unit moments, diagnostics: what ``GrowthModel.fit`` counts) and
sampling seconds; the hyper-parameters' max R-hat and min bulk / tail ESS, the units' (over both coefficients of every
unit) max R-hat, share above 1.01 and min bulk / tail ESS; the posterior means; and, up to ``--compare-max``
students, the engine's fit of the same data and how far apart the two posteriors are (hyper-parameter means in
engine posterior SDs; every unit's coefficient means in its posterior SD, and the ratio of the posterior SDs).

    .venv/bin/python bench/growth_gibbs_trial.py [--students 2000,100000] [--compare-max 20000] [--df 4]
                                                 [--proposals 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import row
from growth import CHAINS, ITER, TRUTH, simulate
from learnpulse.engines import growth
from learnpulse.engines.growth_laplace import conditional_map, unit_laplace
from learnpulse.engines.mcmc_diagnostics import chain_diagnostics

HYPER = ("Intercept", "time", "sd(Intercept)", "sd(time)", "cor(Intercept,time)")


def unit_update(df: int, proposals: int) -> Any:
    """The units' Gibbs update: ``proposals`` independence Metropolis-Hastings steps per unit with a bivariate
    Student-t(``df``) proposal, ``df`` even (its chi-square is then ``-2 sum log U`` of ``df / 2`` uniforms)."""
    import jax
    import jax.numpy as jnp

    from learnpulse.engines.binomial_loglik import _rows

    f32 = jnp.float32

    def minus_log_weight(w: Any, h: dict[str, Any], data: dict[str, Any]) -> Any:
        """Per unit: -(log conditional density - log proposal density), constants dropped (the log Jacobian of
        the Laplace coordinates depends on ``h`` only, so it cancels in the ratio)."""
        c0, c1, _ = conditional_map(jnp, w, h, data["q"], data["r"])
        loglik = jnp.sum(_rows(c0, c1, data["time"], data["y"], data["trials"], None)[0], axis=0)
        log_proposal = -0.5 * (df + 2) * jnp.log1p(jnp.sum(w * w, axis=-1) / df)
        return 0.5 * growth.units_squares(c0, c1, h) - loglik + log_proposal

    def uniform(key: Any, shape: tuple[int, ...]) -> Any:
        """U(0, 1) without 0 (float32 draws hit 0 about once in 2^23, and log 0 would put an atom in the proposal)."""
        return jax.random.uniform(key, shape, f32, minval=jnp.finfo(f32).tiny)

    def update(rng_key: Any, gibbs_sites: dict[str, Any], hmc_sites: dict[str, Any], data: dict[str, Any]) -> Any:
        h = {k: jnp.asarray(hmc_sites[k], f32) for k in ("b0", "b1", "tau0", "l10", "l11")}
        w = gibbs_sites["w"].astype(f32)
        current = minus_log_weight(w, h, data)
        for key in jax.random.split(rng_key, proposals):
            k_normal, k_chi, k_accept = jax.random.split(key, 3)
            chi2 = -2.0 * jnp.sum(jnp.log(uniform(k_chi, (df // 2, w.shape[0]))), axis=0)
            proposal = jax.random.normal(k_normal, w.shape, f32) * jnp.sqrt(df / chi2)[:, None]
            new = minus_log_weight(proposal, h, data)
            accept = jnp.log(uniform(k_accept, current.shape)) < current - new
            w = jnp.where(accept[:, None], proposal, w)
            current = jnp.where(accept, new, current)
        return {"w": w.astype(gibbs_sites["w"].dtype)}

    return update


def gibbs_kernel(update: Any, population: Any) -> Any:
    """NumPyro's Gibbs with the units' ``update`` first and NUTS ``population`` on the rest. The update receives the
    model's keyword arguments (the data) as traced arguments: closed over, XLA folds them as constants, which at
    100,000 students did not finish compiling in 15 minutes."""
    from jax import random
    from numpyro.infer.gibbs import GIBBS_SITES_KWARG, CustomGibbs, Gibbs

    class DataGibbs(CustomGibbs):
        def sample(self, state: Any, model_args: Any, model_kwargs: Any) -> Any:
            rng_key, key_update = random.split(state.rng_key)
            z = self._gibbs_fn(key_update, state.z, model_kwargs[GIBBS_SITES_KWARG], model_kwargs)
            return state._replace(z=z, rng_key=rng_key)

    return Gibbs([(DataGibbs(update), ["w"]), (population, None)])


def fit_gibbs(d: Any, seed: int, df: int, proposals: int) -> dict[str, Any]:
    """The NUTS-within-Gibbs fit of ``correct | trials ~ time + (time | unit)``: figures as :func:`summarise`."""
    jax = growth._jax()
    from numpyro.infer import MCMC, NUTS

    started = time.perf_counter()
    model = growth.GrowthModel("binomial", iter=ITER, chains=CHAINS, seed=seed)
    data = growth.prepare_data("binomial", d["unit"], d["time"], d["correct"], d["trials"])
    assert data.trials is not None
    laplace = unit_laplace(data.code, data.time, data.y, data.trials, len(data.units), 0.0)
    engine_kernel, kwargs = growth._binomial_kernel(data, laplace, model, 0.0)
    if "code" in kwargs:
        raise SystemExit("the study needs the weeks x students grid (every student answering most weeks)")
    block = ("b0", "b1", "l10", "l11", "tau0")
    population = NUTS(
        functools.partial(growth._binomial_model, priors=model.priors, loc=0.0),
        dense_mass=[block],
        inverse_mass_matrix={block: engine_kernel._inverse_mass_matrix[block]},
        regularize_mass_matrix=False,  # as the engine's (see growth._binomial_kernel)
    )
    init = kwargs.pop("init_params")
    half = ITER // 2
    mcmc = MCMC(
        gibbs_kernel(unit_update(df, proposals), population),
        num_warmup=half,
        num_samples=half,
        num_chains=CHAINS,
        chain_method="parallel",
        progress_bar=False,
    )
    sampling = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), init_params=init, extra_fields=("block_states",), **kwargs)
    raw = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    sampling = time.perf_counter() - sampling
    states = mcmc.get_extra_fields(group_by_chain=True)["block_states"][1]
    samples = {k: np.array(v, dtype=np.float64) for k, v in raw.items()}
    del mcmc, raw, kwargs
    hyper = growth.by_brms_name(samples)
    draws = growth._binomial_unit_draws(samples, laplace)
    mean, cov = growth._draw_moments(draws.reshape(-1, len(data.units), 2))
    out = summarise(hyper, draws, mean, cov)
    growth._release_compiled(jax)
    out |= {
        "seconds": time.perf_counter() - started,
        "sampling": sampling,
        "divergences": int(np.asarray(states.diverging).sum()),
        "population_steps": float(np.asarray(states.num_steps).mean()),
    }
    return out


def summarise(hyper: dict[str, Any], draws: Any, mean: Any, cov: Any) -> dict[str, Any]:
    """Hyper-parameter and unit diagnostics, posterior means and SDs, and the units' moments."""
    stacked = np.stack([hyper[k] for k in HYPER], axis=-1)
    diag = chain_diagnostics(stacked)
    units = chain_diagnostics(draws.reshape(*draws.shape[:2], -1))
    flat = stacked.reshape(-1, len(HYPER))
    return {
        "max_rhat": float(diag["rhat"].max()),
        "worst": HYPER[int(np.argmax(diag["rhat"]))],
        "min_ess_bulk": float(diag["ess_bulk"].min()),
        "min_ess_tail": float(diag["ess_tail"].min()),
        "units_max_rhat": float(np.nanmax(units["rhat"])),
        "units_share": float(np.mean(units["rhat"] > 1.01)),
        "units_min_ess_bulk": float(np.nanmin(units["ess_bulk"])),
        "units_min_ess_tail": float(np.nanmin(units["ess_tail"])),
        "means": flat.mean(axis=0),
        "sds": flat.std(axis=0, ddof=1),
        "unit_mean": mean,
        "unit_sd": np.sqrt(np.stack([cov[:, 0, 0], cov[:, 1, 1]], axis=1)),
    }


def fit_engine(d: Any, seed: int) -> dict[str, Any]:
    """The engine's joint NUTS on the same data: the same figures."""
    model = growth.GrowthModel("binomial", iter=ITER, chains=CHAINS, seed=seed)
    model.fit(d["unit"], d["time"], d["correct"], d["trials"])
    assert model.diagnostics_ is not None and model.hyper_draws_ is not None
    assert model.coef_mean_ is not None and model.coef_cov_ is not None
    diag = model.diagnostics_
    fixed = model.fixed_effects()
    return {
        "seconds": diag["seconds"],
        "sampling": float("nan"),
        "divergences": diag["divergences"],
        "max_rhat": diag["max_rhat"],
        "worst": str(fixed["rhat"].idxmax()),
        "min_ess_bulk": diag["min_ess_bulk"],
        "min_ess_tail": diag["min_ess_tail"],
        "units_max_rhat": diag["units_max_rhat"],
        "units_share": diag["units_share_rhat_above_1_01"],
        "units_min_ess_bulk": diag["units_min_ess_bulk"],
        "units_min_ess_tail": diag["units_min_ess_tail"],
        "means": fixed.loc[list(HYPER), "estimate"].to_numpy(),
        "sds": fixed.loc[list(HYPER), "est_error"].to_numpy(),
        "unit_mean": model.coef_mean_,
        "unit_sd": np.sqrt(np.stack([model.coef_cov_[:, 0, 0], model.coef_cov_[:, 1, 1]], axis=1)),
        "population_steps": diag["mean_leapfrog_steps"],
    }


def line(label: str, students: int, r: dict[str, Any]) -> str:
    return row(
        label,
        f"{students:,}",
        f"{r['seconds']:.1f}",
        "" if np.isnan(r["sampling"]) else f"{r['sampling']:.1f}",
        f"{r['max_rhat']:.4f} ({r['worst']})",
        f"{r['min_ess_bulk']:.0f} / {r['min_ess_tail']:.0f}",
        f"{r['units_max_rhat']:.4f}, {r['units_share']:.1%} > 1.01",
        f"{r['units_min_ess_bulk']:.0f} / {r['units_min_ess_tail']:.0f}",
        str(r["divergences"]),
        ", ".join(f"{m:.4f}" for m in r["means"]),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--students", default="2000,100000", help="comma-separated sizes")
    parser.add_argument("--compare-max", type=int, default=20_000, help="fit the engine too up to this size")
    parser.add_argument("--df", type=int, default=4, help="the proposal's degrees of freedom (even)")
    parser.add_argument("--proposals", type=int, default=2, help="Metropolis-Hastings steps per unit and iteration")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.df < 2 or args.df % 2:
        parser.error("--df must be an even number >= 2")
    print(f"truth: {', '.join(f'{k} {v}' for k, v in TRUTH.items())}; iter {ITER}, chains {CHAINS}")
    print(
        row(
            "sampler",
            "students",
            "total s",
            "sampling s",
            "max R-hat",
            "min ESS bulk / tail",
            "units max R-hat",
            "units min ESS bulk / tail",
            "divergences",
            "means (" + ", ".join(HYPER) + ")",
        )
    )
    print(row(*["---"] * 10))
    for students in (int(s) for s in args.students.split(",")):
        d = simulate(students, 12)
        ours = fit_gibbs(d, args.seed, args.df, args.proposals)
        print(line(f"Gibbs (t{args.df}, {args.proposals} proposals)", students, ours), flush=True)
        if students > args.compare_max:
            continue
        theirs = fit_engine(d, args.seed)
        print(line("engine (joint NUTS)", students, theirs), flush=True)
        hyper_gap = np.abs(ours["means"] - theirs["means"]) / theirs["sds"]
        unit_gap = (ours["unit_mean"] - theirs["unit_mean"]) / theirs["unit_sd"]
        ratio = ours["unit_sd"] / theirs["unit_sd"]
        rms = float(np.sqrt(np.mean(unit_gap**2)))
        print(
            f"  apart: hyper means max {hyper_gap.max():.3f} engine SDs; unit means rms {rms:.3f}"
            f" / max {np.abs(unit_gap).max():.3f} SDs; unit SD ratio mean {ratio.mean():.4f}"
            f" (1-99%: {np.quantile(ratio, 0.01):.3f}-{np.quantile(ratio, 0.99):.3f}); population NUTS steps per"
            f" draw {ours['population_steps']:.1f} (engine, all: {theirs['population_steps']:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
