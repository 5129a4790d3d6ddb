"""The model jobs end to end on the 50,000-student databases that bench/build_kpi.py leaves behind.

calibrate-irt, forecast-prophet, cluster-segments and fit-bayesian-growth as of the world's last day, in the order
the demo runs them (each reads what the one before wrote), each in its own process with its peak memory; the
survival jobs are timed by bench/survival.py. Usage:

    .venv/bin/python bench/build_kpi.py                 # once: builds bench/out/kpi.db and the bench_kpi_* schema
    .venv/bin/python bench/model_jobs.py [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import phase, row
from learnpulse.synthetic import WorldParams
from survival import kpi_database, run_named_job

JOBS = ("calibrate-irt", "forecast-prophet", "cluster-segments", "fit-bayesian-growth")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args(argv)
    as_of = WorldParams(students=50_000, weeks=16, seed=7).end_date - timedelta(days=1)
    lines = [row("backend", "job", "seconds", "peak MiB (client)", "summary"), row(*["---"] * 5)]
    for backend in args.backends.split(","):
        url = kpi_database(backend)
        for name in JOBS:
            summary, seconds, peak = phase(run_named_job, url, name, as_of)
            brief = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))[:200]
            lines.append(row(backend, name, f"{seconds:.1f}", f"{peak:,.0f}", brief))
            print(lines[-1], flush=True)
    print(f"\n## Model jobs, 50,000 students x 16 weeks, as of {as_of}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
