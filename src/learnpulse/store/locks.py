"""Per-job locks so two runs of one job never interleave.

PostgreSQL: a session-level advisory lock on a dedicated connection (released if the process dies). SQLite: an
OS file lock beside the database file (released if the process dies); in-memory databases use a process lock.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import Engine, text

from learnpulse.errors import JobLockedError

_PROCESS_LOCKS: dict[str, threading.Lock] = {}


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock`` derived from the lock name."""
    return int.from_bytes(hashlib.sha256(f"learnpulse:{name}".encode()).digest()[:8], "big", signed=True)


def _busy(name: str, waited: float) -> JobLockedError:
    return JobLockedError(
        f"job {name!r} is already running (its lock is held); waited {waited:g}s. "
        "Wait for it to finish or set LEARNPULSE_LOCK_WAIT_SECONDS to wait longer.",
        {"job": name, "waited_seconds": waited},
    )


@contextmanager
def job_lock(engine: Engine, name: str, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the lock named ``name`` for the block, waiting up to ``wait_seconds``; else raise JobLockedError."""
    if engine.dialect.name == "postgresql":
        with _postgres_lock(engine, name, wait_seconds):
            yield
        return
    database = engine.url.database
    if database and database != ":memory:":
        path = Path(database).resolve()
        lock = FileLock(str(path.with_name(f"{path.name}.{name}.lock")))
        try:
            lock.acquire(timeout=wait_seconds if wait_seconds > 0 else 0)
        except Timeout:
            raise _busy(name, wait_seconds) from None
        try:
            yield
        finally:
            lock.release()
        return
    plock = _PROCESS_LOCKS.setdefault(name, threading.Lock())
    acquired = plock.acquire(timeout=wait_seconds) if wait_seconds > 0 else plock.acquire(blocking=False)
    if not acquired:
        raise _busy(name, wait_seconds)
    try:
        yield
    finally:
        plock.release()


@contextmanager
def _postgres_lock(engine: Engine, name: str, wait_seconds: float) -> Iterator[None]:
    with engine.connect() as conn:
        # Advisory locks are per database; key them by schema too, so learnpulse instances that share a
        # database in different schemas (and parallel test runs) do not block each other.
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        key = advisory_key(f"{schema}:{name}")
        deadline = time.monotonic() + wait_seconds
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one():
            if time.monotonic() >= deadline:
                conn.rollback()
                raise _busy(name, wait_seconds)
            time.sleep(0.2)
        conn.commit()  # end the probe's transaction; the session-level lock stays until unlocked
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
