"""Cutover: one migration per execution backend (or course content override) and its event log.

Revision ID: 0006_cutover
Revises: 0005_shadow
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_cutover"
down_revision = "0005_shadow"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cutover_migration",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("old_engine", sa.String(length=32), nullable=False),
        sa.Column("new_engine", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("percentage", sa.Float(), nullable=False),
        sa.Column("shadow_fraction", sa.Float(), nullable=False),
        sa.Column("policy", sa.String(length=16), nullable=False),
        sa.Column("canary_steps", sa.JSON(), nullable=False),
        sa.Column("min_stage_seconds", sa.Float(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_evaluation", sa.JSON(), nullable=True),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cutover_migration")),
        sa.UniqueConstraint("scope", "scope_id", name="uq_cutover_migration_scope"),
    )
    op.create_table(
        "cutover_event",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("migration_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=True),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("from_config", sa.JSON(), nullable=True),
        sa.Column("to_config", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evaluation", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cutover_event")),
    )
    op.create_index("ix_cutover_event_scope", "cutover_event", ["scope", "scope_id", "at"])


def downgrade() -> None:
    op.drop_index("ix_cutover_event_scope", table_name="cutover_event")
    op.drop_table("cutover_event")
    op.drop_table("cutover_migration")
