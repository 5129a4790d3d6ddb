"""Shared fixtures: a fresh, migrated database per test on SQLite and (when reachable) PostgreSQL.

PostgreSQL tests use ``LEARNPULSE_TEST_POSTGRES_URL`` (default: the local server's ``test`` database); each test
gets its own schema so parallel workers never see each other. Outside CI an unreachable server skips those tests
with a visible reason; with ``CI=true`` it is an error, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from learnpulse.store.db import make_engine
from learnpulse.store.schema import upgrade

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def postgres_url() -> str:
    return os.environ.get("LEARNPULSE_TEST_POSTGRES_URL", DEFAULT_PG)


def _postgres_reachable() -> str | None:
    """None when reachable, else the reason."""
    try:
        eng = create_engine(postgres_url(), connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL at {make_url(postgres_url()).render_as_string(hide_password=True)}: {exc}"


_PG_PROBLEM: str | bool | None = False  # False = not probed yet


def require_postgres() -> None:
    global _PG_PROBLEM  # noqa: PLW0603 - probe once per worker
    if _PG_PROBLEM is False:
        _PG_PROBLEM = _postgres_reachable()
    if _PG_PROBLEM:
        if IN_CI:
            pytest.fail(f"CI=true and PostgreSQL is not reachable: {_PG_PROBLEM}")
        pytest.skip(f"PostgreSQL not reachable: {_PG_PROBLEM}")


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL schema (dropped afterwards)."""
    require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(postgres_url()).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'learnpulse.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'learnpulse.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated, empty database on each backend."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()
