"""A comparison names the migration scope, stage and config version that routed its job (copied from the primary
leg's routing record), so a gate weighs the jobs its current stage routed with plain column filters.

Comparisons written before this revision are not attributed to a stage: a gate's evidence starts with the next.

Revision ID: 0013_evidence_routed
Revises: 0012_evidence_answer_policy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_evidence_routed"
down_revision = "0012_evidence_answer_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("comparison", sa.Column("routed_scope", sa.String(16), nullable=True))
    op.add_column("comparison", sa.Column("routed_stage", sa.String(16), nullable=True))
    op.add_column("comparison", sa.Column("routed_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("comparison", "routed_version")
    op.drop_column("comparison", "routed_stage")
    op.drop_column("comparison", "routed_scope")
