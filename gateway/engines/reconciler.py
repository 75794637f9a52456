"""The reconciler: schedules the rooms that move legs — the relay, the observer, the completion follower.

One tick: the relay flushes the outbox (`gateway.engines.relay`), the observer polls every open leg
(`gateway.engines.observer`), then the follow-up steps registered from above run (comparisons, cutover gates)
and the shadow skip counts are written. Beside the ticks, `run` keeps the completion feeds
(`gateway.engines.completions`), the relay's wake-ups and, on PostgreSQL, the outbox listener
(`gateway.engines.outbox_listener`) going. Between ticks, retention prunes a small batch of old legs.
How the rooms take legs without writing one twice is `gateway.engines.leg_claims`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.redact import redact_text
from common.settings import Settings
from gateway.engines import metrics
from gateway.engines.completions import Completions
from gateway.engines.dispatcher import Dispatcher
from gateway.engines.leg_claims import LegClaims, TickReport
from gateway.engines.observer import Observer
from gateway.engines.outbox_listener import OutboxListener
from gateway.engines.relay import Relay
from gateway.legs.machine import FinishHooks
from gateway.store import retention
from gateway.store.models import utcnow
from gateway.store.shadow_counters import SkipCounter

log = logging.getLogger(__name__)

# With nothing left to prune, look again after this long.
PRUNE_PAUSE = timedelta(minutes=1)

# A step run at the end of every tick (e.g. the comparisons of legs that finished): returns how much it did.
TickStep = Callable[[], Awaitable[int]]


class Reconciler:
    """Built from a session factory, a dispatcher and settings; its rooms are `relay`, `observer`,
    `completions` and `listener`."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        settings: Settings,
        batch_size: int = 5000,
        skips: SkipCounter | None = None,
        hooks: FinishHooks | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.claims = LegClaims(sessions, batch_size)
        # What runs when a leg finishes (none unless handed in: `gateway.jobs.bootstrap` builds the app's).
        hooks = hooks or FinishHooks()
        self.relay = Relay(self.claims, dispatcher, settings, hooks)
        self.observer = Observer(self.claims, dispatcher, settings, hooks)
        interval = settings.gateway_reconcile_interval
        self.completions = Completions(self.claims, self.observer, dispatcher, interval)
        self.listener = OutboxListener(sessions, self.relay, interval)
        self.skips = skips
        # Registered from above (the comparison step is installed by gateway.jobs.bootstrap).
        self.steps: dict[str, TickStep] = {}
        self._next_prune = datetime.min.replace(tzinfo=UTC)

    @property
    def batch_size(self) -> int:
        """Legs per page and per chunk, shared by the rooms."""
        return self.claims.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.claims.batch_size = value

    # ------------------------------------------------------------------------- what requests ask of the rooms
    @property
    def relaying(self) -> bool:
        """True while this process's relay runs its wake-up loop: only then may a request hand a leg over."""
        return self.relay.relaying

    def hand_over(self, leg: dict[str, Any]) -> None:
        self.relay.hand_over(leg)

    def wake_outbox(self) -> None:
        self.relay.wake_outbox()

    async def refresh(self, leg_id: str) -> None:
        await self.observer.refresh(leg_id)

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """See `LegClaims.exclusive`: a read-modify-write of legs serialised with ticks and refreshes."""
        return self.claims.exclusive()

    # ----------------------------------------------------------------------------------------------- a tick
    async def tick(self) -> TickReport:
        report = TickReport()
        async with self.claims.writer():
            with metrics.reconciler_cycle():
                await self.relay.flush_outbox(report)
                await self.observer.poll_open(report)
            for name, step in list(self.steps.items()):
                try:
                    report.steps[name] = await step()
                except Exception as exc:  # noqa: BLE001 - a follow-up step never stops the legs moving
                    log.warning("reconciler step %s failed: %s", name, redact_text(repr(exc)))
        if self.skips is not None:
            try:
                await self.skips.flush(self.sessions)
            except Exception as exc:  # noqa: BLE001 - the counts stay pending for the next tick
                log.warning("flushing shadow skip counts failed: %s", redact_text(repr(exc)))
        return report

    async def prune_step(self, now: datetime) -> int:
        """Retention: one small batch of finished legs past `gateway_retention_days` (none when unset).

        Runs between ticks, at most once a minute while there is nothing to delete, every cycle while there is.
        """
        days = self.settings.gateway_retention_days
        if days is None or now < self._next_prune:
            return 0
        deleted = 0
        async with self.claims.writer():
            try:
                deleted = await retention.prune_batch(
                    self.sessions, now - timedelta(days=days), self.settings.gateway_retention_batch
                )
            except Exception as exc:  # noqa: BLE001 - retention must never stop the reconciler
                log.warning("retention batch failed: %s", redact_text(repr(exc)))
        metrics.record_pruned(deleted)
        if deleted < self.settings.gateway_retention_batch:
            self._next_prune = now + PRUNE_PAUSE
        return deleted

    # ---------------------------------------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Ticks every `gateway_reconcile_interval` (at once again while busy); beside them the completion feeds,
        the outbox's wake-ups and (PostgreSQL) its listener."""
        beside = [
            asyncio.create_task(self.completions.follow(stop), name="completion-feeds"),
            asyncio.create_task(self.relay.flush_woken(stop), name="outbox-wake-ups"),
            asyncio.create_task(self.listener.listen(stop), name="outbox-listener"),
        ]
        try:
            await self.tick_loop(stop)
        finally:
            for task in beside:
                task.cancel()
            for task in beside:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def tick_loop(self, stop: asyncio.Event) -> None:
        """The ticks alone, with retention between them, until `stop`."""
        interval = self.settings.gateway_reconcile_interval
        while not stop.is_set():
            busy = False
            try:
                busy = (await self.tick()).busy
            except Exception as exc:  # noqa: BLE001 - the loop outlives a database hiccup
                log.warning("reconciler tick failed: %s", redact_text(repr(exc)))
            await self.prune_step(utcnow())
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
