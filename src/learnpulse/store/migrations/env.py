"""Alembic environment: always run with a connection handed over by ``learnpulse.store.schema``."""

from __future__ import annotations

from alembic import context

from learnpulse.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTER
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
