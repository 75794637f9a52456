"""Shadow legs are sent by the reconciler: PostgreSQL tells every reconciler when they become due.

A trigger on the leg table raises `NOTIFY gateway_outbox` when a shadowed job's primary leg has its first send
attempt recorded (sent, or deferred because its engine was down): from then on the job's shadow legs may be sent,
and a reconciler in another process than the API learns it at once instead of at its next tick. The notice is
delivered when the recording transaction commits. SQLite has no NOTIFY: there the in-process reconciler is woken
directly by the submit path.

Revision ID: 0008_shadow_outbox_notify
Revises: 0007_cutover_triage
"""

from __future__ import annotations

from alembic import op

revision = "0008_shadow_outbox_notify"
down_revision = "0007_cutover_triage"
branch_labels = None
depends_on = None

FUNCTION = """
CREATE OR REPLACE FUNCTION gateway_shadow_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_outbox', NEW.result_id);
    RETURN NULL;
END
$$
"""

# Only the first attempt of a primary leg that has shadow legs (its routing lists them): the WHEN clause is
# checked in the UPDATE itself, so every other leg update costs nothing more.
TRIGGER = """
CREATE TRIGGER leg_shadow_due
AFTER UPDATE OF dispatch_state, dispatch_attempts ON leg
FOR EACH ROW
WHEN (
    NEW.role = 'primary'
    AND OLD.dispatch_state = 'pending'
    AND OLD.dispatch_attempts = 0
    AND (NEW.dispatch_state <> 'pending' OR NEW.dispatch_attempts > 0)
    AND (NEW.routing -> 'shadow' -> 'legs') IS NOT NULL
)
EXECUTE FUNCTION gateway_shadow_due()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS leg_shadow_due ON leg")
    op.execute("DROP FUNCTION IF EXISTS gateway_shadow_due()")
