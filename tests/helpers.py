"""Small helpers for tests: load attempts as a new batch, read tables back as typed frames, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, insert, select

from learnpulse.jobs import REGISTRY
from learnpulse.jobs.runner import RunResult, run_job
from learnpulse.settings import load_settings
from learnpulse.store.bulk import insert_frame
from learnpulse.store.db import make_engine, transaction
from learnpulse.store.runs import now_utc
from learnpulse.store.schema import upgrade
from learnpulse.store.tables import attempt, ingest_batch, metadata
from learnpulse.store.world import save_world
from learnpulse.synthetic import World, WorldParams, generate_world

_next_id = iter(range(1, 10**9))


def attempts_frame(rows: list[tuple[int, int, bool, str, float | None]], first_id: int | None = None) -> pd.DataFrame:
    """rows: (user_id, topic_id, is_correct, answered_at ISO with zone, time_spent_s or None)."""
    ids = [first_id + i for i in range(len(rows))] if first_id is not None else [next(_next_id) for _ in rows]
    return pd.DataFrame(
        {
            "attempt_id": np.array(ids, dtype=np.int64),
            "user_id": np.array([r[0] for r in rows], dtype=np.int64),
            "item_id": np.array([r[1] * 100 + 1 for r in rows], dtype=np.int64),
            "topic_id": np.array([r[1] for r in rows], dtype=np.int64),
            "is_correct": np.array([r[2] for r in rows], dtype=bool),
            "answered_at": pd.to_datetime([r[3] for r in rows], utc=True, format="ISO8601").astype(
                "datetime64[us, UTC]"
            ),
            "time_spent_s": np.array([np.nan if r[4] is None else r[4] for r in rows], dtype=np.float64),
        }
    )


def load_batch(engine: Engine, frame: pd.DataFrame) -> int:
    """Append ``frame`` to attempt as a new ingest batch; returns the batch id."""
    with transaction(engine) as conn:
        batch_id = conn.execute(
            insert(ingest_batch)
            .values(kind="attempts", source="test", rows_in=len(frame), rows_added=len(frame), loaded_at=now_utc())
            .returning(ingest_batch.c.batch_id)
        ).scalar_one()
        insert_frame(conn, attempt, frame.assign(batch_id=batch_id))
    return int(batch_id)


def build_kpi(engine: Engine, as_of: date, tz: str = "Asia/Seoul", **options: Any) -> RunResult:
    settings = load_settings(database_url=str(engine.url.render_as_string(hide_password=False)), learnpulse_timezone=tz)
    return run_job(REGISTRY["build-kpi"], settings, engine, as_of=as_of, options=options)


def default_school(folder: Path, *jobs: str) -> tuple[Engine, World, date]:
    """The default synthetic world in a new SQLite database under ``folder``, build-kpi and then ``jobs`` (names)
    run as of its last day (a Sunday: every week of the world is complete); returns (engine, world, as-of date)."""
    world = generate_world(WorldParams())
    engine = make_engine(f"sqlite:///{folder / 'school.db'}")
    upgrade(engine)
    save_world(engine, world)
    as_of = world.params.end_date - timedelta(days=1)
    build_kpi(engine, as_of)
    for job in jobs:
        run_named(engine, job, as_of)
    return engine, world, as_of


def run_named(engine: Engine, job: str, as_of: date, **overrides: Any) -> RunResult:
    """Run the registered job ``job`` on ``engine`` as of ``as_of``, with settings overridden by ``overrides``."""
    settings = load_settings(database_url=engine.url.render_as_string(hide_password=False), **overrides)
    return run_job(REGISTRY[job], settings, engine, as_of=as_of)


def read_table(engine: Engine, name: str, order: list[str] | None = None) -> pd.DataFrame:
    table = metadata.tables[name]
    with engine.connect() as conn:
        query = select(table)
        if order:
            query = query.order_by(*[table.c[c] for c in order])
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(metadata.tables[name])).scalar_one())


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``learnpulse ARGS`` in a child process as a user would, with ``env`` added to this environment."""
    return subprocess.run(
        [sys.executable, "-m", "learnpulse.cli", *args],
        capture_output=True,
        check=False,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )
