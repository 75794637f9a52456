"""Legacy fidelity: a course content type on every assignment and result row; dispatch faults counted per leg.

The legacy `ResultGet`/`ResultList` models require `course_content_type_id` as a string, so rows written before
the gateway carried it get the default type. `leg.dispatch_faults` counts sends that failed for a reason that
is not an outage (a job the engine cannot take), so such a leg is rejected after a bounded number of tries.

Revision ID: 0003_legacy_fidelity
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_legacy_fidelity"
down_revision = "0002"
branch_labels = None
depends_on = None

DEFAULT_CONTENT_TYPE = "assignment"  # gateway.store.models.DEFAULT_CONTENT_TYPE at the time of writing


def upgrade() -> None:
    with op.batch_alter_table("leg") as batch:
        batch.add_column(sa.Column("dispatch_faults", sa.Integer(), nullable=False, server_default="0"))
    content = sa.table("course_content", sa.column("kind", sa.String), sa.column("course_content_type_id", sa.String))
    op.execute(
        content.update()
        .where(content.c.kind == "assignment", content.c.course_content_type_id.is_(None))
        .values(course_content_type_id=DEFAULT_CONTENT_TYPE)
    )
    result = sa.table("result", sa.column("course_content_type_id", sa.String))
    op.execute(
        result.update()
        .where(result.c.course_content_type_id.is_(None))
        .values(course_content_type_id=DEFAULT_CONTENT_TYPE)
    )


def downgrade() -> None:
    with op.batch_alter_table("leg") as batch:
        batch.drop_column("dispatch_faults")
