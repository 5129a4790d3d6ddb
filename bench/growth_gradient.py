"""Benchmark: one gradient of the binomial growth sampler's log density (issue 5), the step NUTS repeats ~63 times
per draw at 100,000 students x 12 weeks.

Compared in the same run, each in its own process (XLA reads its flags once, at start):
- ``ours``: the engine's model as it samples (engines/binomial_loglik.py: one row pass with its own gradient, counts
  on a units x weeks grid in 16 bits, per-unit arithmetic in single precision) under the XLA flags the engine sets;
- ``ours, YNN fusions on``: the same with XLA's default fusions;
- ``ours, the row pass alone``: only the likelihood's pass over the rows with its gradient (at the units' modes), the
  part no reparameterisation can remove: the rest of ``ours`` is the per-unit change of variables and the prior;
- ``autodiff``: the naive use of the library, the same model written plainly (NumPyro/JAX autodiff of
  ``y * eta - n * softplus(eta)`` in double precision over the flat rows, as a textbook model would be), with
  the engine's flags; and ``autodiff, YNN fusions on`` with XLA's defaults.
Also: NumPyro NUTS's leapfrog steps per draw on a standard normal of 2,000, 20,000 and 200,000 dimensions (the unit
coefficients of 1,000, 10,000 and 100,000 students; target acceptance 0.8, 300 warm-up + 200 draws): the number of
gradients a draw costs even when the reparameterisation is perfect. And NUTS's own cost per step at the sampler's
dimension (two per student), the gradient being free (a standard normal): NumPyro with one chain alone and two at
once, and nutpie (Rust NUTS, the other library issue 5 names) the same way when it is installed, its potential a
Python callback and, with numba installed, a compiled one (as nutpie's numba backend builds them). Times that figure
by the steps of 2 chains x 1,000 iterations and it is the floor of a fit before any gradient is computed.

Reported: milliseconds per gradient (median of 5 rounds of 20, after compilation), with one process on the machine
(XLA may then spread an operation over both cores) and with two processes at once (as the sampler's two chains
run, one per core), and the log density each computes (they must agree).

    .venv/bin/python bench/growth_gradient.py [--students 100000] [--weeks 12]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = {
    "ours": ("ours", True),
    "ours, YNN fusions on": ("ours", False),
    "ours, the row pass alone": ("rows", True),
    "autodiff": ("autodiff", True),
    "autodiff, YNN fusions on": ("autodiff", False),
}


def _autodiff_model(*, time: Any, y: Any, trials: Any, code: Any, q: Any, r: Any, priors: Any, loc: float) -> None:
    """The engine's model with the textbook likelihood: flat double-precision rows, JAX differentiates."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    from learnpulse.engines.growth import _hyper_sites, _units_log_density
    from learnpulse.engines.growth_laplace import conditional_map

    h = _hyper_sites(priors, loc, gaussian=False)
    w = numpyro.sample("w", dist.ImproperUniform(constraints.real, (), (q.shape[0], 2)))
    c0, c1, log_jacobian = conditional_map(jnp, w, h, q, r)
    numpyro.factor("units", _units_log_density(c0, c1, h) + log_jacobian)  # the engine's, in double here
    eta = c0[code] + c1[code] * time
    numpyro.factor("y", jnp.sum(y * eta - trials * jax.nn.softplus(eta)))


def measure(variant: str, engine_flags: bool, students: int, weeks: int) -> dict[str, float]:
    """Runs in a child process: ms per gradient and the log density. ``engine_flags=False`` keeps XLA's default
    fusions (the engine's ``_jax`` adds its flag only for the jaxlib versions it knows; it is told this is none)."""
    from growth import simulate  # bench/growth.py
    from learnpulse.engines import growth
    from learnpulse.engines.growth_laplace import unit_laplace

    if not engine_flags:
        growth._jaxlib_at_least = lambda major, minor: False
    jax = growth._jax()
    import jax.numpy as jnp
    from numpyro.infer.util import initialize_model

    frame = simulate(students, weeks)
    data = growth.prepare_data("binomial", frame["unit"], frame["time"], frame["correct"], frame["trials"])
    laplace = unit_laplace(data.code, data.time, data.y, data.trials, len(data.units), 0.0)
    model = growth.GrowthModel(family="binomial", iter=1000, chains=2)
    _, kwargs = growth._binomial_kernel(data, laplace, model, 0.0)
    init = {k: v[0] for k, v in kwargs.pop("init_params").items()}
    if variant in ("ours", "rows"):
        fn = functools.partial(growth._binomial_model, priors=model.priors, loc=0.0)
    else:
        fn = functools.partial(_autodiff_model, priors=model.priors, loc=0.0)
        kwargs = {"q": jnp.asarray(laplace.q), "r": jnp.asarray(laplace.r), "code": jnp.asarray(data.code)}
        kwargs |= {k: jnp.asarray(getattr(data, k)) for k in ("time", "y", "trials")}
    if variant == "rows":
        from learnpulse.engines.binomial_loglik import binomial_loglik

        rows = {k: kwargs[k] for k in ("time", "y", "trials")}
        grad = jax.jit(jax.value_and_grad(lambda c: -binomial_loglik(c[0], c[1], **rows, code=None)))
        init = jnp.asarray(laplace.mode.T, jnp.float32)
    else:
        info = initialize_model(jax.random.PRNGKey(0), fn, model_kwargs=kwargs, dynamic_args=False)
        grad = jax.jit(jax.value_and_grad(info.potential_fn))
    value, g = grad(init)
    jax.block_until_ready(g)
    rounds = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            value, g = grad(init)
        jax.block_until_ready(g)
        rounds.append((time.perf_counter() - started) / 20 * 1e3)
    return {"ms": float(np.median(rounds)), "log_density": -float(value)}


def _spawn(variant: str, engine_flags: bool, students: int, weeks: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # XLA as the sampler runs it
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import growth_gradient; "
        f"print(json.dumps(growth_gradient.measure({variant!r}, {engine_flags}, {students}, {weeks})))"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def _collect(processes: list[subprocess.Popen[str]]) -> list[dict[str, float]]:
    out = []
    for p in processes:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a measurement failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def nuts_steps(dims: int, chains: int = 1) -> dict[str, float]:
    """NumPyro NUTS on a ``dims``-dimensional standard normal, ``chains`` at once (one per core): mean leapfrog
    steps per draw, the adapted step size, and milliseconds per step of one chain in the 200 draws after the 300
    warm-up draws. The potential's gradient is ``x`` itself (~0.1 ms at 200,000): the time is NUTS's own work."""
    from learnpulse.engines import growth

    jax = growth._jax()
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    def potential(z: dict[str, Any]) -> Any:
        return 0.5 * jnp.sum(z["x"] * z["x"])

    mcmc = MCMC(
        NUTS(potential_fn=potential, target_accept_prob=0.8),
        num_warmup=300,
        num_samples=200,
        num_chains=chains,
        chain_method="parallel",
        progress_bar=False,
    )
    init = {"x": jnp.full((chains, dims) if chains > 1 else (dims,), 0.5)}
    mcmc.warmup(jax.random.PRNGKey(0), init_params=init)
    jax.block_until_ready(mcmc.last_state)
    started = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(1), extra_fields=("num_steps", "adapt_state.step_size"))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    steps = np.asarray(extra["num_steps"])  # waits for the run
    seconds = time.perf_counter() - started
    return {
        "steps": float(steps.mean()),
        "step_size": float(np.asarray(extra["adapt_state.step_size"])[:, -1].mean()),
        "ms_per_step": seconds / float(steps.sum(axis=1).max()) * 1e3,
    }


def nutpie_steps(dims: int, chains: int) -> dict[str, float] | None:
    """The same standard normal with nutpie's NUTS (Rust; the potential a NumPy callback), 300 warm-up + 200 draws
    per chain: mean steps per draw and milliseconds per step of one chain over the whole run. None when nutpie is
    not installed (it is not a dependency of learnpulse: ``pip install nutpie`` to include it)."""
    try:
        import nutpie
        from nutpie.compiled_pyfunc import from_pyfunc
    except ImportError:
        return None

    def make_logp() -> Any:
        return lambda x: (-0.5 * float(x @ x), -x)

    def make_expand(seed1: int, seed2: int, chain: int) -> Any:
        return lambda x: {"x0": x[:1].copy()}  # keep one coordinate: the draws of 200,000 would only cost memory

    model = from_pyfunc(dims, make_logp, make_expand, [np.dtype("float64")], [(1,)], ["x0"])
    return _nutpie_run(nutpie, model, chains)


def nutpie_compiled_steps(dims: int, chains: int) -> dict[str, float] | None:
    """The same standard normal with nutpie's NUTS and a compiled potential: a numba C callback, the form nutpie
    builds for PyMC models with its numba backend, so that no chain waits for the GIL. The model is assembled as
    nutpie's PyMC path assembles it (``nutpie.compile_pymc.CompiledPyMCModel``, an internal class: None when
    nutpie or numba is not installed or the class has changed). 300 warm-up + 200 draws per chain."""
    try:
        import numba
        import nutpie
        from nutpie.compile_pymc import CompiledPyMCModel
    except ImportError:
        return None
    kept = 1
    f64 = numba.types.CPointer(numba.types.double)

    @numba.cfunc(numba.types.int64(numba.types.uint64, f64, f64, f64, numba.types.voidptr), fastmath=True)
    def logp(dim: int, x_: Any, grad_: Any, logp_: Any, user_data: Any) -> int:
        x, grad, out = numba.carray(x_, (dims,)), numba.carray(grad_, (dims,)), numba.carray(logp_, (1,))
        total = 0.0
        for i in range(dims):
            total += x[i] * x[i]
            grad[i] = -x[i]
        out[0] = -0.5 * total
        return 0

    @numba.cfunc(numba.types.int64(numba.types.uint64, numba.types.uint64, f64, f64, numba.types.voidptr))
    def expand(dim: int, n_expanded: int, x_: Any, out_: Any, user_data: Any) -> int:
        numba.carray(out_, (kept,))[0] = numba.carray(x_, (dims,))[0]
        return 0

    try:
        model = CompiledPyMCModel(
            dims={},
            _n_dim=dims,
            _coords={},
            _shapes={"x0": (kept,)},
            compiled_logp_func=logp,
            compiled_expand_func=expand,
            # nutpie refuses a start whose gradient is zero, so not the origin
            initial_point_func=lambda seed: np.random.default_rng(seed).uniform(-2, 2, dims),
            shared_data={},
            user_data=np.zeros((), dtype=[("unused", np.uintp)]),
            n_expanded=kept,
            shape_info=(["x0"], [slice(0, kept)], [(kept,)]),
            logp_func=None,
            expand_func=None,
        )
    except TypeError:
        return None
    return _nutpie_run(nutpie, model, chains)


def _nutpie_run(nutpie: Any, model: Any, chains: int) -> dict[str, float]:
    """300 warm-up + 200 draws per chain, ``chains`` at once: mean steps per kept draw and milliseconds per step of
    one chain over the whole run (warm-up included)."""
    started = time.perf_counter()
    trace = nutpie.sample(model, draws=200, tune=300, chains=chains, cores=chains, seed=1, progress_bar=False)
    seconds = time.perf_counter() - started
    sampled = np.asarray(trace.sample_stats["n_steps"])
    total = sampled.sum(axis=1) + np.asarray(trace.warmup_sample_stats["n_steps"]).sum(axis=1)
    return {"steps": float(sampled.mean()), "ms_per_step": seconds / float(total.max()) * 1e3}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=100_000)
    parser.add_argument("--weeks", type=int, default=12)
    args = parser.parse_args(argv)
    print(f"## Binomial growth: one gradient of the log density, {args.students:,} students x {args.weeks} weeks\n")
    print("| variant | ms, one process | ms each, two processes at once | log density |")
    print("| --- | --- | --- | --- |")
    for label, (variant, engine_flags) in VARIANTS.items():
        (alone,) = _collect([_spawn(variant, engine_flags, args.students, args.weeks)])
        pair = _collect([_spawn(variant, engine_flags, args.students, args.weeks) for _ in range(2)])
        both = " / ".join(f"{m['ms']:.1f}" for m in pair)
        density = f"{alone['log_density']:,.3f}" + (" (the likelihood alone)" if variant == "rows" else "")
        print(f"| {label} | {alone['ms']:.1f} | {both} | {density} |")
    print("\n| dimensions (standard normal) | NUTS leapfrog steps per draw | step size | ms per step, one chain |")
    print("| --- | --- | --- | --- |")
    for dims in (2_000, 20_000, 200_000):
        found = nuts_steps(dims)
        print(f"| {dims:,} | {found['steps']:.1f} | {found['step_size']:.3f} | {found['ms_per_step']:.2f} |")
    dims = 2 * args.students
    print(f"\n### NUTS's own cost per leapfrog step at {dims:,} dimensions (gradient free: a standard normal)\n")
    print("| sampler | chains at once | steps per draw | ms per step of one chain | s for 2 x 1,000 iterations |")
    print("| --- | --- | --- | --- | --- |")
    rows: list[tuple[str, int, dict[str, float] | None]] = [("NumPyro NUTS", c, nuts_steps(dims, c)) for c in (1, 2)]
    rows += [("nutpie NUTS (Python potential)", c, nutpie_steps(dims, c)) for c in (1, 2)]
    rows += [("nutpie NUTS (compiled potential)", c, nutpie_compiled_steps(dims, c)) for c in (1, 2)]
    for label, chains, found in rows:
        if found is None:
            print(f"| {label} | {chains} | not available (nutpie / numba not installed) | | |")
            continue
        # 2 chains x 1,000 iterations at this many steps each: sequential with one chain at once, parallel with two
        total = found["ms_per_step"] * found["steps"] * 1_000 * (2 // chains) / 1e3
        print(f"| {label} | {chains} | {found['steps']:.1f} | {found['ms_per_step']:.2f} | {total:,.0f} |")


if __name__ == "__main__":
    main()
