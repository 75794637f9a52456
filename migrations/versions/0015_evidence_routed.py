"""A comparison names the migration scope, stage and config version that routed its job (copied from the primary
leg's routing record when the comparison is written), so a gate weighs the jobs its current stage routed with
plain column filters; on PostgreSQL the gate's covering indexes carry the three columns too (index-only scans).

Comparisons written before this revision are not attributed to a stage: a gate's evidence starts with the next.

Revision ID: 0015_evidence_routed
Revises: 0014_gate_indexes
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_evidence_routed"
down_revision = "0014_gate_indexes"
branch_labels = None
depends_on = None

BEFORE = ["kind", "primary_engine", "shadow_engine", "outcome", "side", "primary_run_seconds",
          "shadow_run_seconds", "signature"]  # fmt: skip
AFTER = [*BEFORE, "routed_scope", "routed_stage", "routed_version"]
INDEXES = {
    "ix_comparison_backend_created": ["execution_backend_id", "created_at"],
    "ix_comparison_content_created": ["course_content_id", "created_at"],
}


def _indexes(include: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in INDEXES.items():
        op.drop_index(name, table_name="comparison")
        op.create_index(name, "comparison", columns, postgresql_include=include)


def upgrade() -> None:
    op.add_column("comparison", sa.Column("routed_scope", sa.String(16), nullable=True))
    op.add_column("comparison", sa.Column("routed_stage", sa.String(16), nullable=True))
    op.add_column("comparison", sa.Column("routed_version", sa.Integer(), nullable=True))
    _indexes(AFTER)


def downgrade() -> None:
    _indexes(BEFORE)
    op.drop_column("comparison", "routed_version")
    op.drop_column("comparison", "routed_stage")
    op.drop_column("comparison", "routed_scope")
