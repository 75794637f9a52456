"""The reconciler: flushes the outbox (legs not yet accepted by their engine) and moves open legs forward.

One tick: (1) legs whose dispatch is due are sent again (backoff between attempts); (2) open legs are polled in
batches, one `poll` call per engine, and finished legs write their row. Deadlines are enforced here: a leg past
its deadline is closed as timed out and no longer waited on.

Several reconcilers may run at once (the API's background task, `gateway reconcile`): on PostgreSQL each takes
its legs with `FOR UPDATE SKIP LOCKED` and holds the locks while it talks to the engine, so no leg is processed
twice. SQLite has no row locks; there one in-process lock keeps a single writer, which is what the embedded
default needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import object_session
from starlette.concurrency import run_in_threadpool

from backends.interface import LegPhase, LegResult, LegState
from backends.redact import redact_text
from gateway.dispatch import SendStatus, next_attempt
from gateway.legs import DEADLINE_MESSAGE, TIMED_OUT, apply_state, finish, mark_sent, submission_leg
from gateway.state import GatewayState
from gateway.store.models import Leg, Result, utcnow

log = logging.getLogger(__name__)

# A job accepted while its engine was down may find the engine back before its deployments are (a fresh or
# restarted Prefect server whose runner has not registered yet, as during `gateway up`): a missing deployment
# is retried this long after the job was accepted, then the leg fails. At submit time it is a 404 at once.
DEPLOYMENT_GRACE = timedelta(minutes=5)


@dataclass
class TickReport:
    dispatched: int = 0
    deferred: int = 0
    polled: int = 0
    finished: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.dispatched or self.finished)


class Reconciler:
    def __init__(self, state: GatewayState, batch_size: int = 200) -> None:
        self.state = state
        self.batch_size = batch_size

    # -------------------------------------------------------------------------------------------- plumbing
    @contextlib.asynccontextmanager
    async def _claim(self, stmt: Select[Any]) -> AsyncIterator[tuple[Sequence[Leg], dict[str, Result]]]:
        """One transaction holding a locked batch of legs and their result rows; committed on exit."""
        async with self.state.sessions() as session, session.begin():
            legs = (await session.execute(self._locked(stmt))).scalars().all()
            rows = await self._rows_for(session, legs) if legs else {}
            yield legs, rows

    def _locked(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.with_for_update(skip_locked=True, of=Leg) if self.state.is_postgres else stmt

    @contextlib.asynccontextmanager
    async def _writer(self, wait: bool = True) -> AsyncIterator[bool]:
        """On SQLite, the in-process single-writer lock; yields False when `wait` is off and it is taken."""
        if self.state.is_postgres:
            yield True
            return
        lock = self.state.local_lock
        if not wait and lock.locked():
            yield False
            return
        async with lock:
            yield True

    async def _rows_for(self, session: AsyncSession, legs: Sequence[Leg]) -> dict[str, Result]:
        ids = {leg.result_id for leg in legs if leg.result_id}
        if not ids:
            return {}
        rows = (await session.execute(select(Result).where(Result.id.in_(ids)))).scalars().all()
        return {row.id: row for row in rows}

    # ----------------------------------------------------------------------------------------------- a tick
    async def tick(self) -> TickReport:
        report = TickReport()
        async with self._writer():
            await self.flush_outbox(report)
            await self.poll_open(report)
        return report

    async def flush_outbox(self, report: TickReport) -> None:
        now = utcnow()
        stmt = (
            select(Leg)
            .where(
                Leg.dispatch_state == "pending",
                Leg.finished.is_(False),
                or_(Leg.next_attempt_at.is_(None), Leg.next_attempt_at <= now),
            )
            .order_by(Leg.next_attempt_at)
            .limit(self.batch_size)
        )
        async with self._claim(stmt) as (legs, rows):
            down: set[str] = set()
            for leg in legs:
                if leg.engine in down:
                    continue  # one failed attempt per engine per tick is enough to know it is still down
                outcome = await self.state.dispatcher.send(leg.engine, leg.spec, leg.id)
                now = utcnow()
                if outcome.status == SendStatus.SENT:
                    mark_sent(leg, outcome.engine_run_id, now, self.state.settings.gateway_leg_deadline_seconds)
                    leg.last_error = None
                    report.dispatched += 1
                elif outcome.status == SendStatus.RETRY or (
                    outcome.deployment is not None and now - leg.created_at < DEPLOYMENT_GRACE
                ):
                    if outcome.status == SendStatus.RETRY:
                        down.add(leg.engine)
                    leg.dispatch_attempts = (leg.dispatch_attempts or 0) + 1
                    leg.last_error = outcome.error
                    leg.next_attempt_at = next_attempt(now, leg.dispatch_attempts)
                    report.deferred += 1
                else:
                    leg.dispatch_state = "failed"
                    leg.last_error = outcome.error
                    finish(leg, rows.get(leg.result_id or ""), now, LegPhase.FAILED, error=outcome.error)
                    leg.outcome = "rejected"
                    report.finished += 1

    async def poll_open(self, report: TickReport) -> None:
        stmt = (
            select(Leg)
            .where(Leg.finished.is_(False), Leg.dispatch_state == "sent")
            .order_by(Leg.updated_at)
            .limit(self.batch_size)
        )
        async with self._claim(stmt) as (legs, rows):
            by_engine: dict[str, list[Leg]] = defaultdict(list)
            for leg in legs:
                by_engine[leg.engine].append(leg)
            for engine, group in by_engine.items():
                report.polled += len(group)
                report.finished += await self._advance_group(engine, group, rows)

    async def _advance_group(self, engine: str, legs: list[Leg], rows: dict[str, Result]) -> int:
        adapter = self.state.dispatcher.adapter(engine)
        try:
            states: dict[str, LegState] = await run_in_threadpool(adapter.poll, [leg.id for leg in legs])
        except Exception as exc:  # noqa: BLE001 - an engine outage must not stop the other engines' legs
            log.warning("poll of %d %s legs failed: %s", len(legs), engine, redact_text(repr(exc)))
            states = {}
        finished = 0
        for leg in legs:
            if await self._advance(leg, states.get(leg.id), rows.get(leg.result_id or "")):
                finished += 1
        return finished

    async def _advance(self, leg: Leg, state: LegState | None, row: Result | None) -> bool:
        """Apply one observation; True when the leg finished."""
        now = utcnow()
        if state is not None and state.phase.is_final:
            adapter = self.state.dispatcher.adapter(leg.engine)
            try:
                result: LegResult | None = await run_in_threadpool(adapter.result, leg.id)
            except Exception as exc:  # noqa: BLE001 - result unreadable now: try again next tick
                log.warning("result of leg %s unreadable: %s", leg.id, redact_text(repr(exc)))
                return False
            apply_state(leg, state, None)
            finish(leg, row, now, result.phase if result.phase.is_final else state.phase, result)
            leg.finished_at = state.finished_at or now
            follow_up = submission_leg(leg, row, now)
            session = object_session(leg)
            if follow_up is not None and session is not None:
                session.add(follow_up)  # committed with this leg's end; the outbox sends it on the next tick
            return True
        if state is not None:
            apply_state(leg, state, row)
        if leg.deadline is not None and now > leg.deadline:
            finish(leg, row, now, LegPhase.FAILED, outcome=TIMED_OUT, error=DEADLINE_MESSAGE)
            return True
        return False

    # ------------------------------------------------------------------------------------ one leg, on demand
    async def refresh(self, leg_id: str) -> None:
        """A status read of an in-flight leg: poll that one leg now (skipped if someone else holds it)."""
        stmt = select(Leg).where(Leg.id == leg_id, Leg.finished.is_(False), Leg.dispatch_state == "sent")
        async with self._writer(wait=False) as acquired:
            if not acquired:
                return
            async with self.state.sessions() as session, session.begin():
                leg = (await session.execute(self._locked(stmt))).scalar_one_or_none()
                if leg is None:
                    return
                rows = await self._rows_for(session, [leg])
                await self._advance_group(leg.engine, [leg], rows)

    # ---------------------------------------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        interval = self.state.settings.gateway_reconcile_interval
        while not stop.is_set():
            busy = False
            try:
                busy = (await self.tick()).busy
            except Exception as exc:  # noqa: BLE001 - the loop outlives a database hiccup
                log.warning("reconciler tick failed: %s", redact_text(repr(exc)))
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
