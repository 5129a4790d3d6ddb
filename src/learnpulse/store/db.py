"""Engines and transactions for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from learnpulse.errors import DatabaseUnavailableError


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout and explicit BEGIN so transactions are real."""
    if url.startswith("sqlite"):
        engine = create_engine(url, poolclass=NullPool, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache for big aggregations
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writers take the write lock up front (IMMEDIATE), so they never fail half-way on SQLITE_BUSY;
            # readers use a deferred BEGIN and read a WAL snapshot without blocking anyone.
            write = conn.get_execution_options().get("sqlite_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def is_sqlite(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "sqlite"


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction: everything inside commits together or not at all."""
    try:
        with engine.connect() as conn:
            conn.execution_options(sqlite_write=True)
            with conn.begin():
                yield conn
    except OperationalError as exc:
        if _is_connection_failure(exc):
            raise DatabaseUnavailableError(
                f"database unavailable: {safe_url(str(engine.url))}", {"reason": str(exc.orig)[:200]}
            ) from exc
        raise


def _is_connection_failure(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return any(s in text for s in ("connection", "could not connect", "unable to open", "server closed"))
