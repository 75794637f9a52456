"""leg.infra_retries: how many times a leg was run again after an infrastructure failure (crash, dead worker).

Revision ID: 0004_leg_infra_retries
Revises: 0003_legacy_fidelity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_leg_infra_retries"
down_revision = "0003_legacy_fidelity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leg") as batch:
        batch.add_column(sa.Column("infra_retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("leg") as batch:
        batch.drop_column("infra_retries")
