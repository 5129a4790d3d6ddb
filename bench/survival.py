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
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, POSTGRES_URL, phase, row
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


def run_named_job(url: str, name: str, as_of: date) -> dict[str, Any]:
    from learnpulse.jobs import REGISTRY
    from learnpulse.jobs.runner import run_job
    from learnpulse.settings import load_settings
    from learnpulse.store.db import make_engine

    result = run_job(REGISTRY[name], load_settings(database_url=url), make_engine(url), as_of=as_of)
    return {"rows_written": result.rows_written, **result.summary}


def kpi_database(backend: str) -> str:
    """The database bench/build_kpi.py built (50,000 students, build-kpi done up to the world's last day)."""
    if backend == "sqlite":
        path = OUT / "kpi.db"
        if not path.exists():
            raise SystemExit("run bench/build_kpi.py first: it leaves the 50,000-student database in bench/out")
        return f"sqlite:///{path}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    with create_engine(POSTGRES_URL).connect() as conn:
        schema = conn.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_kpi_%' ORDER BY nspname LIMIT 1")
        ).scalar()
    if schema is None:
        raise SystemExit("run bench/build_kpi.py first: it leaves the 50,000-student schema bench_kpi_*")
    return (
        make_url(POSTGRES_URL)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )


def time_jobs(backends: list[str]) -> None:
    """fit-survival-churn then detect-inactivity as of the world's last day, each in its own process."""
    from learnpulse.synthetic import WorldParams

    as_of = WorldParams(students=50_000, weeks=16, seed=7).end_date - timedelta(days=1)
    lines = [row("backend", "job", "seconds", "peak MiB (client)", "summary"), row(*["---"] * 5)]
    for backend in backends:
        url = kpi_database(backend)
        total = 0.0
        for name in ("fit-survival-churn", "detect-inactivity"):
            summary, seconds, peak = phase(run_named_job, url, name, as_of)
            total += seconds
            brief = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))[:160]
            lines.append(row(backend, name, f"{seconds:.1f}", f"{peak:,.0f}", brief))
        lines.append(row(backend, "**both** (target <= 60 s)", f"{total:.1f}", "", "met" if total <= 60 else "missed"))
        print("\n".join(lines[-3:]), flush=True)
    print("\n## fit-survival-churn + detect-inactivity, 50,000 students x 16 weeks\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--covariates", type=int, default=10)
    parser.add_argument("--durations", choices=["days", "continuous"], default="days")
    parser.add_argument("--skip-lifelines", action="store_true")
    parser.add_argument("--subset-rows", type=int, default=200_000)
    parser.add_argument("--subset-after", type=float, default=600.0, help="seconds of lifelines at full size")
    parser.add_argument(
        "--jobs",
        default="",
        help="also time fit-survival-churn + detect-inactivity on these backends (e.g. sqlite,postgres), on the "
        "50,000-student databases that bench/build_kpi.py leaves behind",
    )
    parser.add_argument("--skip-engine", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs:
        time_jobs(args.jobs.split(","))
    if args.skip_engine:
        return
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
