"""anomaly evidence: the value of I_t the anomaly rule judged (from the week's own answers) in prophet_anomalies

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prophet_anomalies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evidence", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("prophet_anomalies", schema=None) as batch_op:
        batch_op.drop_column("evidence")
