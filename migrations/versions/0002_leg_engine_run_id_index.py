"""Index leg.engine_run_id: the legacy write-back looks a job up by the engine's run id.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_leg_engine_run_id", "leg", ["engine_run_id"])


def downgrade() -> None:
    op.drop_index("ix_leg_engine_run_id", table_name="leg")
