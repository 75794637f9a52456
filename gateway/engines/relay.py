"""The outbox relay: sends the legs their engine has not accepted yet — lease, send, record, hand-over.

The outbox is the relay for every leg its request does not send: the primary leg of a job for an engine that
cannot refuse it (Celery, see `backends.interface.EngineAdapter.refuses_at_submit`), committed due at once,
and every shadow leg. A shadow leg is due at once too, but is held back until its primary's first send was tried
(so it is dispatched after the primary). `wake_outbox()` flushes the outbox promptly, outside the ticks: the API
calls it in-process after such a commit, and on PostgreSQL the database announces the same moments to every
reconciler (`gateway.engines.outbox_listener`). A wake-up flushes at once; wake-ups that arrive during a flush
make one more flush, so a burst of jobs is sent in a few claims, not one each. The reconciler's ticks flush too:
the safety net for a lost notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import aliased

from common.redact import redact_text
from common.settings import Settings
from gateway.engines import metrics
from gateway.engines.dispatcher import Dispatcher, SendOutcome, SendStatus
from gateway.engines.leg_claims import LegClaims, TickReport
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegRole, is_shadowed_primary
from gateway.store import leg_writer
from gateway.store.models import Leg, Result, utcnow
from gateway.store.outbox import OUTBOX_BATCH, OUTBOX_LEASE, OutboxLeg

log = logging.getLogger(__name__)

# A job accepted while its engine was down may find the engine back before its deployments are (a fresh or
# restarted Prefect server whose runner has not registered yet, as during `gateway up`): a missing deployment
# is retried this long after the job was accepted, then the leg fails. At submit time it is a 404 at once.
DEPLOYMENT_GRACE = timedelta(minutes=5)


async def first_done(*waits: Awaitable[Any]) -> None:
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


def _ran_before(leg: OutboxLeg) -> bool:
    """A leg back in the outbox after it was sent (an infrastructure retry): the engine must start it over."""
    return leg.dispatched_at is not None and leg.infra_retries > 0


def _first_shadow_try(leg: Leg) -> bool:
    """A shadow leg's first send: a missing deployment then ends it at once (as a primary's is a 404 at submit),
    an infra error of the shadow side; the grace is for legs that waited in the outbox for their engine."""
    return leg.role == LegRole.SHADOW.value and not leg.dispatch_attempts


class Relay:
    """Sends due legs through the dispatcher, on a tick or as soon as it is woken."""

    def __init__(
        self, claims: LegClaims, dispatcher: Dispatcher, settings: Settings, hooks: machine.FinishHooks
    ) -> None:
        self.claims = claims
        self.hooks = hooks
        self.dispatcher = dispatcher
        self.settings = settings
        # Set by `wake_outbox` (or a NOTIFY on OUTBOX_CHANNEL) and `hand_over`: flush the outbox now, not at the
        # next tick; with a claim of what is due only after a `wake_outbox`.
        self._outbox_due = asyncio.Event()
        self._claim_wanted = False
        # Outbox flushes run on a wake-up (not by a tick): a figure, and what tests wait on.
        self.woken_flushes = 0
        self._flushed = asyncio.Condition()
        # Legs this process's requests inserted under the relay's lease and handed over (`hand_over`).
        self._handed: list[OutboxLeg] = []
        # True while `flush_woken` runs here: only then may a request hand a leg over.
        self.relaying = False

    @property
    def flush_size(self) -> int:
        """Legs per outbox claim: the page size, at most `OUTBOX_BATCH` (a claimed leg stays locked while sent)."""
        return min(self.claims.batch_size, OUTBOX_BATCH)

    async def flush_outbox(self, report: TickReport, claim: bool = True) -> None:
        """Send what is due. Three short steps, no transaction open across a send:

        1. lease: the due legs are locked (`SKIP LOCKED`), the ones past their deadline timed out, the others
           given `next_attempt_at = now + OUTBOX_LEASE`, committed at once: no other relay takes them meanwhile,
           and nobody waits on their locks while they are sent;
        2. send them (engines side by side);
        3. record: the sent legs' marks are one guarded UPDATE (`leg_writer.record_sent_many`, only while still
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
        async with self.claims.sessions() as session, session.begin():
            legs = (await session.execute(self.claims.locked(stmt))).scalars().all()
            metrics.record_batch("flush", len(legs))
            report.outbox_full = report.outbox_full or len(legs) >= self.flush_size
            expired = [leg for leg in legs if machine.past_deadline(leg, now)]
            if expired:  # a shadow leg never accepted before its deadline
                rows = await self.claims.rows_for(session, expired)
                for leg in expired:
                    machine.time_out(leg, rows.get(leg.result_id or ""), now, hooks=self.hooks)
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
        """Step 3 for the legs their engine accepted: their marks in one statement (`leg_writer.record_sent_many`)."""
        now = utcnow()
        deadline = now + timedelta(seconds=self.settings.gateway_leg_deadline_seconds)
        sent = [leg for leg in legs if (o := outcomes.get(leg.id)) is not None and o.status == SendStatus.SENT]
        if not sent:
            return
        marks = [(leg.id, outcomes[leg.id].engine_run_id, now, leg.deadline or deadline) for leg in sent]
        await leg_writer.record_sent_many(self.claims.sessions.kw["bind"], marks)
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
        async with self.claims.claim_joined(where) as (current, rows):
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
            if machine.retry_fault(leg, rows.get(leg.result_id or ""), outcome.error, now, hooks=self.hooks):
                report.finished += 1
            else:
                report.deferred += 1
        elif outcome.status == SendStatus.RETRY or (
            outcome.deployment is not None and now - leg.created_at < DEPLOYMENT_GRACE and not _first_shadow_try(leg)
        ):
            machine.retry_later(leg, outcome.error, now)
            report.deferred += 1
        else:
            machine.reject(leg, rows.get(leg.result_id or ""), now, outcome.error, hooks=self.hooks)
            report.finished += 1

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
        async with self.claims.writer():
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
            await first_done(self._outbox_due.wait(), stop.wait())
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
