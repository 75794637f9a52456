"""leg.infra_retries: how many times a leg was run again after an infrastructure failure (crash, dead worker).

Revision ID: 0003_leg_infra_retries
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_leg_infra_retries"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leg") as batch:
        batch.add_column(sa.Column("infra_retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("leg") as batch:
        batch.drop_column("infra_retries")
