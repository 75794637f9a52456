"""The reconciler: flushes the outbox (legs not yet accepted by their engine) and moves open legs forward.

One tick: (1) legs whose dispatch is due are sent again, a batch at a time through the dispatcher's threads
(backoff between attempts); (2) every open leg is polled, batch after batch in id order until none is left, so
no leg waits longer than one full cycle however many others stay unchanged; each batch costs one `poll` call
per engine and one `results` call per engine for the legs that finished. Deadlines are enforced here: a leg
past its deadline is closed as timed out and no longer waited on. Every transition goes through
`gateway.legs.machine`.

Several reconcilers may run at once (the API's background task, `gateway reconcile`): on PostgreSQL each takes
its legs with `FOR UPDATE SKIP LOCKED` and holds the locks while it talks to the engine, so no leg is processed
twice. SQLite has no row locks; there one in-process lock keeps a single writer, which is what the embedded
default needs. Whoever else reads a leg and writes it back (a cancel, a worker's write-back) takes the same lock
through `exclusive()`: a refresh holds its rows across the engine call, so without it the refresh could commit
what it read before a cancel over the cancel's write (a row left CANCELLING for ever, issue 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.concurrency import run_in_threadpool

from backends.interface import LegResult, LegState
from common.redact import redact_text
from common.settings import Settings
from gateway.engines.dispatcher import Dispatcher, SendOutcome, SendStatus
from gateway.legs import machine
from gateway.legs.states import DispatchState
from gateway.store.models import Leg, Result, utcnow
from gateway.store.shadow_settings import SkipCounter

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
    batches: int = 0
    # What the tick's follow-up steps did, by step name (e.g. comparisons written).
    steps: dict[str, int] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(self.dispatched or self.finished)


# A step run at the end of every tick (e.g. the comparisons of legs that finished): returns how much it did.
TickStep = Callable[[], Awaitable[int]]


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        settings: Settings,
        batch_size: int = 500,
        skips: SkipCounter | None = None,
    ) -> None:
        self.sessions = sessions
        self.dispatcher = dispatcher
        self.settings = settings
        self.batch_size = batch_size
        bind = sessions.kw.get("bind")
        self.is_postgres = bind is not None and bind.dialect.name == "postgresql"
        # SQLite has no row locks: one writer task at a time inside this process (a tick or a refresh).
        self._local_lock = asyncio.Lock()
        self.skips = skips
        # Registered from above (the comparison step is installed by gateway.jobs.bootstrap).
        self.steps: dict[str, TickStep] = {}

    # -------------------------------------------------------------------------------------------- plumbing
    @contextlib.asynccontextmanager
    async def _claim(self, stmt: Select[Any]) -> AsyncIterator[tuple[Sequence[Leg], dict[str, Result]]]:
        """One transaction holding a locked batch of legs and their result rows; committed on exit."""
        async with self.sessions() as session, session.begin():
            legs = (await session.execute(self._locked(stmt))).scalars().all()
            rows = await self._rows_for(session, legs) if legs else {}
            yield legs, rows

    def _locked(self, stmt: Select[Any]) -> Select[Any]:
        return stmt.with_for_update(skip_locked=True, of=Leg) if self.is_postgres else stmt

    @contextlib.asynccontextmanager
    async def _writer(self, wait: bool = True) -> AsyncIterator[bool]:
        """On SQLite, the in-process single-writer lock; yields False when `wait` is off and it is taken."""
        if self.is_postgres:
            yield True
            return
        if not wait and self._local_lock.locked():
            yield False
            return
        async with self._local_lock:
            yield True

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """A read-modify-write of legs and rows outside the reconciler, serialised with ticks and refreshes.

        On SQLite it waits for the in-process writer lock, so no refresh holds stale copies of the rows meanwhile;
        on PostgreSQL it is a no-op: the caller locks the leg row (`FOR UPDATE`), which the reconciler's
        `SKIP LOCKED` claims respect.
        """
        async with self._writer():
            yield

    @staticmethod
    async def _rows_for(session: AsyncSession, legs: Sequence[Leg]) -> dict[str, Result]:
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

    async def flush_outbox(self, report: TickReport) -> None:
        now = utcnow()
        stmt = (
            select(Leg)
            .where(
                Leg.dispatch_state == DispatchState.PENDING,
                Leg.finished.is_(False),
                # Due for another attempt, or past its deadline (a shadow leg never accepted): time it out.
                or_(Leg.next_attempt_at.is_(None), Leg.next_attempt_at <= now, Leg.deadline < now),
            )
            .order_by(Leg.next_attempt_at)
            .limit(self.batch_size)
        )
        async with self._claim(stmt) as (legs, rows):
            by_engine: dict[str, list[Leg]] = defaultdict(list)
            for leg in legs:
                if machine.past_deadline(leg, now):  # a shadow leg never accepted before its deadline
                    machine.time_out(leg, rows.get(leg.result_id or ""), now)
                    report.finished += 1
                    continue
                by_engine[leg.engine].append(leg)
            for engine, group in by_engine.items():
                await self._send_group(engine, group, rows, report)

    async def _send_group(self, engine: str, legs: list[Leg], rows: dict[str, Result], report: TickReport) -> None:
        """The first leg probes the engine; only if it got through are the others sent, all at once."""
        first = await self.dispatcher.send(engine, legs[0].spec, legs[0].id)
        self._apply_send(legs[0], first, rows, report)
        if first.status == SendStatus.RETRY or len(legs) == 1:
            return  # one failed attempt per engine per tick is enough to know it is still down
        rest = legs[1:]
        outcomes = await self.dispatcher.send_many(engine, [(leg.id, leg.spec) for leg in rest])
        for leg, outcome in zip(rest, outcomes, strict=True):
            self._apply_send(leg, outcome, rows, report)

    def _apply_send(self, leg: Leg, outcome: SendOutcome, rows: dict[str, Result], report: TickReport) -> None:
        now = utcnow()
        if outcome.status == SendStatus.SENT:
            machine.mark_sent(leg, outcome.engine_run_id, now, self.settings.gateway_leg_deadline_seconds)
            report.dispatched += 1
        elif outcome.status == SendStatus.RETRY or (
            outcome.deployment is not None and now - leg.created_at < DEPLOYMENT_GRACE
        ):
            machine.retry_later(leg, outcome.error, now)
            report.deferred += 1
        else:
            machine.reject(leg, rows.get(leg.result_id or ""), now, outcome.error)
            report.finished += 1

    async def poll_open(self, report: TickReport) -> None:
        """Every open leg once: batches in id order (keyset), each in its own short transaction."""
        after = ""
        while True:
            stmt = (
                select(Leg)
                .where(Leg.finished.is_(False), Leg.dispatch_state == DispatchState.SENT, Leg.id > after)
                .order_by(Leg.id)
                .limit(self.batch_size)
            )
            async with self._claim(stmt) as (legs, rows):
                if not legs:
                    return
                report.batches += 1
                after = legs[-1].id
                by_engine: dict[str, list[Leg]] = defaultdict(list)
                for leg in legs:
                    by_engine[leg.engine].append(leg)
                for engine, group in by_engine.items():
                    report.polled += len(group)
                    report.finished += await self._advance_group(engine, group, rows)
            if len(legs) < self.batch_size:
                return

    async def _advance_group(self, engine: str, legs: list[Leg], rows: dict[str, Result]) -> int:
        """One poll for the group, one results call for those that finished; returns how many finished."""
        adapter = self.dispatcher.adapter(engine)
        try:
            states: dict[str, LegState] = await run_in_threadpool(adapter.poll, [leg.id for leg in legs])
        except Exception as exc:  # noqa: BLE001 - an engine outage must not stop the other engines' legs
            log.warning("poll of %d %s legs failed: %s", len(legs), engine, redact_text(repr(exc)))
            states = {}
        final_ids = [leg.id for leg in legs if (s := states.get(leg.id)) is not None and s.phase.is_final]
        results: dict[str, LegResult] = {}
        if final_ids:
            try:
                results = await run_in_threadpool(adapter.results, final_ids)
            except Exception as exc:  # noqa: BLE001 - results unreadable now: try again next tick
                log.warning("results of %d %s legs unreadable: %s", len(final_ids), engine, redact_text(repr(exc)))
        now = utcnow()
        finished = 0
        for leg in legs:
            if self._advance(leg, states.get(leg.id), results.get(leg.id), rows.get(leg.result_id or ""), now):
                finished += 1
        return finished

    @staticmethod
    def _advance(leg: Leg, state: LegState | None, result: LegResult | None, row: Result | None, now: datetime) -> bool:
        """Apply one observation; True when the leg finished."""
        if state is not None and state.phase.is_final:
            if result is None:
                return False  # the result could not be read: the leg stays open until it can
            machine.finish_observed(leg, row, state, result, now)
            return True
        if state is not None:
            machine.apply_state(leg, state, row)
        if machine.past_deadline(leg, now):
            machine.time_out(leg, row, now)
            return True
        return False

    # ------------------------------------------------------------------------------------ one leg, on demand
    async def refresh(self, leg_id: str) -> None:
        """A status read of an in-flight leg: poll that one leg now (skipped if someone else holds it)."""
        stmt = select(Leg).where(Leg.id == leg_id, Leg.finished.is_(False), Leg.dispatch_state == DispatchState.SENT)
        async with self._writer(wait=False) as acquired:
            if not acquired:
                return
            async with self._claim(stmt) as (legs, rows):
                if legs:
                    await self._advance_group(legs[0].engine, list(legs), rows)

    # ---------------------------------------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        interval = self.settings.gateway_reconcile_interval
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
