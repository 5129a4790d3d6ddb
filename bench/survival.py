"""Benchmark: the Cox proportional-hazards engine against lifelines' CoxPHFitter on the same data.

Engine part (issue: survival): a simulated Cox model, 1,000,000 rows x 10 covariates by default, with known
coefficients, durations rounded up to whole days (ties, as churn durations are) and about 30% censoring. Each fit
runs in its own process (``common.phase``) so its peak memory is its own (it includes the simulated data). Reported:
fit time, peak RSS, iterations, the speed ratio and the largest absolute coefficient difference on the same data.
Our fit time includes the training concordance (Harrell's C over all rows); lifelines computes it lazily.
If lifelines takes more than ``--subset-after`` seconds (default 600) at full size, both are also fitted on the first
``--subset-rows`` rows and reported, labelled, as well.

    .venv/bin/python bench/survival.py [--rows 1000000] [--covariates 10] [--durations days|continuous]
                                       [--skip-lifelines]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phase, row
from learnpulse.engines.survival import CoxPH

SEED = 20240611
BASE_HAZARD_PER_DAY = 0.005
FOLLOW_UP_DAYS = 730


def true_coefficients(covariates: int) -> np.ndarray:
    return np.linspace(-0.5, 0.5, covariates)


def simulate(
    rows: int, covariates: int, durations: str, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """``h(t | x) = 0.005/day * exp(beta . x)``; every third covariate binary (p = 0.3), the others N(0, 1);
    administrative censoring uniform on (1, 730] days: about 30% censored."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, covariates))
    binary = np.arange(covariates) % 3 == 2
    x[:, binary] = (rng.random((rows, int(binary.sum()))) < 0.3).astype(float)
    lp = x @ true_coefficients(covariates)
    event_time = rng.exponential(1.0, rows) / (BASE_HAZARD_PER_DAY * np.exp(lp))
    censor_time = rng.uniform(1.0, FOLLOW_UP_DAYS, rows)
    if durations == "days":
        event_time, censor_time = np.ceil(event_time), np.ceil(censor_time)
    time_ = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(float)
    frame = pd.DataFrame(x, columns=[f"x{j + 1}" for j in range(covariates)])
    return time_, event, frame


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def fit_engine(rows: int, covariates: int, durations: str, subset: int | None) -> dict[str, Any]:
    t, e, x = simulate(rows, covariates, durations)
    if subset is not None:
        t, e, x = t[:subset], e[:subset], x.iloc[:subset]
    data_mib = _rss_mib()
    start = time.perf_counter()
    model = CoxPH().fit(t, e, x)
    seconds = time.perf_counter() - start
    assert model.coef_ is not None
    return {
        "coef": model.coef_.copy(),
        "seconds": seconds,
        "data_mib": data_mib,
        "n_iter": model.n_iter_,
        "events": model.events_,
        "distinct_times": len(np.unique(t)),
        "concordance": model.concordance_,
    }


def fit_lifelines(rows: int, covariates: int, durations: str, subset: int | None) -> dict[str, Any]:
    from lifelines import CoxPHFitter

    t, e, x = simulate(rows, covariates, durations)
    if subset is not None:
        t, e, x = t[:subset], e[:subset], x.iloc[:subset]
    df = x.assign(T=t, E=e)
    del x
    data_mib = _rss_mib()
    start = time.perf_counter()
    fitter = CoxPHFitter().fit(df, "T", "E")
    seconds = time.perf_counter() - start
    return {"coef": fitter.params_.to_numpy().copy(), "seconds": seconds, "data_mib": data_mib, "n_iter": None}


def _run(fn: Any, rows: int, covariates: int, durations: str, subset: int | None) -> tuple[dict[str, Any], float]:
    result, _wall, peak_mib = phase(fn, rows, covariates, durations, subset)
    return result, peak_mib


def _compare(
    label: str, ours: dict[str, Any], ours_peak: float, ref: dict[str, Any] | None, ref_peak: float, *, n: int, p: int
) -> list[str]:
    truth = true_coefficients(p)
    lines = [
        row(
            f"learnpulse CoxPH ({label})",
            f"{n:,}",
            p,
            f"{ours['events']:,}",
            f"{ours['distinct_times']:,}",
            f"{ours['seconds']:.2f}",
            f"{ours_peak:,.0f} ({ours['data_mib']:,.0f})",
            ours["n_iter"],
            "1.00",
            f"{np.max(np.abs(ours['coef'] - truth)):.4f}",
            "",
        )
    ]
    if ref is not None:
        lines.append(
            row(
                f"lifelines CoxPHFitter ({label})",
                f"{n:,}",
                p,
                f"{ours['events']:,}",
                f"{ours['distinct_times']:,}",
                f"{ref['seconds']:.2f}",
                f"{ref_peak:,.0f} ({ref['data_mib']:,.0f})",
                "",
                f"{ref['seconds'] / ours['seconds']:.2f}",
                f"{np.max(np.abs(ref['coef'] - truth)):.4f}",
                f"{np.max(np.abs(ours['coef'] - ref['coef'])):.2e}",
            )
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--covariates", type=int, default=10)
    parser.add_argument("--durations", choices=["days", "continuous"], default="days")
    parser.add_argument("--skip-lifelines", action="store_true")
    parser.add_argument("--subset-rows", type=int, default=200_000)
    parser.add_argument("--subset-after", type=float, default=600.0, help="seconds of lifelines at full size")
    args = parser.parse_args(argv)
    n, p = args.rows, args.covariates

    print(f"## Survival engine: Cox PH, {n:,} rows x {p} covariates, durations: {args.durations}\n")
    ours, ours_peak = _run(fit_engine, n, p, args.durations, None)
    ref, ref_peak = (None, 0.0)
    if not args.skip_lifelines:
        ref, ref_peak = _run(fit_lifelines, n, p, args.durations, None)
    header = [
        row(
            "fit",
            "rows",
            "covariates",
            "events",
            "distinct times",
            "fit s",
            "peak RSS MiB (after data)",
            "iterations",
            "lifelines s / ours s",
            "max abs(coef - truth)",
            "max abs(coef ours - lifelines)",
        ),
        row(*["---"] * 11),
    ]
    lines = header + _compare("full", ours, ours_peak, ref, ref_peak, n=n, p=p)
    if ref is not None and ref["seconds"] > args.subset_after and args.subset_rows < n:
        m = args.subset_rows
        sub_ours, sub_ours_peak = _run(fit_engine, n, p, args.durations, m)
        sub_ref, sub_ref_peak = _run(fit_lifelines, n, p, args.durations, m)
        lines += _compare(f"first {m:,} rows", sub_ours, sub_ours_peak, sub_ref, sub_ref_peak, n=m, p=p)
    print("\n".join(lines))
    print(
        "\nfit s: CoxPH.fit / CoxPHFitter.fit only (ours includes the training concordance); peak RSS: the fitting "
        "process, with the simulated data (RSS after simulating it in parentheses)."
    )


if __name__ == "__main__":
    main()
