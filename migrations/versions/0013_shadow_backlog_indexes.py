"""Partial indexes that keep the shadow decision's reads bounded whatever the backlog of open shadow legs.

The submit path asks two questions of the store for a job that may be shadowed (`gateway.store.shadow_counters`):
how many shadow legs of the scope are unfinished (the cap), and which engines left shadow legs in the outbox with
an error lately (stalled engines). Both used to scan the leg table: the count joined every open shadow leg, the
stalled read walked every pending leg. Now:

- `ix_leg_shadow_open`: the unfinished shadow legs only, by result; the count stops at the cap;
- `ix_leg_shadow_stalled`: the shadow legs waiting in the outbox with an error, by engine; the read touches
  only those (the legs failing to be sent now), not the outbox. Keyed on `engine`, a column no update changes,
  not on `updated_at`: an index on a column every update sets would make every leg update (the relay's lease
  and mark) a non-HOT update that writes an entry into every index of the table.

The predicates are written as the queries render them (`finished IS false`, literal roles and states), so
PostgreSQL proves the index applies also for a generic prepared plan.

Revision ID: 0013_shadow_backlog_indexes
Revises: 0012_evidence_answer_policy
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_shadow_backlog_indexes"
down_revision = "0012_evidence_answer_policy"
branch_labels = None
depends_on = None

SHADOW_OPEN = "role = 'shadow' AND finished IS {false}"
SHADOW_STALLED = "role = 'shadow' AND dispatch_state = 'pending' AND finished IS {false} AND last_error IS NOT NULL"


def _where(predicate: str) -> dict[str, object]:
    return {
        "postgresql_where": sa.text(predicate.format(false="false")),
        "sqlite_where": sa.text(predicate.format(false="0")),
    }


def upgrade() -> None:
    op.create_index("ix_leg_shadow_open", "leg", ["result_id"], **_where(SHADOW_OPEN))
    op.create_index("ix_leg_shadow_stalled", "leg", ["engine"], **_where(SHADOW_STALLED))


def downgrade() -> None:
    op.drop_index("ix_leg_shadow_stalled", table_name="leg")
    op.drop_index("ix_leg_shadow_open", table_name="leg")
