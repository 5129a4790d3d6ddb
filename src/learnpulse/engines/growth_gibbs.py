"""NUTS-within-Gibbs for models with many conditionally independent units near standard normal (the binomial growth
model's ``BRMS_SAMPLER=gibbs``): NumPyro NUTS on the population, BlackJAX's independence Metropolis-Hastings on
every unit, composed by NumPyro's ``Gibbs``.

**Why.** Joint NUTS over the binomial growth model's 2 x units coefficients needs trees of ~63 leapfrog steps per
draw whatever their geometry (an exact standard normal of 200,000 dimensions needs as many), each a pass over every
row: 765 s at 100,000 students x 12 weeks (bench/RESULTS.md). Given the population ``h``, though, the units are
independent, and in their Laplace coordinates ``w_i`` (:mod:`learnpulse.engines.growth_laplace`) each conditional is
close to ``N(0, I)``, so an independence proposal from a slightly wider distribution is accepted most of the time and
every accepted draw is a fresh, independent one. A sweep then costs one NUTS transition on the five population
parameters (~6 leapfrog steps, each a pass over the rows) and ``proposals + 1`` gradient-free passes for the units.

**The sweep** (one Markov transition leaving the joint posterior invariant; the model, priors and posterior are
the joint sampler's):

1. units: for each unit independently, ``proposals`` (1) steps of ``blackjax.irmh`` targeting ``p(w_i | h, data_i)``
   (the model's own conditional, supplied per unit as ``unit_log_density``) with a bivariate Student-t(``df``)
   proposal. Tails heavier than the target's keep the importance weights ``p / q`` bounded, so no unit can stick
   (with normal proposals a few did: at 100,000 students the units' smallest tail ESS was 43); ~85% are accepted;
2. population: one transition of NumPyro NUTS given the units (dense mass matrix and step size adapted in warm-up,
   exactly as NumPyro adapts any NUTS).

**An iteration is ``sweeps`` (2) sweeps** (both in warm-up, whose adaptation schedule is stretched to match, and in
sampling): what ``BRMS_ITER`` counts stays the number of kept draws plus warm-up. With one sweep (and two unit steps)
per iteration the population slope's R-hat reached 1.0136 in 2 of 9 runs at 100,000 students (tail ESS ~800 but the
chains' spreads 13% apart, the first quarter of the draws under-dispersed); doubling the warm-up or the sampling
sweeps each brought that run to 1.0033 / 1.0059; with two sweeps of one unit step each, six seeds gave 0.9997-1.0043
in ~200 s (bench/RESULTS.md).

**Diagnostics** (read with :func:`gibbs_stats`): the population block's divergences and leapfrog steps per sweep,
and the units' mean Metropolis-Hastings acceptance rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import NUTS
from numpyro.infer.gibbs import GIBBS_SITES_KWARG, CustomGibbs, Gibbs

# log p(w_i | h, data_i) up to a constant in w_i: one unit's coordinates (2,), the population's constrained values,
# and the unit's slice of every per-unit data array.
UnitLogDensity = Callable[[Any, Mapping[str, Any], Mapping[str, Any]], Any]

PROPOSALS = 1  # Metropolis-Hastings steps per unit and sweep
DF = 4  # the proposal's degrees of freedom (even: see student_t_proposal)
SWEEPS = 2  # sweeps per iteration


class UnitsState(NamedTuple):
    """The units block's state: its site values ``z``, the key, and the mean acceptance rate of its last sweep."""

    z: dict[str, Any]
    rng_key: Any
    acceptance: Any


def student_t_proposal(df: int, dim: int) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    """A ``dim``-variate Student-t(``df``) with identity scale: a draw ``z sqrt(df / chi2_df)`` from a key, and its
    log density ``-(df + dim) / 2 log(1 + |w|^2 / df)`` (constant dropped) as BlackJAX's
    ``proposal_logdensity_fn(new_state, previous_state)``, which its Metropolis-Hastings ratio uses as
    ``log q(previous | new)``: for an independence proposal, the density at the *previous* state. (At the new state
    the chain targets ``p q^2 / ...`` instead: on N(0, 1) with N(1, 4) proposals its draws had mean 0.33, variance 0.66;
    tests/test_growth_gibbs.py checks the moments.)"""

    if df < 2 or df % 2:
        raise ValueError(f"the proposal's degrees of freedom must be even and >= 2 (got {df})")

    def draw(key: Any) -> Any:
        # One call for every uniform a proposal needs: under vmap each unit has its own key, and the per-key random
        # calls (splits, then normal, then uniform) cost more than the rest of the sweep. Normals by Box-Muller
        # (pairs); chi2 with an even df as -2 sum log U over df / 2 uniforms. Uniforms in (0, 1): log 0 excluded.
        pairs = (dim + 1) // 2
        dtype = jnp.result_type(float)  # float64 with JAX's x64 mode on, else float32
        u = jax.random.uniform(key, (2 * pairs + df // 2,), dtype, minval=np.finfo(dtype).tiny)
        radius = jnp.sqrt(-2.0 * jnp.log(u[:pairs]))
        angle = 2.0 * jnp.pi * u[pairs : 2 * pairs]
        normal = jnp.concatenate([radius * jnp.cos(angle), radius * jnp.sin(angle)])[:dim]
        return normal * jnp.sqrt(df / (-2.0 * jnp.sum(jnp.log(u[2 * pairs :]))))

    def log_density(new_state: Any, previous_state: Any) -> Any:
        del new_state
        w = previous_state.position
        return -0.5 * (df + dim) * jnp.log1p(jnp.sum(w * w) / df)

    return draw, log_density


class UnitsIRMH(CustomGibbs):  # type: ignore[misc]  # NumPyro is untyped
    """A :class:`numpyro.infer.gibbs.Gibbs` block for ``site`` (units, dim): ``proposals`` steps of
    ``blackjax.irmh`` per unit, the units vmapped. ``unit_axes`` names the model's keyword arguments a unit needs
    and the axis along which each runs over the units (``None``: shared). The data reach the update as arguments of
    the compiled sweep, not as constants: closed over, XLA folded them as constants and at 100,000 units did not
    finish compiling in 15 minutes."""

    def __init__(
        self,
        site: str,
        unit_log_density: UnitLogDensity,
        unit_axes: Mapping[str, int | None],
        *,
        proposals: int = PROPOSALS,
        df: int = DF,
    ) -> None:
        super().__init__(self._update)  # CustomGibbs wants a callable; this block's own sample calls _update
        self._site = site
        self._log_density = unit_log_density
        self._axes = dict(unit_axes)
        self._proposals = proposals
        self._df = df

    def init(self, rng_key: Any, num_warmup: int, init_params: Any, model_args: Any, model_kwargs: Any) -> UnitsState:
        state = super().init(rng_key, num_warmup, init_params, model_args, model_kwargs)
        return UnitsState(state.z, state.rng_key, jnp.zeros(()))

    def _update(self, key: Any, w: Any, population: Mapping[str, Any], data: Mapping[str, Any]) -> tuple[Any, Any]:
        """Every unit's ``proposals`` steps: new ``w`` and the mean acceptance rate."""
        import blackjax

        draw, proposal_log_density = student_t_proposal(self._df, w.shape[-1])
        per_unit = {k: data[k] for k in self._axes}

        def one_unit(key: Any, w_i: Any, data_i: Mapping[str, Any]) -> tuple[Any, Any]:
            def target(x: Any) -> Any:
                return self._log_density(x, population, data_i)

            irmh = blackjax.irmh(target, draw, proposal_log_density)
            state = irmh.init(w_i)
            accepted = jnp.zeros(())
            for k in jax.random.split(key, self._proposals):
                state, info = irmh.step(k, state)
                accepted = accepted + info.is_accepted
            return state.position, accepted / self._proposals

        keys = jax.random.split(key, w.shape[0])
        new, accepted = jax.vmap(one_unit, in_axes=(0, 0, self._axes))(keys, w, per_unit)
        return new.astype(w.dtype), jnp.mean(accepted)

    def sample(self, state: Any, model_args: Any, model_kwargs: Any) -> UnitsState:
        rng_key, key = jax.random.split(state.rng_key)
        w, acceptance = self._update(key, state.z[self._site], model_kwargs[GIBBS_SITES_KWARG], model_kwargs)
        return UnitsState({self._site: w}, rng_key, acceptance)


class SweepsState(NamedTuple):
    """:class:`numpyro.infer.gibbs.GibbsState` and, over the last iteration's sweeps, the divergent transitions and
    leapfrog steps of the NUTS block (the last block), and the units block's (the first) mean acceptance rate."""

    z: dict[str, Any]
    block_states: tuple[Any, ...]
    rng_key: Any
    divergences: Any = None
    steps: Any = None
    acceptance: Any = None


class SweepsGibbs(Gibbs):  # type: ignore[misc]  # NumPyro is untyped
    """:class:`numpyro.infer.gibbs.Gibbs` whose iteration is ``sweeps`` sweeps over its blocks; the blocks' warm-up
    (their adaptation schedules) spans ``sweeps`` times the warm-up iterations, so that it covers the whole warm-up.
    Its state adds the NUTS block's divergences and steps summed over the iteration's sweeps and the units' acceptance
    rate averaged over them (a block state holds only its last transition's)."""

    _state_cls = SweepsState

    def __init__(self, blocks: Any, sweeps: int = SWEEPS) -> None:
        super().__init__(blocks)
        self._sweeps = sweeps

    def init(self, rng_key: Any, num_warmup: int, init_params: Any, model_args: Any, model_kwargs: Any) -> Any:
        state = super().init(rng_key, num_warmup * self._sweeps, init_params, model_args, model_kwargs)
        zero = jnp.zeros((), jnp.int32)
        return state._replace(divergences=zero, steps=zero, acceptance=jnp.zeros((), jnp.result_type(float)))

    def sample(self, state: Any, model_args: Any, model_kwargs: Any) -> Any:
        divergences = steps = jnp.zeros((), jnp.int32)
        acceptance = jnp.zeros((), jnp.result_type(float))
        for _ in range(self._sweeps):
            state = super().sample(state, model_args, model_kwargs)
            nuts = state.block_states[-1]
            divergences = divergences + nuts.diverging.astype(jnp.int32)
            steps = steps + nuts.num_steps.astype(jnp.int32)
            acceptance = acceptance + state.block_states[0].acceptance.astype(acceptance.dtype)
        return state._replace(divergences=divergences, steps=steps, acceptance=acceptance / self._sweeps)


def nuts_within_gibbs(
    population: NUTS,
    unit_log_density: UnitLogDensity,
    unit_axes: Mapping[str, int | None],
    *,
    site: str = "w",
    proposals: int = PROPOSALS,
    df: int = DF,
    sweeps: int = SWEEPS,
) -> SweepsGibbs:
    """The sampler (see the module docstring): the units' block on ``site``, then ``population`` (NUTS over the
    same model, which samples every other site). Run it with ``MCMC`` and ``extra_fields=GIBBS_FIELDS``; the
    initial values are the model's (``site`` as is, the population unconstrained)."""
    units = UnitsIRMH(site, unit_log_density, unit_axes, proposals=proposals, df=df)
    return SweepsGibbs([(units, [site]), (population, None)], sweeps=sweeps)


# What MCMC should record per iteration for gibbs_stats (scalars only: the units' block state would copy every
# unit's draws once more).
GIBBS_FIELDS = ("divergences", "steps", "acceptance")


def gibbs_stats(fields: Mapping[str, Any], last_state: Any) -> dict[str, Any]:
    """What the sampler did, from ``MCMC.get_extra_fields()`` (recorded with :data:`GIBBS_FIELDS`) and
    ``MCMC.last_state``: the population NUTS's divergent transitions (every sweep of the kept iterations) and mean
    leapfrog steps per kept iteration, each chain's population step size, the units' mean acceptance rate (every
    sweep of the kept iterations)."""
    population = last_state.block_states[1]
    return {
        "divergences": int(np.asarray(fields["divergences"]).sum()),
        "mean_leapfrog_steps": float(np.asarray(fields["steps"]).mean()),
        "step_size": [float(s) for s in np.atleast_1d(np.asarray(population.adapt_state.step_size))],
        "units_acceptance": float(np.asarray(fields["acceptance"]).mean()),
    }
