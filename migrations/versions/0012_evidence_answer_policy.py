"""The answer policy of a migration: `verified` (a canary job's row waits for both engines) or `primary`.

Revision ID: 0012_evidence_answer_policy
Revises: 0011_evidence_rejudge
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_evidence_answer_policy"
down_revision = "0011_evidence_rejudge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "cutover_migration", sa.Column("answer_policy", sa.String(16), nullable=False, server_default="verified")
    )


def downgrade() -> None:
    op.drop_column("cutover_migration", "answer_policy")
