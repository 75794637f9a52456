"""The gate's tally: per migration scope, stage, config version and class, how many comparisons, kept by triggers.

One gate evaluation read every comparison of the stage (a million rows: seconds, whatever the index). The
comparisons a stage's gate weighs are the live shadow comparisons its jobs gave (`routed_*`, migration 0015); their
counts per class are now kept in `gate_tally` by triggers on `comparison`, in the transaction that writes,
re-classifies (a re-judgement: mismatch -> noise) or deletes a comparison, so whatever writes a comparison (the
compare step, a test's seed, a bulk load) keeps the counts and the gate reads a handful of rows.
Per key (scope, scope id, stage, version, engines, outcome, side, and the signature of a mismatch: accepted
clusters are counted apart) the tally holds the comparisons (`n`), those with each leg's run time (the p99's
ranks), and those whose environments differ (the parity check runs only if one does).

The p99 is the nearest rank, an observed value: the tally gives the rank, and four partial indexes ordered by each
leg's run time give the value by reading only the top 1 % of the window (`gateway.jobs.cutover_gates`).

PostgreSQL: statement-level triggers over transition tables (one grouped upsert per statement, in key order);
SQLite: row-level triggers. Existing comparisons are counted here (backfill).

Revision ID: 0016_gate1m_tally
Revises: 0015_evidence_routed
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_gate1m_tally"
down_revision = "0015_evidence_routed"
branch_labels = None
depends_on = None

KEY = ["scope", "scope_id", "stage", "version", "primary_engine", "shadow_engine", "outcome", "side", "signature"]
VALUES = ["n", "primary_timed", "shadow_timed", "environment_differs"]


def _select(source: str, delta: str) -> str:
    """One comparison source's tally contributions (`delta` +1 or -1 per row), ungrouped."""
    return f"""
        SELECT routed_scope AS scope,
               CASE routed_scope WHEN 'content' THEN course_content_id WHEN 'backend' THEN execution_backend_id END
                   AS scope_id,
               routed_stage AS stage, routed_version AS version, primary_engine, shadow_engine, outcome,
               COALESCE(side, '') AS side,
               CASE WHEN outcome = 'mismatch' THEN COALESCE(signature, '') ELSE '' END AS signature,
               {delta} AS n,
               CASE WHEN primary_run_seconds IS NOT NULL THEN {delta} ELSE 0 END AS primary_timed,
               CASE WHEN shadow_run_seconds IS NOT NULL THEN {delta} ELSE 0 END AS shadow_timed,
               CASE WHEN environment_differs THEN {delta} ELSE 0 END AS environment_differs
        FROM {source}
        WHERE kind = 'shadow' AND routed_scope IN ('content', 'backend') AND routed_stage IS NOT NULL
          AND routed_version IS NOT NULL
          AND (CASE routed_scope WHEN 'content' THEN course_content_id ELSE execution_backend_id END) IS NOT NULL"""


def _upsert(body: str) -> str:
    """Add the grouped contributions of `body` to the tally (key order: concurrent writers lock in one order)."""
    keys, values = ", ".join(KEY), ", ".join(VALUES)
    sums = ", ".join(f"sum({v})" for v in VALUES)
    changed = " OR ".join(f"sum({v}) <> 0" for v in VALUES)
    added = ", ".join(f"{v} = gate_tally.{v} + excluded.{v}" for v in VALUES)
    return f"""
        INSERT INTO gate_tally ({keys}, {values})
        SELECT {keys}, {sums} FROM ({body}) AS c
        GROUP BY {keys} HAVING {changed} ORDER BY {keys}
        ON CONFLICT ({keys}) DO UPDATE SET {added}"""


# PostgreSQL: one function per statement kind, over the statement's transition tables.
PG_FUNCTIONS = {
    "insert": _upsert(_select("new_rows", "1")),
    "delete": _upsert(_select("old_rows", "-1")),
    "update": _upsert(f"{_select('old_rows', '-1')} UNION ALL {_select('new_rows', '1')}"),
}
PG_REFERENCING = {
    "insert": "REFERENCING NEW TABLE AS new_rows",
    "delete": "REFERENCING OLD TABLE AS old_rows",
    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
}
# SQLite: row-level; a row's values as a one-row source (the WHERE keeps the upsert unambiguous in a trigger).
COLUMNS = ["kind", "routed_scope", "routed_stage", "routed_version", "course_content_id", "execution_backend_id",
           "primary_engine", "shadow_engine", "outcome", "side", "signature", "primary_run_seconds",
           "shadow_run_seconds", "environment_differs"]  # fmt: skip


def _row(alias: str) -> str:
    return "(SELECT " + ", ".join(f"{alias}.{c} AS {c}" for c in COLUMNS) + ")"


def _sqlite_upsert(alias: str, delta: str) -> str:
    return _upsert(_select(_row(alias), delta)).replace("GROUP BY", "WHERE true GROUP BY", 1) + ";"


SQLITE_TRIGGERS = {
    "insert": ("AFTER INSERT", _sqlite_upsert("NEW", "1")),
    "delete": ("AFTER DELETE", _sqlite_upsert("OLD", "-1")),
    "update": (f"AFTER UPDATE OF {', '.join(COLUMNS)}", _sqlite_upsert("OLD", "-1") + _sqlite_upsert("NEW", "1")),
}

# Each leg's run time, ordered, within one stage's window: the p99 reads the top 1 % (`WHERE` as the gate writes it).
RUN_INDEXES = {
    f"ix_comparison_gate_{scope}_{side}_runs": (
        [column, "routed_stage", "routed_version", f"{side}_engine", f"{other}_engine", f"{side}_run_seconds"],
        f"kind = 'shadow' AND routed_scope = '{scope}'",
    )
    for scope, column in (("content", "course_content_id"), ("backend", "execution_backend_id"))
    for side, other in (("primary", "shadow"), ("shadow", "primary"))
}
# The few comparisons whose environments differ (the parity check reads only those).
DIFFERS_INDEX = "ix_comparison_environment_differs"


def upgrade() -> None:
    op.create_table(
        "gate_tally",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("scope_id", sa.String(64), primary_key=True),
        sa.Column("stage", sa.String(16), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("primary_engine", sa.String(32), primary_key=True),
        sa.Column("shadow_engine", sa.String(32), primary_key=True),
        sa.Column("outcome", sa.String(32), primary_key=True),
        sa.Column("side", sa.String(16), primary_key=True),
        sa.Column("signature", sa.String(32), primary_key=True),
        *(sa.Column(v, sa.BigInteger(), nullable=False, server_default="0") for v in VALUES),
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, (columns, where) in RUN_INDEXES.items():
        op.create_index(name, "comparison", columns, postgresql_include=["outcome", "side"],
                        postgresql_where=sa.text(where), sqlite_where=sa.text(where))  # fmt: skip
    differs = sa.text("environment_differs IS true")
    op.create_index(DIFFERS_INDEX, "comparison", ["created_at"], postgresql_where=differs, sqlite_where=differs)
    # Backfill before the triggers: the comparisons already written.
    op.execute(_upsert(_select("comparison", "1")))
    if postgres:
        for kind, body in PG_FUNCTIONS.items():
            op.execute(
                f"CREATE FUNCTION gate_tally_{kind}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; "
                "RETURN NULL; END $$"
            )
            op.execute(
                f"CREATE TRIGGER gate_tally_{kind} AFTER {kind.upper()} ON comparison {PG_REFERENCING[kind]} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION gate_tally_{kind}()"
            )
    else:
        for kind, (when, body) in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER gate_tally_{kind} {when} ON comparison BEGIN {body} END")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for kind in PG_FUNCTIONS:
        op.execute(f"DROP TRIGGER IF EXISTS gate_tally_{kind}" + (" ON comparison" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION IF EXISTS gate_tally_{kind}()")
    op.drop_index(DIFFERS_INDEX, table_name="comparison")
    for name in RUN_INDEXES:
        op.drop_index(name, table_name="comparison")
    op.drop_table("gate_tally")
