"""Shared benchmark plumbing: fresh databases, child-process phases with their own peak memory, reporting."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

OUT = Path(__file__).resolve().parent / "out"
POSTGRES_URL = os.environ.get("LEARNPULSE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fresh_database(backend: str, name: str) -> str:
    """URL of an empty database: a new SQLite file under bench/out, or a new PostgreSQL schema."""
    OUT.mkdir(exist_ok=True)
    if backend == "sqlite":
        path = OUT / f"{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}"
    schema = f"bench_{name}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        for (old,) in conn.execute(text(f"SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_{name}_%'")):
            conn.execute(text(f'DROP SCHEMA "{old}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def school_database(url: str, params: Any) -> tuple[Any, Any, date]:
    """The synthetic world of ``params`` (a ``WorldParams``) stored in the empty database ``url`` and build-kpi run
    as of its last day; returns (engine, world, as-of date). learnpulse is imported here, not at module level, so a
    script's parent process stays light when this runs in a :func:`phase` child."""
    from learnpulse.jobs import REGISTRY
    from learnpulse.jobs.runner import run_job
    from learnpulse.settings import load_settings
    from learnpulse.store.db import make_engine
    from learnpulse.store.schema import upgrade
    from learnpulse.store.world import save_world
    from learnpulse.synthetic import generate_world

    engine = make_engine(url)
    upgrade(engine)
    world = generate_world(params)
    save_world(engine, world)
    as_of: date = params.end_date - timedelta(days=1)
    settings = load_settings(database_url=url, learnpulse_timezone=params.timezone)
    run_job(REGISTRY["build-kpi"], settings, engine, as_of=as_of)
    return engine, world, as_of


def _child(fn: Callable[..., Any], args: tuple[Any, ...], queue: Any) -> None:
    start = time.perf_counter()
    try:
        result = fn(*args)
        queue.put(("ok", result, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
    except BaseException as exc:
        queue.put(("error", repr(exc), time.perf_counter() - start, 0))
        raise


def phase(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Run ``fn(*args)`` in a fresh process; return (result, seconds, peak RSS in MiB of that process)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    status, result, seconds, peak_kib = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark phase {fn.__name__} failed: {result}")
    return result, seconds, peak_kib / 1024


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
