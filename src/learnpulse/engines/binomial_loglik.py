"""The logit-link binomial log likelihood of a linear growth model, with its gradient computed in the same pass.

Inputs: per-unit coefficients ``c0, c1`` (units,) and the rows' ``time``, successes ``y`` and ``trials``, either on a
grid (``code=None``: ``y`` and ``trials`` (width, units), zero where there is no row, ``time`` (width,) shared by
all units or (width, units)) or flat with each row's unit index ``code``. Counts may be integers. The grid is
times-first so that every operation runs along the long, contiguous units axis and the per-unit sums add ``width``
rows of it (on XLA's CPU backend ~30% faster than reducing a units x width grid along its short rows).
Output: ``sum_rows [y eta - n log(1 + e^eta)]``, ``eta = c0[unit] + c1[unit] time`` (binomial coefficients left
out: they are constant). Gradient: ``d/dc0 = sum_rows (y - n p)``, ``d/dc1 = sum_rows (y - n p) time`` with
``p = logistic(eta)``.

Why not automatic differentiation: the binomial growth sampler evaluates this millions of times over every
(student, week) row, and there the row pass is the cost. Autodiff keeps ``eta`` and the softplus for a second pass
over the rows; here one ``exp(-|eta|)`` per row gives both the softplus and ``p``, and the per-unit score sums are
carried to the backward pass, which is then O(units). Rows are computed in single precision (XLA's double-precision
exp/log1p on CPU cost ~3x more) and summed per unit in single, across units in double: the rounding, ~1e-7 per
row, is far below the energy errors NUTS tolerates. Import only after :func:`learnpulse.engines.growth._jax` (it
sets XLA's flags before JAX starts).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _broadcast_time(time: Any, code: Any) -> Any:
    """The grid's times shared by every unit, (width,), as a column against its (width, units) rows."""
    return time[:, None] if code is None and time.ndim == 1 else time


def _rows(c0: Any, c1: Any, time: Any, y: Any, trials: Any, code: Any) -> tuple[Any, Any]:  # noqa: PLR0917
    """Per row: the log likelihood term and the score residual ``y - n p``, in single precision."""
    f32 = jnp.float32
    a, b, y, trials = c0.astype(f32), c1.astype(f32), y.astype(f32), trials.astype(f32)
    t = _broadcast_time(time, code)
    eta = a + b * t if code is None else a[code] + b[code] * t
    e = jnp.exp(-jnp.abs(eta))
    softplus = jnp.maximum(eta, 0.0) + jnp.log1p(e)  # log(1 + e^eta) without overflow
    p = jnp.where(eta >= 0, 1.0, e) / (1.0 + e)
    return y * eta - trials * softplus, y - trials * p


def _per_unit(values: Any, code: Any, n_units: int) -> Any:
    """Row values summed per unit: along the grid's rows, or by the flat rows' unit index."""
    if code is None:
        return jnp.sum(values, axis=0)
    return jax.ops.segment_sum(values, code, num_segments=n_units)


def _forward(  # noqa: PLR0917 - custom_vjp passes the primals positionally
    c0: Any, c1: Any, time: Any, y: Any, trials: Any, code: Any
) -> tuple[Any, tuple[Any, Any]]:
    terms, resid = _rows(c0, c1, time, y, trials, code)
    n_units = c0.shape[0]
    total = jnp.sum(_per_unit(terms, code, n_units).astype(jnp.float64))
    score0 = _per_unit(resid, code, n_units).astype(c0.dtype)
    score1 = _per_unit(resid * _broadcast_time(time, code), code, n_units).astype(c1.dtype)
    return total, (score0, score1)


def _backward(scores: tuple[Any, Any], cotangent: Any) -> tuple[Any, ...]:
    score0, score1 = scores  # in the coefficients' dtype, which their cotangents must keep
    g0, g1 = (cotangent * score0).astype(score0.dtype), (cotangent * score1).astype(score1.dtype)
    return g0, g1, None, None, None, None  # the data get no gradient


@jax.custom_vjp
def binomial_loglik(c0: Any, c1: Any, time: Any, y: Any, trials: Any, code: Any) -> Any:  # noqa: PLR0917
    """See the module docstring; the scalar is in double precision (JAX's x64 mode must be on)."""
    return _forward(c0, c1, time, y, trials, code)[0]


binomial_loglik.defvjp(_forward, _backward)


def grid_loglik(c0: Any, c1: Any, time: Any, y: Any, trials: Any) -> Any:
    """Per unit (units,), in single precision: the grid's log likelihood terms summed over each unit's rows, for
    steps that need no gradient (the gibbs sampler's Metropolis-Hastings proposals)."""
    return jnp.sum(_rows(c0, c1, time, y, trials, None)[0], axis=0)
