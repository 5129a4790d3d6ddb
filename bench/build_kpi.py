"""Benchmark: generate + load, ingest, and build-kpi (full and incremental) on SQLite and PostgreSQL.

Default size: 50,000 students x 16 weeks (about 10 million attempts). Each phase runs in its own process so its
peak memory is its own. The naive baseline is the obvious pandas route (``read_sql`` of the attempts, ``groupby``
in pandas, ``to_sql`` of the results), run in the same session on a subset of students.

Targets (issue 2): build-kpi from scratch >= 300,000 attempts/s on each backend; an incremental run after one
more day of data < 5% of the full build's time; ingest of a 10-million-row file >= 200,000 rows/s on PostgreSQL.

    .venv/bin/python bench/build_kpi.py [--students 50000] [--weeks 16] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, fresh_database, phase, row
from learnpulse.ingest import ingest_attempts
from learnpulse.jobs import REGISTRY
from learnpulse.jobs.runner import run_job
from learnpulse.settings import load_settings
from learnpulse.store.db import make_engine
from learnpulse.store.schema import upgrade
from learnpulse.store.world import save_world
from learnpulse.synthetic import WorldParams, generate_world


def _world(students: int, weeks: int) -> Any:
    return generate_world(WorldParams(students=students, weeks=weeks, seed=7))


def _last_day(params: WorldParams) -> date:
    return params.start_date + timedelta(weeks=params.weeks) - timedelta(days=1)


HELD_BACK_DAYS = 2


def _split_last_days(world: Any) -> tuple[Any, list[pd.DataFrame]]:
    """The world without its last two local days, and each of those days' attempts (CSV files for ingest)."""
    local_day = world.attempts["answered_at"].dt.tz_convert(world.params.timezone).dt.date
    days = [_last_day(world.params) - timedelta(days=k) for k in reversed(range(HELD_BACK_DAYS))]
    held = local_day.isin(days)
    main = dataclasses.replace(world, attempts=world.attempts[~held].reset_index(drop=True))
    return main, [world.attempts[local_day == d] for d in days]


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pacsv.write_csv(table, path)
    return path


def phase_generate(students: int, weeks: int) -> dict[str, Any]:
    world = _world(students, weeks)
    _, held = _split_last_days(world)
    OUT.mkdir(exist_ok=True)
    for k, day in enumerate(held):
        _write_csv(day, OUT / f"held_day_{k}.csv")
    _write_csv(world.attempts, OUT / "attempts_all.csv")
    return {"attempts": len(world.attempts), "held": [len(d) for d in held], "students": students}


def phase_load(url: str, students: int, weeks: int) -> int:
    engine = make_engine(url)
    upgrade(engine)
    main, _ = _split_last_days(_world(students, weeks))
    save_world(engine, main)
    return len(main.attempts)


def phase_build(url: str, as_of: date, full: bool) -> dict[str, Any]:
    engine = make_engine(url)
    settings = load_settings(database_url=url)
    result = run_job(REGISTRY["build-kpi"], settings, engine, as_of=as_of, options={"full": full} if full else {})
    return dict(result.summary)


def phase_vacuum(url: str) -> None:
    """What autovacuum does soon after a bulk load on PostgreSQL (sets hint bits and the visibility map)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("VACUUM ANALYZE attempt, features_topic_daily, weekly_kpi")


def phase_ingest(url: str, path: Path) -> int:
    engine = make_engine(url)
    upgrade(engine)
    return int(ingest_attempts(engine, path).rows_added)


def phase_naive(url: str, students: int, tz: str) -> int:
    """The obvious pandas route on the first ``students`` students: read_sql, groupby, to_sql."""
    engine = make_engine(url)
    attempts = pd.read_sql(f"SELECT * FROM attempt WHERE user_id <= {students}", engine)
    if attempts["answered_at"].dtype.kind in "iu":  # SQLite keeps epoch microseconds
        attempts["answered_at"] = pd.to_datetime(attempts["answered_at"], unit="us", utc=True)
    attempts["answered_at"] = pd.to_datetime(attempts["answered_at"], utc=True)
    attempts["day"] = attempts["answered_at"].dt.tz_convert(tz).dt.date
    daily = (
        attempts.groupby(["user_id", "topic_id", "day"])
        .agg(attempts=("is_correct", "size"), correct=("is_correct", "sum"), time_spent_s=("time_spent_s", "sum"))
        .reset_index()
    )
    daily["week_start"] = [d - timedelta(days=d.weekday()) for d in daily["day"]]
    weekly = daily.groupby(["user_id", "week_start"]).agg(attempts=("attempts", "sum")).reset_index()
    daily.to_sql("naive_daily", engine, if_exists="replace", index=False, chunksize=50_000)
    weekly.to_sql("naive_weekly", engine, if_exists="replace", index=False, chunksize=50_000)
    return len(attempts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=50_000)
    parser.add_argument("--weeks", type=int, default=16)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--naive-students", type=int, default=5_000)
    args = parser.parse_args()
    params = WorldParams(students=args.students, weeks=args.weeks, seed=7)
    last_day = _last_day(params)

    info, gen_s, gen_mb = phase(phase_generate, args.students, args.weeks)
    n = info["attempts"]
    print(
        f"world: {args.students:,} students x {args.weeks} weeks = {n:,} attempts "
        f"({', '.join(f'{n:,}' for n in info['held'])} on the two held-back last days)"
    )
    print(f"generate (+ write CSV files): {gen_s:.1f} s, peak {gen_mb:,.0f} MiB")
    lines = [row("backend", "phase", "rows", "seconds", "rows/s", "peak MiB (client)", "note")]
    lines.append(row("---", "---", "---", "---", "---", "---", "---"))
    lines.append(row("-", "generate world + CSVs", f"{n:,}", f"{gen_s:.1f}", f"{n / gen_s:,.0f}", f"{gen_mb:,.0f}", ""))

    for backend in args.backends.split(","):
        url = fresh_database(backend, "kpi")
        loaded, load_s, load_mb = phase(phase_load, url, args.students, args.weeks)
        lines.append(
            row(
                backend,
                "generate + load world",
                f"{loaded:,}",
                f"{load_s:.1f}",
                f"{loaded / load_s:,.0f}",
                f"{load_mb:,.0f}",
                "one transaction",
            )
        )
        summary, full_s, full_mb = phase(phase_build, url, last_day - timedelta(days=HELD_BACK_DAYS), True)
        lines.append(
            row(
                backend,
                "build-kpi full",
                f"{loaded:,}",
                f"{full_s:.1f}",
                f"{loaded / full_s:,.0f}",
                f"{full_mb:,.0f}",
                f"target >= 300,000/s; {summary['daily_rows']:,} daily, {summary['weekly_rows']:,} weekly rows",
            )
        )
        for k, when in enumerate(("cold: right after the full build", "steady: after a vacuum")):
            if k == 1 and backend == "postgres":
                _, vac_s, _ = phase(phase_vacuum, url)
                lines.append(row(backend, "VACUUM ANALYZE (as autovacuum would)", "", f"{vac_s:.1f}", "", "", ""))
            added, day_s, _ = phase(phase_ingest, url, OUT / f"held_day_{k}.csv")
            lines.append(
                row(
                    backend,
                    f"ingest one day (CSV) #{k + 1}",
                    f"{added:,}",
                    f"{day_s:.1f}",
                    f"{added / day_s:,.0f}",
                    "",
                    "",
                )
            )
            as_of = last_day - timedelta(days=HELD_BACK_DAYS - 1 - k)
            summary, inc_s, inc_mb = phase(phase_build, url, as_of, False)
            lines.append(
                row(
                    backend,
                    f"build-kpi incremental (+1 day, {when})",
                    f"{added:,}",
                    f"{inc_s:.2f}",
                    "",
                    f"{inc_mb:,.0f}",
                    f"{100 * inc_s / full_s:.1f}% of full (target < 5%); {summary['students']:,} students",
                )
            )
        naive_rows, naive_s, naive_mb = phase(phase_naive, url, args.naive_students, params.timezone)
        lines.append(
            row(
                backend,
                f"naive pandas read_sql+groupby+to_sql ({args.naive_students:,} students)",
                f"{naive_rows:,}",
                f"{naive_s:.1f}",
                f"{naive_rows / naive_s:,.0f}",
                f"{naive_mb:,.0f}",
                f"build-kpi is {loaded / full_s / (naive_rows / naive_s):.1f}x faster per attempt",
            )
        )
        ingest_url = fresh_database(backend, "ingest")
        rows_in, ing_s, ing_mb = phase(phase_ingest, ingest_url, OUT / "attempts_all.csv")
        target = " (target >= 200,000/s)" if backend == "postgres" else ""
        lines.append(
            row(
                backend,
                "ingest attempts CSV into empty db",
                f"{rows_in:,}",
                f"{ing_s:.1f}",
                f"{rows_in / ing_s:,.0f}",
                f"{ing_mb:,.0f}",
                f"validate + stage + merge{target}",
            )
        )
        for line in lines[-9:]:
            print(line, flush=True)

    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
