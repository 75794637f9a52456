"""Environment parity: each comparison keeps both legs' effective environments and whether they differ.

Revision ID: 0010_evidence_environment
Revises: 0009_outbox_relay_notify
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_evidence_environment"
down_revision = "0009_outbox_relay_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("comparison", sa.Column("environment", sa.JSON(), nullable=True))
    op.add_column(
        "comparison", sa.Column("environment_differs", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("comparison", "environment_differs")
    op.drop_column("comparison", "environment")
