"""The migrations create exactly the tables the code defines, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from learnpulse.store.db import make_engine
from learnpulse.store.schema import current_revision, head_revision, upgrade
from learnpulse.store.tables import metadata


def test_upgrade_creates_every_table_and_matches_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    names = set(inspect(engine).get_table_names())
    assert {"attempt", "user_goal", "features_topic_daily", "weekly_kpi", "job_run"} <= names
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert diff == []


def test_weekly_kpi_model_columns_are_present_and_nullable(engine: Engine) -> None:
    cols = {c["name"]: c for c in inspect(engine).get_columns("weekly_kpi")}
    for name in ("i_t", "p", "sigma", "s"):
        assert cols[name]["nullable"] is True


def test_upgrade_twice_is_a_no_op(db_url: str) -> None:
    eng = make_engine(db_url)
    assert upgrade(eng)[0] is None
    before, after = upgrade(eng)
    assert before == after == head_revision()
