"""Re-judged mismatches: a comparison keeps its re-judgement (state, re-run legs, verdict, the class before).

Revision ID: 0011_evidence_rejudge
Revises: 0010_evidence_environment
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_evidence_rejudge"
down_revision = "0010_evidence_environment"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("comparison", sa.Column("rejudge", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("comparison", "rejudge")
