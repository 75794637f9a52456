"""Shadow runs: settings per backend/content, skip counters, comparisons, A/A flake statistics, compare rules.

Revision ID: 0005_shadow
Revises: 0004_leg_infra_retries
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_shadow"
down_revision = "0004_leg_infra_retries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("leg", schema=None) as batch_op:
        batch_op.add_column(sa.Column("compare_due", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_leg_compare_due", "leg", ["compare_due"])
    op.create_table(
        "shadow_setting",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("engine", sa.String(length=32), nullable=True),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("max_in_flight", sa.Integer(), nullable=False),
        sa.Column("deadline_seconds", sa.Integer(), nullable=False),
        sa.Column("aa_fraction", sa.Float(), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_setting")),
        sa.UniqueConstraint("scope", "scope_id", name="uq_shadow_setting_scope"),
    )
    op.create_table(
        "shadow_skip",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("execution_backend_id", sa.String(length=64), nullable=False),
        sa.Column("course_content_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_skip")),
        sa.UniqueConstraint("execution_backend_id", "course_content_id", "reason", name="uq_shadow_skip_key"),
    )
    op.create_table(
        "comparison",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("result_id", sa.String(length=64), nullable=False),
        sa.Column("primary_leg_id", sa.String(length=255), nullable=False),
        sa.Column("shadow_leg_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("execution_backend_id", sa.String(length=64), nullable=True),
        sa.Column("course_content_id", sa.String(length=64), nullable=True),
        sa.Column("primary_engine", sa.String(length=32), nullable=False),
        sa.Column("shadow_engine", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("side", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("differences", sa.JSON(), nullable=True),
        sa.Column("difference_count", sa.Integer(), nullable=False),
        sa.Column("primary_score", sa.Float(), nullable=True),
        sa.Column("shadow_score", sa.Float(), nullable=True),
        sa.Column("primary_queue_seconds", sa.Float(), nullable=True),
        sa.Column("shadow_queue_seconds", sa.Float(), nullable=True),
        sa.Column("primary_run_seconds", sa.Float(), nullable=True),
        sa.Column("shadow_run_seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"], ["result.id"], name=op.f("fk_comparison_result_id_result"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison")),
        sa.UniqueConstraint("shadow_leg_id", name="uq_comparison_shadow_leg_id"),
    )
    op.create_index("ix_comparison_result_id", "comparison", ["result_id"])
    op.create_index("ix_comparison_backend_created", "comparison", ["execution_backend_id", "created_at"])
    op.create_index("ix_comparison_content_created", "comparison", ["course_content_id", "created_at"])
    op.create_table(
        "flake_stat",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("course_content_id", sa.String(length=64), nullable=False),
        sa.Column("test_key", sa.String(length=1024), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("flips", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flake_stat")),
        sa.UniqueConstraint("course_content_id", "test_key", name="uq_flake_stat_test"),
    )
    op.create_table(
        "compare_rules",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_compare_rules")),
    )


def downgrade() -> None:
    op.drop_table("compare_rules")
    op.drop_table("flake_stat")
    op.drop_index("ix_comparison_content_created", table_name="comparison")
    op.drop_index("ix_comparison_backend_created", table_name="comparison")
    op.drop_index("ix_comparison_result_id", table_name="comparison")
    op.drop_table("comparison")
    op.drop_table("shadow_skip")
    op.drop_table("shadow_setting")
    op.drop_index("ix_leg_compare_due", table_name="leg")
    with op.batch_alter_table("leg", schema=None) as batch_op:
        batch_op.drop_column("compare_due")
