"""Replay: finished jobs run again on an engine, as shadow legs of the original jobs (evidence before live traffic).

A replayed job keeps its frozen inputs: the primary leg's spec names the student's and the reference's
repositories at their commits, so the replay runs exactly what the primary ran. The replay leg is a shadow leg
(kind `replay`): fenced like any shadow (no row write, `submit` false), polled by the reconciler, and compared
by the same compare step when it ends. A job that already has a replay on the engine is skipped, so an
interrupted replay picks up where it stopped. Each leg is written before it is sent (the outbox takes over if
the process dies in between).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import aliased

from backends.registry import UnknownEngineError, canonical_engine
from common.legacy import ResultStatus
from gateway.engines.shadowing import ExperimentKind
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.submit import dispatch_after_commit
from gateway.jobs.submit_plan import shadow_spec
from gateway.legs.machine import new_leg
from gateway.legs.states import LegRole
from gateway.runtime import GatewayState
from gateway.store import lookup
from gateway.store.models import Leg, Result, new_id, utcnow
from gateway.store.runs import names_leg

REPLAYABLE = (int(ResultStatus.COMPLETED), int(ResultStatus.FAILED))


@dataclass(frozen=True)
class ReplayRequest:
    engine: str
    content: str | None = None  # course content id or path
    backend: str | None = None  # execution backend slug or id
    since: datetime | None = None
    limit: int = 100
    rate: float = 1.0  # legs per second
    deadline_seconds: int = 1800
    properties: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReplayStep:
    """One job handled: its row, the new leg (None when skipped) and how many jobs are planned in all."""

    result_id: str
    leg_id: str | None
    planned: int


async def _jobs(state: GatewayState, request: ReplayRequest, engine: str) -> list[tuple[Result, Leg]]:
    """Finished jobs in scope, oldest first, with their primary leg; those already replayed on `engine` left out."""
    replay = aliased(Leg)
    already = exists().where(
        and_(
            replay.result_id == Result.id,
            replay.role == LegRole.SHADOW,
            replay.engine == engine,
            replay.routing["experiment"].as_string() == ExperimentKind.REPLAY.value,
        )
    )
    stmt = (
        select(Result, Leg)
        .join(Leg, names_leg(Result.test_system_id))
        .where(Result.status.in_(REPLAYABLE), Leg.finished.is_(True), ~already)
        .order_by(Result.created_at, Result.id)
        .limit(request.limit)
    )
    async with state.sessions() as session:
        if request.content:
            content = await lookup.content_id(session, request.content)
            if content is None:
                raise BadJobRequest(f"Course content not found: {request.content}")
            stmt = stmt.where(Result.course_content_id == content)
        if request.backend:
            backend = await lookup.backend_id(session, request.backend)
            if backend is None:
                raise BadJobRequest(f"Execution backend not found: {request.backend}")
            stmt = stmt.where(Result.execution_backend_id == backend)
        if request.since:
            stmt = stmt.where(Result.created_at >= request.since)
        return [(row, leg) for row, leg in (await session.execute(stmt)).all()]


async def replay(state: GatewayState, request: ReplayRequest) -> AsyncIterator[ReplayStep]:
    """Write and send one replay leg per job, at most `rate` per second; yields after each job."""
    if not request.content and not request.backend:
        raise BadJobRequest("give a course content or an execution backend to replay")
    try:
        engine = canonical_engine(request.engine)
    except UnknownEngineError:
        raise BadJobRequest(f"unknown engine: {request.engine}") from None
    jobs = await _jobs(state, request, engine)
    interval = 1.0 / request.rate if request.rate > 0 else 0.0
    next_at = time.monotonic()
    for row, primary in jobs:
        wait = next_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # the rate limit
        next_at = max(next_at, time.monotonic()) + interval
        if primary.spec.get("kind") != "student_testing":
            yield ReplayStep(row.id, None, len(jobs))
            continue
        now = utcnow()
        values = new_leg(
            leg_id=new_id(),
            result_id=row.id,
            role=LegRole.SHADOW,
            engine=engine,
            task_name=primary.task_name,
            spec=shadow_spec(primary.spec, request.properties or {}),
            routing={
                "experiment": ExperimentKind.REPLAY.value,
                "primary_leg": primary.id,
                "replayed_at": now.isoformat(),
            },
            now=now,
            due_at=now + timedelta(seconds=15),
            deadline=now + timedelta(seconds=request.deadline_seconds),
        )
        async with state.sessions() as session, session.begin():
            session.add(Leg(**values))
        await dispatch_after_commit(state, values["id"], engine, values["spec"], None, shadow=True)
        yield ReplayStep(row.id, values["id"], len(jobs))
