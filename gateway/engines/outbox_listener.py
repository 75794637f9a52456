"""Hears PostgreSQL's outbox notices and wakes the relay, so a separate `gateway reconcile` sends at once too.

The database announces the moments a leg becomes due for the relay on `OUTBOX_CHANNEL`: triggers on a relayed
leg's insert (migration 0009) and on a shadowed job's primary's first send (migration 0008). A notice is only a
hint: the reconciler's ticks still flush the outbox, so a lost one costs at most a cycle. SQLite has no such
channel; there the API wakes the relay in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.redact import redact_text
from gateway.engines.relay import Relay, first_done
from gateway.store.outbox import OUTBOX_CHANNEL

log = logging.getLogger(__name__)


class OutboxListener:
    """LISTEN on `OUTBOX_CHANNEL` and wake `relay` per notice (reopened if lost)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], relay: Relay, retry_after: float) -> None:
        self.sessions = sessions
        self.relay = relay
        self.retry_after = retry_after
        # Set while the PostgreSQL outbox listener listens.
        self.listening = asyncio.Event()

    async def listen(self, stop: asyncio.Event) -> None:
        """Until `stop`; returns at once where the store is not PostgreSQL."""
        bind = self.sessions.kw.get("bind")
        if bind is None or bind.dialect.name != "postgresql":
            return
        import asyncpg

        dsn = bind.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("outbox listener cannot connect: %s", redact_text(repr(exc)))
            else:
                try:
                    conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                    await conn.add_listener(OUTBOX_CHANNEL, lambda *_args: self.relay.wake_outbox())
                    self.listening.set()
                    self.relay.wake_outbox()  # whatever became due while nobody listened
                    await first_done(stop.wait(), lost.wait())
                finally:
                    self.listening.clear()
                    if not conn.is_closed():
                        conn.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.retry_after)
