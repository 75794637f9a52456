"""The outbox relay: PostgreSQL tells every reconciler when a leg is committed due at once.

A job whose engine cannot refuse it at the send (Celery) is not sent by its request: the request commits the row
and the leg, due at once, and answers. A trigger on the leg table raises `NOTIFY gateway_outbox` for such a
leg (a primary leg inserted PENDING with its first attempt due at its creation), delivered when the insert
commits, so a reconciler in any process sends it at once instead of at its next tick. A leg that its request
sends itself is inserted due after a grace period and raises nothing.

Revision ID: 0009_outbox_relay_notify
Revises: 0008_shadow_outbox_notify
"""

from __future__ import annotations

from alembic import op

revision = "0009_outbox_relay_notify"
down_revision = "0008_shadow_outbox_notify"
branch_labels = None
depends_on = None

# The payload is empty: a listener only needs to know that the outbox has work, and equal notices of one
# transaction are folded into one by PostgreSQL.
FUNCTION = """
CREATE OR REPLACE FUNCTION gateway_leg_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_outbox', '');
    RETURN NULL;
END
$$
"""

TRIGGER = """
CREATE TRIGGER leg_relay_due
AFTER INSERT ON leg
FOR EACH ROW
WHEN (
    NEW.role = 'primary'
    AND NEW.dispatch_state = 'pending'
    AND NEW.next_attempt_at <= NEW.created_at
)
EXECUTE FUNCTION gateway_leg_due()
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS leg_relay_due ON leg")
    op.execute("DROP FUNCTION IF EXISTS gateway_leg_due()")
