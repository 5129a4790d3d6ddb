"""Shared benchmark plumbing: fresh databases, child-process phases with their own peak memory, reporting."""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
import uuid
from collections.abc import Callable
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
