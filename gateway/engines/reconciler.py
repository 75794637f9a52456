"""The reconciler: flushes the outbox (legs not yet accepted by their engine) and moves open legs forward.

One tick: (1) legs whose dispatch is due are sent again, a batch at a time through the dispatcher's threads
(backoff between attempts); (2) every open leg is polled, batch after batch in id order until none is left, so
no leg waits longer than one full cycle however many others stay unchanged; each batch costs one unlocked read
of the legs' observed columns, one `poll` call per engine and, for the legs whose observation changes something,
one locked read and one `results` call per engine for those that finished. An unchanged leg is never locked or
written, which is what keeps a cycle over 10,000 waiting legs short. Deadlines are enforced here: a leg
past its deadline is closed as timed out and no longer waited on. Every transition goes through
`gateway.legs.machine`.

Completion is pushed where the engine can tell (`backends.interface.CompletionFeed`, e.g. the Celery result
store's NOTIFY): `run` follows every engine's feed beside the ticks and reads the named legs at once
(`apply_completions`); a leg that cannot be taken right then (another reconciler holds it) is tried again after
a short backoff, and one whose request has not yet recorded the send is closed all the same. A notice is only a
hint: the ticks still see every open leg, so a lost one costs at most a cycle.

The outbox is also the relay for every leg its request does not send: the primary leg of a job for an engine
that cannot refuse it (Celery, see `backends.interface.EngineAdapter.refuses_at_submit`), committed due at once,
and every shadow leg. A shadow leg is due at once too, but is held back until its primary's first send was tried
(so it is dispatched after the primary). `wake_outbox()` flushes the outbox promptly, outside the ticks: the API
calls it in-process after such a commit, and on PostgreSQL the database announces the same moments to every
reconciler (`OUTBOX_CHANNEL`: triggers on a relayed leg's insert, migration 0009, and on a shadowed job's
primary's first send, migration 0008) so a separate `gateway reconcile` is woken too. A wake-up flushes at once;
wake-ups that arrive during a flush make one more flush, so a burst of jobs is sent in a few claims, not one
each. The ticks' own flush stays the safety net for a lost notice.

Several reconcilers may run at once (the API's background task, `gateway reconcile`): on PostgreSQL each takes
the legs it writes with `FOR UPDATE SKIP LOCKED`, re-checking that they are still open, and holds the locks
while it reads their results and writes, so no leg is finished twice. SQLite has no row locks; there one
in-process lock keeps a single writer, which is what the embedded default needs. Whoever else reads a leg and
writes it back (a cancel, a worker's write-back) takes the same lock through `exclusive()`: a refresh holds its
rows across the engine call, so without it the refresh could commit what it read before a cancel over the
cancel's write (a row left CANCELLING for ever, issue 16).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from starlette.concurrency import run_in_threadpool

from backends.interface import CompletionFeed, LegResult, LegState, OneReadObserver
from common.redact import redact_text
from common.settings import Settings
from gateway.engines import metrics
from gateway.engines.dispatcher import Dispatcher, SendOutcome, SendStatus
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegRole, is_shadowed_primary
from gateway.store import open_legs, retention
from gateway.store.models import Leg, Result, utcnow
from gateway.store.shadow_settings import SkipCounter

log = logging.getLogger(__name__)

# A job accepted while its engine was down may find the engine back before its deployments are (a fresh or
# restarted Prefect server whose runner has not registered yet, as during `gateway up`): a missing deployment
# is retried this long after the job was accepted, then the leg fails. At submit time it is a 404 at once.
DEPLOYMENT_GRACE = timedelta(minutes=5)
# With nothing left to prune, look again after this long.
PRUNE_PAUSE = timedelta(minutes=1)
# A pushed leg that cannot be taken yet is tried again after 5 ms, 10 ms ... (about 2.5 s in all), then left
# to the next tick. What holds it is mostly a one-statement write (its send's mark): gone within milliseconds.
PUSH_RETRIES = 9
PUSH_FIRST_DELAY = 0.005
# The outbox is flushed at most this many legs per claim.
OUTBOX_BATCH = 1000
# A relay's claim on the legs it is sending: no other relay takes them for this long. A relay that dies
# mid-send leaves its legs to be sent again after it; a send that hangs longer may be sent twice.
OUTBOX_LEASE = timedelta(minutes=2)
# PostgreSQL NOTIFY channel: a leg for the relay was committed (migration 0009, `leg_relay_due`), or a shadowed
# job's primary leg was just tried for the first time, so its shadow legs are now due (0008, `leg_shadow_due`).
OUTBOX_CHANNEL = "gateway_outbox"


async def _first(*waits: Awaitable[Any]) -> None:
    """Until the first of `waits` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _primary_not_tried_yet() -> Any:
    """True for a shadow leg whose primary leg has not had its first send attempt: the shadow waits for it."""
    primary = aliased(Leg)
    return exists().where(
        primary.result_id == Leg.result_id,
        primary.role == LegRole.PRIMARY.value,
        primary.dispatch_state == DispatchState.PENDING.value,
        primary.dispatch_attempts == 0,
        primary.finished.is_(False),
    )


@dataclass
class TickReport:
    dispatched: int = 0
    deferred: int = 0
    polled: int = 0
    finished: int = 0
    batches: int = 0
    # What the tick's follow-up steps did, by step name (e.g. comparisons written).
    steps: dict[str, int] = field(default_factory=dict)
    # The outbox claim came back full: more legs may be due than one claim takes.
    outbox_full: bool = False

    @property
    def busy(self) -> bool:
        """Worth another tick at once: only a full outbox claim leaves work behind. A tick polls every open leg
        and its steps drain their own backlogs, so legs that finished in it are no reason to tick again (under
        steady load one always does: ticking again at once then kept the reconciler spinning)."""
        return self.outbox_full


@dataclass(frozen=True)
class OutboxLeg:
    """What the relay needs of a leg it sends: read from a claim, or handed over by the request that inserted it
    (`Reconciler.hand_over`), which saves the claim's round trip."""

    id: str
    engine: str
    spec: dict[str, Any]
    role: str
    routing: dict[str, Any] | None
    deadline: datetime | None
    dispatched_at: datetime | None
    infra_retries: int
    # When it was due before the relay leased it: handed back if it was not tried.
    next_attempt_at: datetime | None

    @classmethod
    def of(cls, leg: Leg | dict[str, Any]) -> OutboxLeg:
        get = leg.get if isinstance(leg, dict) else lambda name: getattr(leg, name)
        return cls(
            id=get("id"),
            engine=get("engine"),
            spec=get("spec"),
            role=get("role"),
            routing=get("routing"),
            deadline=get("deadline"),
            dispatched_at=get("dispatched_at"),
            infra_retries=get("infra_retries") or 0,
            next_attempt_at=get("next_attempt_at"),
        )


def _ran_before(leg: OutboxLeg) -> bool:
    """A leg back in the outbox after it was sent (an infrastructure retry): the engine must start it over."""
    return leg.dispatched_at is not None and leg.infra_retries > 0


def _first_shadow_try(leg: Leg) -> bool:
    """A shadow leg's first send: a missing deployment then ends it at once (as a primary's is a 404 at submit),
    an infra error of the shadow side; the grace is for legs that waited in the outbox for their engine."""
    return leg.role == LegRole.SHADOW.value and not leg.dispatch_attempts


# A step run at the end of every tick (e.g. the comparisons of legs that finished): returns how much it did.
TickStep = Callable[[], Awaitable[int]]


class Reconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        dispatcher: Dispatcher,
        settings: Settings,
        batch_size: int = 5000,
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
        # Legs finished because their engine announced it (not by a tick): a figure, and what tests wait on.
        self.pushed_finished = 0
        self._pushed = asyncio.Condition()
        # Engines whose completion feed is listening right now.
        self.following: set[str] = set()
        self._following = asyncio.Condition()
        self._next_prune = datetime.min.replace(tzinfo=UTC)
        self.skips = skips
        # Registered from above (the comparison step is installed by gateway.jobs.bootstrap).
        self.steps: dict[str, TickStep] = {}
        # Set by `wake_outbox` (or a NOTIFY on OUTBOX_CHANNEL) and `hand_over`: flush the outbox now, not at the
        # next tick; with a claim of what is due only after a `wake_outbox`.
        self._outbox_due = asyncio.Event()
        self._claim_wanted = False
        # Outbox flushes run on a wake-up (not by a tick): a figure, and what tests wait on.
        self.woken_flushes = 0
        self._flushed = asyncio.Condition()
        # Set while the PostgreSQL outbox listener listens.
        self.outbox_listening = asyncio.Event()
        # Legs this process's requests inserted under the relay's lease and handed over (`hand_over`).
        self._handed: list[OutboxLeg] = []
        # True while `flush_woken` runs here: only then may a request hand a leg over.
        self.relaying = False

    @property
    def flush_size(self) -> int:
        """Legs per outbox claim: the page size, at most `OUTBOX_BATCH` (a claimed leg stays locked while sent)."""
        return min(self.batch_size, OUTBOX_BATCH)

    # -------------------------------------------------------------------------------------------- plumbing
    @contextlib.asynccontextmanager
    async def _claim(self, stmt: Select[Any]) -> AsyncIterator[tuple[Sequence[Leg], dict[str, Result]]]:
        """One transaction holding a locked batch of legs and their result rows; committed on exit."""
        async with self.sessions() as session, session.begin():
            legs = (await session.execute(self._locked(stmt))).scalars().all()
            rows = await self._rows_for(session, legs) if legs else {}
            yield legs, rows

    @contextlib.asynccontextmanager
    async def _claim_joined(self, where: Any) -> AsyncIterator[tuple[Sequence[Leg], dict[str, Result]]]:
        """`_claim` for `Leg` rows matching `where`, their result rows read by the same statement (one round trip
        less): the legs locked (`SKIP LOCKED`), the rows read as `_rows_for` does, without a lock."""
        stmt = select(Leg, Result).outerjoin(Result, Result.id == Leg.result_id).where(where)
        async with self.sessions() as session, session.begin():
            pairs = (await session.execute(self._locked(stmt))).all()
            legs = [leg for leg, _ in pairs]
            rows = {row.id: row for _, row in pairs if row is not None}
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
            with metrics.reconciler_cycle():
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

    async def prune_step(self, now: datetime) -> int:
        """Retention: one small batch of finished legs past `gateway_retention_days` (none when unset).

        Runs between ticks, at most once a minute while there is nothing to delete, every cycle while there is.
        """
        days = self.settings.gateway_retention_days
        if days is None or now < self._next_prune:
            return 0
        deleted = 0
        async with self._writer():
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

    async def flush_outbox(self, report: TickReport, claim: bool = True) -> None:
        """Send what is due. Three short steps, no transaction open across a send:

        1. lease: the due legs are locked (`SKIP LOCKED`), the ones past their deadline timed out, the others
           given `next_attempt_at = now + OUTBOX_LEASE`, committed at once: no other relay takes them meanwhile,
           and nobody waits on their locks while they are sent;
        2. send them (engines side by side);
        3. record: the sent legs' marks are one guarded UPDATE (`machine.record_sent_many`, only while still
           pending and open); the few that were not sent are locked again and given their retry, fault
           or rejection (only while still pending and open).

        Why: the send used to hold the legs' locks, so a job that finished before its send was recorded (a fast
        task) found its leg locked, and its pushed completion waited for a retry. A relay that dies between
        steps leaves its legs due again when the lease ends: they are sent again (at least once, as before).
        """
        now = utcnow()
        # Legs handed over by this process's requests are leased already: sent without a claim. `claim` off
        # (a wake-up by hand-overs alone) sends only those.
        claimed = await self._lease_due(now, report) if claim else []
        leased, self._handed = [*self._handed, *claimed], []
        if not leased:
            return
        by_engine: dict[str, list[OutboxLeg]] = defaultdict(list)
        for leg in leased:
            by_engine[leg.engine].append(leg)
        # Engines side by side: one that hangs (a shadow engine) never holds up another's legs.
        sent = await asyncio.gather(*(self._send_group(e, group) for e, group in by_engine.items()))
        outcomes = {leg_id: outcome for group in sent for leg_id, outcome in group.items()}
        await self._record_sent(leased, outcomes, report)
        await self._settle_unsent(leased, outcomes, report)

    async def _lease_due(self, now: datetime, report: TickReport) -> list[OutboxLeg]:
        """Step 1 of `flush_outbox`: the due legs, leased (as they were before the lease)."""
        stmt = (
            select(Leg)
            .where(
                Leg.dispatch_state == DispatchState.PENDING,
                Leg.finished.is_(False),
                # Due for another attempt, or past its deadline (a shadow leg never accepted): time it out.
                or_(Leg.next_attempt_at.is_(None), Leg.next_attempt_at <= now, Leg.deadline < now),
                # A shadow leg goes after its primary's first send attempt (its request is still sending it).
                or_(Leg.role != LegRole.SHADOW.value, Leg.deadline < now, ~_primary_not_tried_yet()),
            )
            .order_by(Leg.next_attempt_at)
            .limit(self.flush_size)
        )
        leased: list[OutboxLeg] = []
        async with self.sessions() as session, session.begin():
            legs = (await session.execute(self._locked(stmt))).scalars().all()
            metrics.record_batch("flush", len(legs))
            report.outbox_full = report.outbox_full or len(legs) >= self.flush_size
            expired = [leg for leg in legs if machine.past_deadline(leg, now)]
            if expired:  # a shadow leg never accepted before its deadline
                rows = await self._rows_for(session, expired)
                for leg in expired:
                    machine.time_out(leg, rows.get(leg.result_id or ""), now)
                    report.finished += 1
            leased = [OutboxLeg.of(leg) for leg in legs if not leg.finished]  # the timed-out ones are finished
            if leased:
                await session.execute(
                    update(Leg)
                    .where(Leg.id.in_([leg.id for leg in leased]))
                    .values(next_attempt_at=now + OUTBOX_LEASE)
                    .execution_options(synchronize_session=False)
                )
        return leased

    async def _send_group(self, engine: str, legs: list[OutboxLeg]) -> dict[str, SendOutcome]:
        """The first leg probes the engine; only if it got through are the others sent, all at once. A leg left
        out (its engine is down) has no outcome."""
        first = await self.dispatcher.send(engine, legs[0].spec, legs[0].id, _ran_before(legs[0]))
        outcomes = {legs[0].id: first}
        if (first.status == SendStatus.RETRY and not first.fault) or len(legs) == 1:
            return outcomes  # one failed attempt per engine per tick is enough to know it is still down
        rest = legs[1:]
        sent = await self.dispatcher.send_many(engine, [(leg.id, leg.spec, _ran_before(leg)) for leg in rest])
        outcomes.update((leg.id, outcome) for leg, outcome in zip(rest, sent, strict=True))
        return outcomes

    async def _record_sent(self, legs: list[OutboxLeg], outcomes: dict[str, SendOutcome], report: TickReport) -> None:
        """Step 3 for the legs their engine accepted: their marks in one statement (`machine.record_sent_many`)."""
        now = utcnow()
        deadline = now + timedelta(seconds=self.settings.gateway_leg_deadline_seconds)
        sent = [leg for leg in legs if (o := outcomes.get(leg.id)) is not None and o.status == SendStatus.SENT]
        if not sent:
            return
        marks = [(leg.id, outcomes[leg.id].engine_run_id, now, leg.deadline or deadline) for leg in sent]
        await machine.record_sent_many(self.sessions.kw["bind"], marks)
        report.dispatched += len(sent)
        if any(is_shadowed_primary(leg.role, leg.routing) for leg in sent):
            self.wake_outbox()  # a relayed primary was just sent: its shadow legs are due now

    async def _settle_unsent(self, legs: list[OutboxLeg], outcomes: dict[str, SendOutcome], report: TickReport) -> None:
        """Step 3 for the legs not sent: their retry, fault or rejection, or (not tried: their engine is down)
        their lease handed back; each only while it is still pending and open."""
        unsent = {leg.id: leg for leg in legs if (o := outcomes.get(leg.id)) is None or o.status != SendStatus.SENT}
        if not unsent:
            return
        where = and_(Leg.id.in_(list(unsent)), Leg.dispatch_state == DispatchState.PENDING, Leg.finished.is_(False))
        async with self._claim_joined(where) as (current, rows):
            for leg in current:
                outcome = outcomes.get(leg.id)
                if outcome is None:
                    leg.next_attempt_at = unsent[leg.id].next_attempt_at
                else:
                    self._apply_send(leg, outcome, rows, report)

    def _apply_send(self, leg: Leg, outcome: SendOutcome, rows: dict[str, Result], report: TickReport) -> None:
        """A send that did not go through: try again later, count a fault, or reject the leg."""
        now = utcnow()
        if outcome.status == SendStatus.RETRY and outcome.fault:
            # Not an outage: this job itself fails to dispatch. Bounded, and the reason ends on the leg.
            if machine.retry_fault(leg, rows.get(leg.result_id or ""), outcome.error, now):
                report.finished += 1
            else:
                report.deferred += 1
        elif outcome.status == SendStatus.RETRY or (
            outcome.deployment is not None and now - leg.created_at < DEPLOYMENT_GRACE and not _first_shadow_try(leg)
        ):
            machine.retry_later(leg, outcome.error, now)
            report.deferred += 1
        else:
            machine.reject(leg, rows.get(leg.result_id or ""), now, outcome.error)
            report.finished += 1

    async def poll_open(self, report: TickReport) -> None:
        """Every open leg once: pages in id order (keyset), read without locks; only those whose observation
        changes something (a new phase, progress, the end, a passed deadline) are then locked and written.

        A two-stage pipeline: while one page is being observed (its engine reads, in threads, and the writes of
        what changed), the next page is read from the store, so the store's and the engines' reads overlap.
        """
        after = ""
        observing: asyncio.Task[None] | None = None
        try:
            while True:
                seen = await open_legs.page(self.sessions, DispatchState.SENT.value, after, self.batch_size)
                if observing is not None:
                    await observing
                    observing = None
                metrics.record_batch("poll", len(seen))
                if not seen:
                    return
                report.batches += 1
                after = seen[-1].id
                observing = asyncio.create_task(self._observe(seen, report))
                if len(seen) < self.batch_size:
                    await observing
                    observing = None
                    return
        finally:
            if observing is not None:
                observing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await observing

    async def _observe(self, seen: list[open_legs.ObservedLeg], report: TickReport) -> None:
        """One page: one `poll` per engine (all engines at once), then the changed legs locked and applied."""
        by_engine: dict[str, list[open_legs.ObservedLeg]] = defaultdict(list)
        for leg in seen:
            by_engine[leg.engine].append(leg)
        engines = list(by_engine)
        polled = await asyncio.gather(*(self._poll(name, [leg.id for leg in by_engine[name]]) for name in engines))
        for engine, states in zip(engines, polled, strict=True):
            group = by_engine[engine]
            report.polled += len(group)
            now = utcnow()
            due = [leg.id for leg in group if machine.needs_update(leg, states.get(leg.id), now)]
            if due:
                report.finished += await self._apply_claimed(engine, due, states)

    async def _apply_claimed(self, engine: str, leg_ids: list[str], states: dict[str, LegState]) -> int:
        """Lock the legs (still open; one another reconciler holds is skipped) and apply what was observed."""
        stmt = select(Leg).where(Leg.id.in_(leg_ids), Leg.finished.is_(False), Leg.dispatch_state == DispatchState.SENT)
        async with self._claim(stmt) as (legs, rows):
            return await self._apply(engine, list(legs), states, rows) if legs else 0

    async def _poll(self, engine: str, leg_ids: list[str]) -> dict[str, LegState]:
        """One `poll` round trip; an unreachable engine reads as "no news" (the legs stay as they are)."""
        adapter = self.dispatcher.adapter(engine)
        try:
            states: dict[str, LegState] = await run_in_threadpool(adapter.poll, leg_ids)
        except Exception as exc:  # noqa: BLE001 - an engine outage must not stop the other engines' legs
            log.warning(
                "poll of %d %s legs failed: %s", len(leg_ids), engine, redact_text(repr(exc)), extra={"engine": engine}
            )
            return {}
        return states

    async def _advance_group(self, engine: str, legs: list[Leg], rows: dict[str, Result]) -> int:
        """One poll for the (locked) group, then `_apply`; returns how many finished. An engine that reads states
        and results at once (`OneReadObserver`) is read once: no second round trip for the results."""
        adapter = self.dispatcher.adapter(engine)
        if not isinstance(adapter, OneReadObserver):
            states = await self._poll(engine, [leg.id for leg in legs])
            return await self._apply(engine, legs, states, rows)
        try:
            states, results = await run_in_threadpool(adapter.observe, [leg.id for leg in legs])
        except Exception as exc:  # noqa: BLE001 - like a failed poll: no news, the legs stay as they are
            log.warning(
                "read of %d %s legs failed: %s", len(legs), engine, redact_text(repr(exc)), extra={"engine": engine}
            )
            states, results = {}, {}
        return await self._apply(engine, legs, states, rows, results)

    async def _results(self, engine: str, leg_ids: list[str]) -> dict[str, LegResult]:
        """One `results` round trip; unreadable reads as none (those legs stay open until the next try)."""
        try:
            results: dict[str, LegResult] = await run_in_threadpool(self.dispatcher.adapter(engine).results, leg_ids)
        except Exception as exc:  # noqa: BLE001 - results unreadable now: try again next tick
            log.warning("results of %d %s legs unreadable: %s", len(leg_ids), engine, redact_text(repr(exc)))
            return {}
        return results

    async def _apply(
        self,
        engine: str,
        legs: list[Leg],
        states: dict[str, LegState],
        rows: dict[str, Result],
        results: dict[str, LegResult] | None = None,
    ) -> int:
        """One results call for those that finished (unless `results` were read with the states), then each
        observation; returns how many finished."""
        final_ids = [leg.id for leg in legs if (s := states.get(leg.id)) is not None and s.phase.is_final]
        if results is None:
            results = await self._results(engine, final_ids) if final_ids else {}
        now = utcnow()
        finished = 0
        for leg in legs:
            if leg.dispatch_state == DispatchState.PENDING:
                state = states.get(leg.id)
                if state is None or not state.phase.is_final:
                    continue  # its request is still sending it: nothing to learn yet
                # The engine ran it, so it was sent: record that first (the request's own mark then no-ops).
                machine.mark_sent(leg, state.engine_run_id, now, self.settings.gateway_leg_deadline_seconds)
            if self._advance(leg, states.get(leg.id), results.get(leg.id), rows.get(leg.result_id or ""), now):
                finished += 1
        return finished

    def _advance(
        self, leg: Leg, state: LegState | None, result: LegResult | None, row: Result | None, now: datetime
    ) -> bool:
        """Apply one observation; True when the leg finished."""
        if (
            state is not None
            and state.phase.is_final
            and result is not None
            and machine.report_unreadable(state, result)
        ):
            state, result = machine.as_unreadable(state, result)  # re-run within the budget, then FAILED
        if state is not None and machine.infra_retry_allowed(leg, state, self.settings.gateway_infra_retries):
            reason = state.lost or state.error or state.native
            log.warning("leg %s failed in the infrastructure (%s): running it again", leg.id, redact_text(reason))
            machine.retry_infra(leg, row, now, redact_text(reason))
            return False
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

    # ----------------------------------------------------------------------------------- pushed completions
    async def apply_completions(self, leg_ids: list[str]) -> int:
        """The engine says these legs ended: read and close them now; returns how many finished here.

        A leg still PENDING (the engine finished it before its request recorded the send) is closed all the
        same. Ids of open legs that cannot be taken now (another reconciler holds them) are retried with a
        short backoff; ids that are not open legs (already finished, someone else's task) are dropped.
        """
        todo = list(dict.fromkeys(leg_ids))
        finished = 0
        for attempt in range(PUSH_RETRIES):
            done, todo = await self._refresh_ids(todo)
            finished += done
            if not todo:
                break
            await asyncio.sleep(PUSH_FIRST_DELAY * 2**attempt)
        async with self._pushed:
            self.pushed_finished += finished
            self._pushed.notify_all()
        return finished

    async def _refresh_ids(self, leg_ids: list[str]) -> tuple[int, list[str]]:
        """One pass: (finished, open legs not taken), in batches of `batch_size`.

        The engine is read after the legs are locked, not beside the lock: a read in a thread while the event
        loop takes the locks made both wait for the GIL (measured: 15.8 against 8.6 ms per no-op job)."""
        finished = 0
        untaken: list[str] = []
        for start in range(0, len(leg_ids), self.batch_size):
            chunk = leg_ids[start : start + self.batch_size]
            # PENDING too: the engine may finish a leg before its request recorded the send (see `_apply`).
            where = and_(Leg.id.in_(chunk), Leg.finished.is_(False), Leg.dispatch_state != DispatchState.FAILED)
            async with self._writer():
                async with self._claim_joined(where) as (legs, rows):
                    by_engine: dict[str, list[Leg]] = defaultdict(list)
                    for leg in legs:
                        by_engine[leg.engine].append(leg)
                    for engine, group in by_engine.items():
                        finished += await self._advance_group(engine, group, rows)
                taken = {leg.id for leg in legs}
                if len(taken) < len(chunk):
                    async with self.sessions() as session:
                        still_open = select(Leg.id).where(
                            Leg.id.in_([i for i in chunk if i not in taken]), Leg.finished.is_(False)
                        )
                        untaken.extend((await session.execute(still_open)).scalars())
        return finished, untaken

    async def wait_pushed(self, count: int, timeout: float) -> int:
        """Until at least `count` legs were finished by pushed completions (or `timeout`); returns the count."""
        async with self._pushed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pushed.wait_for(lambda: self.pushed_finished >= count), timeout)
            return self.pushed_finished

    async def wait_following(self, engine: str, timeout: float) -> bool:
        """Until `engine`'s feed listens (or `timeout`): from then on its completions are pushed."""
        async with self._following:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._following.wait_for(lambda: engine in self.following), timeout)
            return engine in self.following

    async def _set_following(self, engine: str, on: bool) -> None:
        async with self._following:
            (self.following.add if on else self.following.discard)(engine)
            self._following.notify_all()

    async def follow_completions(self, stop: asyncio.Event) -> None:
        """Follow every engine's completion feed (those that have one) until `stop`."""
        feeds = [
            (name, a)
            for name in self.dispatcher.known_engines()
            if isinstance(a := self.dispatcher.adapter(name), CompletionFeed)
        ]
        if feeds:
            await asyncio.gather(*(self._follow(name, feed, stop) for name, feed in feeds))

    async def _follow(self, engine: str, feed: CompletionFeed, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async for leg_ids in feed.completions():
                    if engine not in self.following:
                        await self._set_following(engine, True)
                    if leg_ids:
                        await self.apply_completions(leg_ids)
                return  # the feed ended by itself: this setup cannot push, polling alone applies
            except Exception as exc:  # noqa: BLE001 - a lost feed is reopened; polling covers the gap
                log.warning("%s completion feed lost: %s", engine, redact_text(repr(exc)))
            finally:
                await self._set_following(engine, False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.gateway_reconcile_interval)

    # ------------------------------------------------------------------------------------------ prompt outbox
    def hand_over(self, leg: dict[str, Any]) -> None:
        """A leg just committed by this process under the relay's lease (`OUTBOX_LEASE`, its `next_attempt_at`):
        sent by the next flush, with no claim to read it back. Only while `relaying`; if this process stops
        before the send, the lease ends and any reconciler sends it."""
        self._handed.append(OutboxLeg.of({**leg, "next_attempt_at": leg["created_at"]}))
        self._outbox_due.set()

    def wake_outbox(self) -> None:
        """Flush the outbox now (legs just became due); cheap, coalesced, a no-op if no loop runs here."""
        self._claim_wanted = True
        self._outbox_due.set()

    async def flush_now(self, claim: bool = True) -> TickReport:
        """One outbox flush outside the ticks (what a wake-up runs): the handed-over legs and (`claim`) the due
        ones sent, shadow legs among them."""
        report = TickReport()
        async with self._writer():
            await self.flush_outbox(report, claim)
        return report

    async def flush_woken(self, stop: asyncio.Event) -> None:
        """Flush the outbox each time it is woken, until `stop`; wake-ups during a flush make one more flush."""
        self.relaying = True
        try:
            await self._flush_woken(stop)
        finally:
            self.relaying = False
            if self._handed:  # stopped before their send: they wait for their lease to end
                log.warning("%d handed-over legs left to the outbox's next claim", len(self._handed))

    async def _flush_woken(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _first(self._outbox_due.wait(), stop.wait())
            if stop.is_set():
                return
            self._outbox_due.clear()
            claim, self._claim_wanted = self._claim_wanted, False
            try:
                report = await self.flush_now(claim)
            except Exception as exc:  # noqa: BLE001 - the ticks' flush is the safety net
                log.warning("outbox flush failed: %s", redact_text(repr(exc)))
                continue
            async with self._flushed:
                self.woken_flushes += 1
                self._flushed.notify_all()
            if report.outbox_full:
                self.wake_outbox()  # a full claim: there may be more

    async def wait_woken_flushes(self, count: int, timeout: float) -> int:
        """Until at least `count` woken flushes ran (or `timeout`); returns how many did."""
        async with self._flushed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flushed.wait_for(lambda: self.woken_flushes >= count), timeout)
            return self.woken_flushes

    async def listen_outbox(self, stop: asyncio.Event) -> None:
        """On PostgreSQL, LISTEN on `OUTBOX_CHANNEL` and wake the outbox flush per notice (reopened if lost)."""
        bind = self.sessions.kw.get("bind")
        if not self.is_postgres or bind is None:
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
                    await conn.add_listener(OUTBOX_CHANNEL, lambda *_args: self.wake_outbox())
                    self.outbox_listening.set()
                    self.wake_outbox()  # whatever became due while nobody listened
                    await _first(stop.wait(), lost.wait())
                finally:
                    self.outbox_listening.clear()
                    if not conn.is_closed():
                        conn.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.gateway_reconcile_interval)

    # ---------------------------------------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Ticks every `gateway_reconcile_interval` (at once again while busy); beside them the completion feeds,
        the outbox's wake-ups and (PostgreSQL) its listener."""
        beside = [
            asyncio.create_task(self.follow_completions(stop), name="completion-feeds"),
            asyncio.create_task(self.flush_woken(stop), name="outbox-wake-ups"),
            asyncio.create_task(self.listen_outbox(stop), name="outbox-listener"),
        ]
        try:
            await self._tick_loop(stop)
        finally:
            for task in beside:
                task.cancel()
            for task in beside:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _tick_loop(self, stop: asyncio.Event) -> None:
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
