"""NUTS that checks, at the end of warm-up, whether its step size sits in a U-turn resonance, and steps out of it.

**The problem.** When the (mass-matrix scaled) posterior is close to a standard normal in many dimensions, as the
binomial growth model's units are after their Laplace reparameterisation, every coordinate oscillates at about the
same frequency, so NUTS's trees have nearly the same length on every draw: ``2^k - 1`` leapfrog steps, ``k`` set by
the step size ``eps``. Just below each ``eps`` where the tree shortens (from 63 to 31 steps, say) lies a narrow band
in which the longer tree spans about one whole period of nearly every coordinate: its two ends move the same way
again, the U-turn check never fires, and trees grow to 511-1,023 steps. Measured with NumPyro's NUTS on a
40,000-dim normal with variances scattered by a factor ~1.2 around the mass matrix: 63 steps per draw for
``eps <= 0.0995``, 31 for ``eps >= 0.102``, and 390-520 in between. Dual averaging knows nothing of tree lengths
and ends inside such a band by chance: a 20,000-student binomial fit ran ~9x slower than usual because one chain's
warm-up ended at ``eps = 0.1016`` (525 steps per draw against the other chain's 31).

**The remedy.** Adaptation runs for all but the last ``2 * probe_draws`` warm-up iterations; those then run at the
adapted ``eps`` and at ``eps * (1 + nudge)``, ``probe_draws`` each. If the adapted step's trees were more than
``RESONANCE_RATIO`` (2.5) times as long as the nudged step's, sampling uses the nudged step, otherwise the adapted
one. An ordinary halving of the tree (63 -> 31 steps just above a switch) is a ratio of ~2 and is left alone: on
such targets the longer, near-antithetic trees give more effective draws per gradient for the population
parameters (at 100,000 binomial students, 31-step trees at target acceptance 0.6 halved the time but cut the
smallest hyper-parameter ESS 3.7x), so only a resonance (ratios 4-30 measured) is worth leaving. The band lies just
below a switch to shorter trees and is ~1.5% of ``eps`` wide, so a nudge of 4% leaves it. Every kept draw is an
ordinary NUTS transition at one fixed step size, so the chain targets the same posterior; only the step size may be
4% above dual averaging's (acceptance falls by ~0.01). With too little warm-up to spare (< ``MIN_WARMUP``) the
kernel is plain NUTS.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, cast

import jax.numpy as jnp
import numpy as np
from numpyro.infer import NUTS
from numpyro.infer.hmc import HMCState

PROBE_DRAWS = 8
NUDGE = 0.04
RESONANCE_RATIO = 2.5
MIN_WARMUP = 100

# NumPyro's HMC state plus the probe's summed tree lengths (adapted eps, nudged eps): MCMC reads fields by name.
ProbedState: Any = cast(Any, namedtuple)("ProbedState", (*HMCState._fields, "probe_steps"))


class ProbedNUTS(NUTS):  # type: ignore[misc]
    """``numpyro.infer.NUTS`` with the step-size probe above; takes NUTS's arguments plus ``probe_draws`` and
    ``nudge`` (``probe_draws=0``: plain NUTS). After a run, ``MCMC.last_state.probe_steps`` holds each chain's
    summed tree lengths at the adapted and at the nudged step size, and ``last_state.adapt_state.step_size`` the
    step size sampling used."""

    def __init__(self, *args: Any, probe_draws: int | None = None, nudge: float = NUDGE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # None: the module's PROBE_DRAWS when the kernel is made (the benchmark sets it to 0 for plain NUTS).
        self.probe_draws = PROBE_DRAWS if probe_draws is None else probe_draws
        self.nudge = nudge
        self._probe = 0
        self._adapt_end = 0

    def init(
        self,
        rng_key: Any,
        num_warmup: int,
        init_params: Any = None,
        model_args: tuple[Any, ...] = (),
        model_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        self._probe = self.probe_draws if num_warmup >= MIN_WARMUP else 0
        self._adapt_end = num_warmup - 2 * self._probe
        state = super().init(rng_key, self._adapt_end, init_params, model_args, model_kwargs or {})
        return ProbedState(*state, jnp.zeros((*jnp.shape(state.i), 2), jnp.float32))

    def sample(self, state: Any, model_args: Any, model_kwargs: Any) -> Any:
        start, k = self._adapt_end, self._probe
        i = state.i
        base = state.adapt_state.step_size
        in_a = (i >= start) & (i < start + k)
        in_b = (i >= start + k) & (i < start + 2 * k)
        nudged = base * (1 + self.nudge)
        step = jnp.where(in_b, nudged, base)
        inner = HMCState(*state[:-1])
        inner = inner._replace(adapt_state=inner.adapt_state._replace(step_size=step))
        new = super().sample(inner, model_args, model_kwargs)
        steps = new.num_steps.astype(jnp.float32)
        probe = state.probe_steps + jnp.stack([jnp.where(in_a, steps, 0.0), jnp.where(in_b, steps, 0.0)], axis=-1)
        switch = (i == start + 2 * k - 1) & _resonant(probe)
        # From `start` on the adaptation no longer touches the step size: keep the adapted one unless switching.
        after = jnp.where(i >= start, jnp.where(switch, nudged, base), new.adapt_state.step_size)
        new = new._replace(adapt_state=new.adapt_state._replace(step_size=after))
        return ProbedState(*new, probe)


def nudged_chains(state: Any) -> list[bool]:
    """Whether each chain of a finished :class:`ProbedNUTS` run sampled at the nudged step size."""
    return [bool(b) for b in _resonant(np.asarray(state.probe_steps).reshape(-1, 2))]


def _resonant(probe: Any) -> Any:
    """The switch rule, on summed tree lengths ``(..., 2)`` (adapted, nudged step), in JAX or NumPy: the adapted
    step's trees more than ``RESONANCE_RATIO`` times as long as the nudged step's."""
    return probe[..., 0] > RESONANCE_RATIO * probe[..., 1]
