"""growth sampler: growth_brms_meta records BRMS_SAMPLER (nuts | gibbs) as a column, like the family

Runs stored before this revision get the sampler their diagnostics JSON names ("gibbs" for the opt-in sampler, which
wrote it there), else "nuts" (the only sampler before the opt-in existed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 01:30:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("growth_brms_meta", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sampler", sa.String(length=16), nullable=False, server_default="nuts"))
    meta = sa.table("growth_brms_meta", sa.column("run_id", sa.Integer), sa.column("diagnostics", sa.JSON))
    conn = op.get_bind()
    gibbs = [
        run_id
        for run_id, diagnostics in conn.execute(sa.select(meta.c.run_id, meta.c.diagnostics))
        if _sampler(diagnostics) == "gibbs"
    ]
    if gibbs:
        conn.execute(
            sa.text("UPDATE growth_brms_meta SET sampler = 'gibbs' WHERE run_id IN :ids").bindparams(
                sa.bindparam("ids", expanding=True)
            ),
            {"ids": gibbs},
        )


def _sampler(diagnostics: object) -> str | None:
    """The sampler a stored diagnostics JSON names (drivers return JSON as a dict or as text)."""
    if isinstance(diagnostics, str):
        diagnostics = json.loads(diagnostics)
    return diagnostics.get("sampler") if isinstance(diagnostics, dict) else None


def downgrade() -> None:
    with op.batch_alter_table("growth_brms_meta", schema=None) as batch_op:
        batch_op.drop_column("sampler")
