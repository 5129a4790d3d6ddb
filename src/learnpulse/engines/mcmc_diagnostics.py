"""Rank-normalised split R-hat and bulk / tail effective sample sizes for many parameters at once.

The definitions are Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), computed exactly as ArviZ computes
them (``arviz.rhat(method="rank")``, ``arviz.ess(method="bulk" | "tail")``; ``tests/test_mcmc_diagnostics.py``
holds every figure against ArviZ to 1e-9):

- split each chain in halves; z-scale = ``Phi^-1((rank - 3/8) / (S + 1/4))`` of the pooled draws' ranks;
- R-hat = max(split R-hat of the z-scaled draws, of the z-scaled draws folded around their median), with
  ``R = sqrt((B / W + n - 1) / n)``;
- ESS = ``S / tau``, ``tau = -1 + 2 sum rho_t`` over Geyer's initial monotone sequence of the combined
  autocorrelations (FFT autocovariances); bulk: of the z-scaled split draws; tail: the smaller of the ESS of the
  indicators ``x <= q05`` and ``x <= q95``.

ArviZ loops in Python over parameters (and over lags for the sequence); with 200,000 unit coefficients that took
minutes, so here every step works on arrays of parameters, in chunks that bound the memory, one chunk per core at
a time; one sort per chunk gives the ranks, the median and the tail quantiles. 200,000 parameters x 2 chains x 500
draws: 42 s on 2 cores (105 s with one pass at a time, ``scipy.stats.rankdata`` and ``ndtri`` of every draw).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
from scipy.fft import irfft, next_fast_len, rfft
from scipy.special import ndtri

FloatArray = npt.NDArray[np.float64]
_CHUNK = 4096  # parameters per pass: ~0.2 GB of temporaries at 2 x 1,000 draws (one pass per core at once)


def _split(x: FloatArray) -> FloatArray:
    """(params, chains, n) -> (params, 2 chains, n // 2): first and last halves (the middle draw dropped if odd)."""
    half = x.shape[2] // 2
    return np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half :]], axis=1)


def _normal_scores(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Normal scores of the ranks of each parameter's pooled draws (average ranks for ties), and the pooled draws
    sorted (params, chains * n). One sort serves both: a run of equal values at sorted positions ``s..e`` (0-based)
    has the average rank ``(s + e) / 2 + 1``, as ``scipy.stats.rankdata``; untied draws take their score from one
    table of ``S`` values (``ndtri`` of every draw and ``rankdata`` cost several times more)."""
    flat = x.reshape(len(x), -1)
    size = flat.shape[1]
    order = np.argsort(flat, axis=1)
    ordered = np.take_along_axis(flat, order, axis=1)
    position = np.broadcast_to(np.arange(size), flat.shape)

    def score(rank: FloatArray) -> FloatArray:
        return np.asarray(ndtri((rank - 3.0 / 8.0) / (size + 1.0 / 4.0)), dtype=np.float64)

    scores = np.broadcast_to(score(np.arange(1.0, size + 1.0)), flat.shape).copy()
    changes = np.diff(ordered, axis=1) != 0
    if not changes.all():
        edge = np.ones((len(flat), 1), dtype=bool)
        start = np.maximum.accumulate(np.where(np.hstack([edge, changes]), position, 0), axis=1)
        end = np.minimum.accumulate(np.where(np.hstack([changes, edge]), position, size - 1)[:, ::-1], axis=1)
        end = end[:, ::-1]
        tied = start != end
        scores[tied] = score((start[tied] + end[tied]) / 2.0 + 1.0)
    out = np.empty_like(flat)
    np.put_along_axis(out, order, scores, axis=1)
    return out.reshape(x.shape), ordered


def _median(ordered: FloatArray) -> FloatArray:
    """``np.median`` of each row of already sorted values (the two middle values' mean when their count is even)."""
    size = ordered.shape[1]
    middle = ordered[:, size // 2]
    return middle if size % 2 else (ordered[:, size // 2 - 1] + middle) / 2.0


def _quantiles(ordered: FloatArray, q: float) -> FloatArray:
    """``np.quantile(..., q)`` (linear interpolation) of each row of already sorted values."""
    position = (ordered.shape[1] - 1) * q
    low = math.floor(position)
    high = min(low + 1, ordered.shape[1] - 1)
    below, above = ordered[:, low], ordered[:, high]
    return np.asarray(below + (above - below) * (position - low), dtype=np.float64)


def _rhat(x: FloatArray) -> FloatArray:
    """Potential scale reduction of (params, chains, n): ``sqrt((B / W + n - 1) / n)``, ``B = n Var(chain means)``."""
    n = x.shape[2]
    between = n * x.mean(axis=2).var(axis=1, ddof=1)
    within = x.var(axis=2, ddof=1).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.sqrt((between / within + n - 1) / n), dtype=np.float64)


def _autocov(x: FloatArray) -> FloatArray:
    """Autocovariances at every lag along the last axis (biased, divided by n), by FFT."""
    n = x.shape[-1]
    centred = x - x.mean(axis=-1, keepdims=True)
    spectrum = rfft(centred, n=next_fast_len(2 * n), axis=-1)
    return np.asarray(irfft(spectrum * np.conjugate(spectrum), axis=-1)[..., :n] / n, dtype=np.float64)


def _ess(x: FloatArray) -> FloatArray:
    """Effective sample size of (params, chains, n) by Geyer's initial monotone sequence (as ``arviz``'s ``_ess``).

    With pair sums ``S_k = rho_2k + rho_2k+1``, the sequence stops at the first ``k`` with ``S_k <= 0`` (or at the
    series' end); ``tau = -1 + 2 sum_{k < K} min(S_0..S_k) + rho_2K`` (the last even term kept when positive or when
    its pair sum is exactly 0)."""
    p, chains, n = x.shape
    size = chains * n
    acov = _autocov(x)
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if chains > 1:
        var_plus = var_plus + x.mean(axis=2).var(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    limit = max(0, math.ceil((n - 4) / 2))  # iterations the sequential loop may run
    pairs = rho[:, 0 : 2 * (limit + 1) : 2] + rho[:, 1 : 2 * (limit + 1) : 2]  # S_0 .. S_limit
    stops = pairs[:, :limit] <= 0.0
    first = stops.argmax(axis=1) if limit else np.zeros(p, dtype=np.int64)
    k = np.where(stops.any(axis=1), first, limit)  # K: pairs 0..K-1 enter the sum
    rows = np.arange(p)
    running = np.minimum.accumulate(pairs, axis=1)
    summed = np.where(np.arange(pairs.shape[1])[None, :] < k[:, None], running, 0.0).sum(axis=1)
    last_even = rho[rows, 2 * k]
    kept = (last_even > 0.0) | ((k >= 1) & (pairs[rows, k] >= 0.0))
    tau = -1.0 + 2.0 * summed + np.where(kept, last_even, 0.0)
    tau = np.maximum(tau, 1.0 / math.log10(size))
    ess = size / tau
    ess[~np.isfinite(tau) | ~np.isfinite(var_plus) | (var_plus == 0)] = np.nan
    constant = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < np.finfo(np.float64).resolution
    ess[constant] = size
    return np.asarray(ess, dtype=np.float64)


def _chunk(x: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """R-hat, bulk ESS and tail ESS of one (params, chains, n) block."""
    split = _split(x)
    bulk_z, ordered = _normal_scores(split)
    folded = np.abs(split - _median(ordered)[:, None, None])
    rhat = np.maximum(_rhat(bulk_z), _rhat(_normal_scores(folded)[0]))
    if x.shape[1] < 2:
        rhat = np.full(len(x), np.nan)  # as ArviZ: R-hat needs two chains
    if ordered.shape[1] != x.shape[1] * x.shape[2]:  # an odd draw count: the split dropped the middle draws
        ordered = np.sort(x.reshape(len(x), -1), axis=1)
    tail = np.minimum(
        _ess(_split((x <= _quantiles(ordered, 0.05)[:, None, None]).astype(np.float64))),
        _ess(_split((x <= _quantiles(ordered, 0.95)[:, None, None]).astype(np.float64))),
    )
    return rhat, _ess(bulk_z), tail


def chain_diagnostics(draws: npt.ArrayLike) -> dict[str, FloatArray]:
    """Input: draws shaped (chains, draws, parameters). Output: ``rhat``, ``ess_bulk``, ``ess_tail`` per parameter
    (NaN where undefined: fewer than 4 draws, or R-hat with one chain)."""
    arr = np.asarray(draws, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"draws must be (chains, draws, parameters), got shape {arr.shape}")
    _, n, p = arr.shape
    out = {k: np.full(p, np.nan) for k in ("rhat", "ess_bulk", "ess_tail")}
    if n < 4:
        return out

    def fill(start: int) -> None:
        block = np.ascontiguousarray(np.moveaxis(arr[:, :, start : start + _CHUNK], 2, 0))
        for key, values in zip(("rhat", "ess_bulk", "ess_tail"), _chunk(block), strict=True):
            out[key][start : start + _CHUNK] = values

    starts = range(0, p, _CHUNK)
    workers = min(len(starts), os.cpu_count() or 1)
    if workers < 2:
        for start in starts:
            fill(start)
        return out
    # NumPy's sorts and ufuncs and SciPy's FFTs release the GIL: chunks on threads use every core.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(fill, starts))
    return out
