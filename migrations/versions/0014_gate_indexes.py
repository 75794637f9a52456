"""Covering indexes for the cutover gate: one evaluation reads an index, not a million comparison rows.

The gate's window is one scope's comparisons since the stage began (`gateway.jobs.cutover_gates`): it counts
them by outcome, side and primary engine, takes both engines' p99 run time, and counts the accepted mismatches.
The scope's `(…, created_at)` indexes found the rows, but every column the gate reads was then fetched from the
table, row by row. The same keys now carry those columns (`INCLUDE`, PostgreSQL 11+), so the gate's queries are
index-only scans (comparisons are only inserted: autovacuum keeps the visibility map current). SQLite has no
`INCLUDE`: there the indexes are left as they were.

The gate weighs only the comparisons whose primary leg the current stage routed (`routed_by`: the leg's
`routing` record, its config scope, stage and config version). `ix_leg_routed_stage` indexes those three
expressions as the query writes them: the legs of one stage are found without reading every leg's JSON, and
PostgreSQL gets statistics for them (without, it guessed one matching leg and sorted a million rows on disk).
Partial: only legs a stage routed are in it, so a submit with no migration pays no entry for it.

Revision ID: 0014_gate_indexes
Revises: 0013_shadow_backlog_indexes
"""

from __future__ import annotations

from alembic import op

revision = "0014_gate_indexes"
down_revision = "0013_shadow_backlog_indexes"
branch_labels = None
depends_on = None

# What the gate reads of each comparison in its window (`gateway.store.models.GATE_COLUMNS`).
GATE_COLUMNS = [
    "kind",
    "primary_engine",
    "shadow_engine",
    "outcome",
    "side",
    "primary_run_seconds",
    "shadow_run_seconds",
    "signature",
]
INDEXES = {
    "ix_comparison_backend_created": ["execution_backend_id", "created_at"],
    "ix_comparison_content_created": ["course_content_id", "created_at"],
}


# The expressions exactly as SQLAlchemy renders `routed_by`'s filters on PostgreSQL.
ROUTED_STAGE = [
    "(routing ->> 'config_scope')",
    "(routing ->> 'stage')",
    "(CAST((routing ->> 'config_version') AS INTEGER))",
]


# Only legs a cutover stage routed carry a stage: the others (most jobs, no migration) add no index entry.
ROUTED_ONLY = "(routing ->> 'stage') IS NOT NULL"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, columns in INDEXES.items():
        op.drop_index(name, table_name="comparison")
        op.create_index(name, "comparison", columns, postgresql_include=GATE_COLUMNS)
    op.execute(f"CREATE INDEX ix_leg_routed_stage ON leg ({', '.join(ROUTED_STAGE)}) WHERE {ROUTED_ONLY}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_leg_routed_stage")
    for name, columns in INDEXES.items():
        op.drop_index(name, table_name="comparison")
        op.create_index(name, "comparison", columns)
