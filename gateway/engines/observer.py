"""The observer: moves open legs forward by what their engines say — poll, apply, refresh.

Every open leg is polled, batch after batch in id order until none is left, so no leg waits longer than one full
cycle however many others stay unchanged; each batch costs one unlocked read of the legs' observed columns, one
`poll` call per engine and, for the legs whose observation changes something, one locked read and one `results`
call per engine for those that finished. An unchanged leg is never locked or written, which is what keeps a
cycle over 10,000 waiting legs short. Deadlines are enforced here: a leg past its deadline is closed as timed out
and no longer waited on. Every transition goes through `gateway.legs.machine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from datetime import datetime

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from backends.interface import LegResult, LegState, OneReadObserver
from common.redact import redact_text
from common.settings import Settings
from gateway.engines import metrics
from gateway.engines.dispatcher import Dispatcher
from gateway.engines.leg_claims import LegClaims, LegRoom, TickReport
from gateway.legs import machine
from gateway.legs.states import DispatchState
from gateway.store import open_legs
from gateway.store.models import Leg, Result, utcnow

log = logging.getLogger(__name__)


class Observer(LegRoom):
    """Reads engines for open legs and applies what changed, on a tick or for one leg on demand."""

    def __init__(
        self, claims: LegClaims, dispatcher: Dispatcher, settings: Settings, hooks: machine.FinishHooks
    ) -> None:
        super().__init__(claims, dispatcher, settings, hooks)
        # Legs timed out in a claim not yet committed: cancelled on their engines once it is (`cancel_given_up`).
        self._given_up: list[tuple[str, str]] = []

    async def poll_open(self, report: TickReport) -> None:
        """Every open leg once: pages in id order (keyset), read without locks; only those whose observation
        changes something (a new phase, progress, the end, a passed deadline) are then locked and written.

        A two-stage pipeline: while one page is being observed (its engine reads, in threads, and the writes of
        what changed), the next page is read from the store, so the store's and the engines' reads overlap.
        """
        after = ""
        observing: asyncio.Task[None] | None = None
        batch_size = self.claims.batch_size
        try:
            while True:
                seen = await open_legs.page(self.claims.sessions, DispatchState.SENT.value, after, batch_size)
                if observing is not None:
                    await observing
                    observing = None
                metrics.record_batch("poll", len(seen))
                if not seen:
                    return
                report.batches += 1
                after = seen[-1].id
                observing = asyncio.create_task(self._observe(seen, report))
                if len(seen) < batch_size:
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
        async with self.claims.claim(stmt) as (legs, rows):
            finished = await self._apply(engine, list(legs), states, rows) if legs else 0
        await self.cancel_given_up()
        return finished

    async def cancel_given_up(self) -> None:
        """Cancel on their engines the legs timed out here, once their end is committed (issue 24).

        Why: the gateway's answer for such a leg is final (FAILED, `DeadlineExceeded`), but the run went on: Prefect
        flow runs completed after their row said FAILED and held runner slots meanwhile. A cancel that fails is
        logged and not retried (the run then ends by itself, or at the engine's own time limit)."""
        given_up, self._given_up = self._given_up, []
        if not given_up:
            return

        async def cancel(engine: str, leg_id: str) -> None:
            try:
                await run_in_threadpool(self.dispatcher.adapter(engine).cancel, leg_id)
            except Exception as exc:  # noqa: BLE001 - best effort: the leg is closed either way
                log.warning("leg %s timed out; its cancel on %s failed: %s", leg_id, engine, redact_text(repr(exc)))

        await asyncio.gather(*(cancel(engine, leg_id) for engine, leg_id in given_up))

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

    async def advance_group(self, engine: str, legs: list[Leg], rows: dict[str, Result]) -> int:
        """One read of the engine for a (locked) group, then `_apply`; returns how many finished. An engine that
        reads states and results at once (`OneReadObserver`) is read once: no second round trip for the results."""
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
                machine.adopt_run_id(leg, rows.get(leg.result_id or ""))
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
            machine.finish_observed(leg, row, state, result, now, hooks=self.hooks)
            return True
        if state is not None:
            machine.apply_state(leg, state, row)
        if machine.past_deadline(leg, now):
            machine.time_out(leg, row, now, hooks=self.hooks, busy=bool(state is not None and state.busy))
            self._given_up.append((leg.engine, leg.id))  # cancelled on its engine once this is committed
            return True
        return False

    # ------------------------------------------------------------------------------------ one leg, on demand
    async def refresh(self, leg_id: str) -> None:
        """A status read of an in-flight leg: poll that one leg now (skipped if someone else holds it)."""
        stmt = select(Leg).where(Leg.id == leg_id, Leg.finished.is_(False), Leg.dispatch_state == DispatchState.SENT)
        async with self.claims.writer(wait=False) as acquired:
            if not acquired:
                return
            async with self.claims.claim(stmt) as (legs, rows):
                if legs:
                    await self.advance_group(legs[0].engine, list(legs), rows)
        await self.cancel_given_up()
