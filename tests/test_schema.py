"""The migrations create exactly the tables the code defines, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from learnpulse.store.db import make_engine
from learnpulse.store.schema import current_revision, head_revision, upgrade
from learnpulse.store.tables import growth_brms_meta, metadata


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


def test_growth_runs_stored_before_0007_get_the_sampler_their_diagnostics_name(db_url: str) -> None:
    """0007 adds growth_brms_meta.sampler: "gibbs" for earlier runs whose diagnostics JSON says so, else "nuts"."""
    eng = make_engine(db_url)
    upgrade(eng, "0006")
    old = sa.table(
        "growth_brms_meta",
        *(sa.column(name) for name in ("run_id", "as_of", "status", "formula", "family", "iter", "chains")),
        *(sa.column(name) for name in ("lookback_weeks", "window_start", "n_units", "n_obs", "elapsed_seconds")),
        sa.column("priors", sa.JSON),
        sa.column("diagnostics", sa.JSON),
    )
    common = {
        "as_of": date(2026, 6, 21),
        "status": "succeeded",
        "formula": "correct | trials(attempts) ~ time + (time | user)",
        "family": "binomial",
        "iter": 1000,
        "chains": 2,
        "lookback_weeks": 12,
        "window_start": date(2026, 3, 30),
        "n_units": 10,
        "n_obs": 100,
        "elapsed_seconds": 1.0,
        "priors": {},
    }
    with eng.begin() as conn:
        conn.execute(
            sa.insert(old),
            [
                common | {"run_id": 1, "diagnostics": {"sampler": "gibbs", "max_rhat": 1.0}},
                common | {"run_id": 2, "diagnostics": {"max_rhat": 1.0}},
                common | {"run_id": 3, "diagnostics": None, "status": "failed"},
            ],
        )
    upgrade(eng)
    with eng.connect() as conn:
        rows = conn.execute(sa.select(growth_brms_meta.c.run_id, growth_brms_meta.c.sampler)).all()
    assert sorted(map(tuple, rows)) == [(1, "gibbs"), (2, "nuts"), (3, "nuts")]
    eng.dispose()
