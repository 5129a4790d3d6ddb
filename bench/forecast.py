"""Benchmark: the fast forecast engine (vectorised MAP of prophet's model) against a plain loop of prophet.

Issue 6 target: 100,000 students in <= 10 minutes on 2 cores, i.e. >= 20x the plain loop of
``Prophet().fit(df)`` + ``predict`` (about 120 ms per student).

Data: ``--students`` synthetic weekly series of ``--weeks`` (12) points, generated here: per student an ability
``theta_w = theta0 + g w`` (a one-week drop of 2.5 with probability 3%), ``1 + Poisson(14)`` attempts a week,
``correct ~ Binomial(attempts, logistic(theta_w))``, the index ``100 (correct + 1) / (attempts + 2)``, and each week
missing with probability 10% (so lengths vary; series under ``min_points`` = 6 are skipped, as in the job).
With ``--answers`` the engine also gets each week's answers, as forecast-prophet gives it the IRT weeks' answers:
the index is then ``50 + 10 logit((correct + 0.5) / (attempts + 1))`` (the empirical logit, on the scale ``50 + 10
theta``) and each attempt is one answer to an item ``a = 0.1``, ``b = 50`` (``P = logistic(theta)`` on that scale),
so the anomaly rule judges each week by its answers' score and information (one answer row per attempt: about 15
per week, 1.6 million for 10,000 students).

Engine: ``BatchForecaster`` (fit, 4-week forecast with 80% intervals from 1,000 simulated paths, the anomaly rule
with its robust refit) mapping ``fit_chunk`` over chunks of ``--chunk-size`` students on a process pool of
``--workers`` processes. Each size runs in its own process (``common.phase``); peak RSS is reported for that driver
process (with the data) and for the largest pool worker.

Plain loop: ``Prophet(yearly/weekly/daily seasonality off).fit(df)`` then ``predict`` on the history plus 4 future
weeks, one series after the other in one process, timed on the first ``--sample`` (30) fitted series of the same
data, in the same run; the ratio is engine students/s over loop students/s (the loop on one core; a loop spread over
``--workers`` cores would at best be ``--workers`` times faster, also shown). On the sample the engine's
log-posterior and ``yhat`` are compared with prophet's.

    .venv/bin/python bench/forecast.py [--students 10000,100000] [--workers 2] [--chunk-size 5000] [--sample 30]
        [--answers]
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phase, row
from learnpulse.engines.forecast import BatchForecaster, ProphetForecaster

SEED = 20260601
START = np.datetime64("2026-03-02", "ns")


def simulate(students: int, weeks: int, seed: int = SEED, *, logit_index: bool = False) -> pd.DataFrame:
    """Long frame ``unit, ds, y, attempts, correct`` (see the module docstring; ``logit_index``: the ``--answers``
    index)."""
    rng = np.random.default_rng(seed)
    theta0 = rng.normal(0.0, 1.2, students)
    growth = rng.normal(0.05, 0.06, students)
    w = np.arange(weeks)
    theta = theta0[:, None] + growth[:, None] * w[None, :]
    theta += np.where(rng.random((students, weeks)) < 0.03, -2.5, 0.0)
    attempts = 1 + rng.poisson(14, (students, weeks))
    correct = rng.binomial(attempts, 1.0 / (1.0 + np.exp(-theta)))
    index = 100.0 * (correct + 1) / (attempts + 2)
    if logit_index:
        index = 50.0 + 10.0 * np.log((correct + 0.5) / (attempts - correct + 0.5))
    present = rng.random((students, weeks)) >= 0.10
    unit, week = np.nonzero(present)
    return pd.DataFrame(
        {
            "unit": unit.astype(np.int64) + 1,
            "ds": START + (7 * week).astype("timedelta64[D]"),
            "y": index[unit, week],
            "attempts": attempts[unit, week],
            "correct": correct[unit, week],
        }
    )


def answers_of(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per attempt of ``frame``'s weeks: ``unit, ds, a, b, correct`` (the first ``correct`` right)."""
    n = frame["attempts"].to_numpy()
    first = np.repeat(np.cumsum(n) - n, n)
    rank = np.arange(int(n.sum())) - first
    return pd.DataFrame(
        {
            "unit": np.repeat(frame["unit"].to_numpy(), n),
            "ds": np.repeat(frame["ds"].to_numpy(), n),
            "a": 0.1,
            "b": 50.0,
            "correct": (rank < np.repeat(frame["correct"].to_numpy(), n)).astype(np.float64),
        }
    )


def run_engine(students: int, weeks: int, workers: int, chunk_size: int, with_answers: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    frame = simulate(students, weeks, logit_index=with_answers)
    answers = answers_of(frame) if with_answers else None
    generate_s = time.perf_counter() - t0
    start = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            fast = BatchForecaster(chunk_size=chunk_size).fit(frame, answers=answers, map_fn=pool.map)
    else:
        fast = BatchForecaster(chunk_size=chunk_size).fit(frame, answers=answers)
    seconds = time.perf_counter() - start
    assert fast.fits_ is not None and fast.skipped_ is not None and fast.anomalies_ is not None
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers > 1 else 0.0
    return {
        "seconds": seconds,
        "generate_s": generate_s,
        "fitted": len(fast.fits_),
        "skipped": len(fast.skipped_),
        "anomalies": len(fast.anomalies_),
        "converged": float(fast.fits_["converged"].mean()),
        "iterations_max": int(fast.fits_["iterations"].max()),
        "worker_peak_mib": worker_peak,
    }


def run_prophet_loop(weeks: int, sample: int) -> dict[str, Any]:
    """The plain loop on the first ``sample`` series that the engine fits, plus the agreement figures."""
    from prophet import Prophet

    logging.getLogger("cmdstanpy").disabled = True
    frame = simulate(max(200, 4 * sample), weeks)
    counts = frame.groupby("unit").size()
    units = counts[counts >= 6].index[:sample].tolist()
    series = [frame[frame["unit"] == u][["ds", "y"]].reset_index(drop=True) for u in units]
    Prophet(yearly_seasonality=False, weekly_seasonality=False, daily_seasonality=False).fit(series[0])  # warm-up
    start = time.perf_counter()
    for df in series:
        m = Prophet(yearly_seasonality=False, weekly_seasonality=False, daily_seasonality=False)
        m.fit(df)
        m.predict(m.make_future_dataframe(periods=4, freq="7D"))
    seconds = time.perf_counter() - start
    # agreement on the same series (not timed)
    fast = BatchForecaster().fit(frame[frame["unit"].isin(units)])
    lp_gap, yhat_gap = [], []
    for u in units:
        s = frame[frame["unit"] == u]
        ref = ProphetForecaster(key=int(u)).fit(s["ds"], s["y"])
        mine = fast.model(u)
        assert ref.model_ is not None
        lp_gap.append(mine.log_posterior - ref.model_.log_posterior)
        both = np.abs(mine.predict()["yhat"].to_numpy() - ref.predict()["yhat"].to_numpy())
        yhat_gap.append(float(both.max() / mine.y_scale))
    return {
        "n": len(series),
        "seconds": seconds,
        "per_student_ms": 1000 * seconds / len(series),
        "lp_gap_min": float(min(lp_gap)),
        "lp_gap_max": float(max(lp_gap)),
        "yhat_gap_max": float(max(yhat_gap)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--students", default="10000,100000", help="comma-separated sizes")
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=5000)
    parser.add_argument("--sample", type=int, default=30, help="series in the plain prophet loop")
    parser.add_argument("--answers", action="store_true", help="give the engine each week's answers (see above)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.students.split(",") if s]

    loop, _wall, loop_peak = phase(run_prophet_loop, args.weeks, args.sample)
    loop_rate = 1000.0 / loop["per_student_ms"]
    print(
        f"plain prophet loop: {loop['n']} series in {loop['seconds']:.1f} s = {loop['per_student_ms']:.0f} ms/student "
        f"({loop_rate:.1f} students/s), peak {loop_peak:,.0f} MiB; engine vs prophet on them: log-posterior "
        f"{loop['lp_gap_min']:+.1e} .. {loop['lp_gap_max']:+.1e}, max |yhat diff| / y_scale {loop['yhat_gap_max']:.1e}",
        flush=True,
    )
    lines = [
        row(
            "students",
            "workers",
            "fitted / skipped",
            "engine s",
            "students/s",
            "x plain loop (1 core)",
            f"x loop on {args.workers} cores",
            "projected 100,000 s",
            "peak MiB driver / worker",
            "anomalies",
            "converged",
        ),
        row(*["---"] * 11),
    ]
    for n in sizes:
        res, _wall, peak = phase(run_engine, n, args.weeks, args.workers, args.chunk_size, args.answers)
        rate = n / res["seconds"]
        lines.append(
            row(
                f"{n:,}",
                args.workers,
                f"{res['fitted']:,} / {res['skipped']:,}",
                f"{res['seconds']:.1f}",
                f"{rate:,.0f}",
                f"{rate / loop_rate:,.0f}",
                f"{rate / (loop_rate * args.workers):,.0f}",
                f"{100_000 / rate:,.0f}",
                f"{peak:,.0f} / {res['worker_peak_mib']:,.0f}",
                f"{res['anomalies']:,}",
                f"{res['converged']:.4f} (max {res['iterations_max']} it.)",
            )
        )
        print(lines[-1], flush=True)
    judged = "judged by each week's answers" if args.answers else "judged on the index"
    print(f"\n## Forecast engine, {args.weeks}-point weekly series, 4-week forecast + anomalies ({judged})\n")
    print("\n".join(lines))
    print(
        f"\nplain loop: Prophet().fit + predict (history + 4 weeks), {loop['n']} series, "
        f"{loop['per_student_ms']:.0f} ms/student on one core. Target: 100,000 students <= 600 s on 2 cores "
        f"(>= 20x the plain loop)."
    )


if __name__ == "__main__":
    main()
