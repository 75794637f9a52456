"""Cutover triage: each comparison's cluster signature, accepted clusters, and the cluster of a triage event.

Existing mismatch and noise comparisons get their signature computed from their stored differences (in batches),
so clusters seen before this revision can be accepted too.

Revision ID: 0007_cutover_triage
Revises: 0006_cutover
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.cutover.triage import signature_of

revision = "0007_cutover_triage"
down_revision = "0006_cutover"
branch_labels = None
depends_on = None

BATCH = 1000


def _backfill() -> None:
    bind = op.get_bind()
    comparison = sa.table(
        "comparison",
        sa.column("id", sa.String()),
        sa.column("outcome", sa.String()),
        sa.column("differences", sa.JSON()),
        sa.column("signature", sa.String()),
    )
    pending = (
        sa.select(comparison.c.id, comparison.c.outcome, comparison.c.differences)
        .where(comparison.c.outcome.in_(("mismatch", "noise")), comparison.c.signature.is_(None))
        .order_by(comparison.c.id)
        .limit(BATCH)
    )
    while rows := bind.execute(pending).all():
        for comparison_id, outcome, differences in rows:
            bind.execute(
                sa.update(comparison)
                .where(comparison.c.id == comparison_id)
                .values(signature=signature_of(outcome, differences))
            )


def upgrade() -> None:
    with op.batch_alter_table("comparison") as batch:
        batch.add_column(sa.Column("signature", sa.String(length=32), nullable=True))
    with op.batch_alter_table("cutover_event") as batch:
        batch.add_column(sa.Column("cluster", sa.JSON(), nullable=True))
    op.create_table(
        "cutover_acceptance",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("migration_id", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_by", sa.String(length=255), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cutover_acceptance")),
        sa.UniqueConstraint("scope", "scope_id", "signature", name="uq_cutover_acceptance_signature"),
    )
    _backfill()


def downgrade() -> None:
    op.drop_table("cutover_acceptance")
    with op.batch_alter_table("cutover_event") as batch:
        batch.drop_column("cluster")
    with op.batch_alter_table("comparison") as batch:
        batch.drop_column("signature")
