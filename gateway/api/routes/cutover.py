"""Admin API of the cutover: list migrations, change one (set/promote/demote/rollback/configure, with dry run),
read its history, accept or withdraw a mismatch cluster, and see how a job was routed. Thin: the services are
`gateway.jobs.cutover_changes` and `gateway.jobs.cutover_triage`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from gateway.api.auth import require
from gateway.api.deps import Login, State
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.jobs import cutover_triage as triage
from gateway.jobs.errors import NotFound
from gateway.jobs.scorecard import scorecard
from gateway.schemas import CutoverAcceptanceIn, CutoverChangeIn
from gateway.store import cutover_configs as store
from gateway.store.models import Leg, Result

router = APIRouter()


@router.get("/admin/cutover")
async def list_migrations(state: State, principal: Login) -> list[dict[str, Any]]:
    require(principal, "admin")
    return [service.migration_dict(row) for row in await store.all_migrations(state.sessions)]


@router.get("/cutover/scorecard")
async def get_scorecard(state: State, principal: Login) -> list[dict[str, Any]]:
    """Per migration: stage, parity, per-engine errors and run times, the gate's needs, the open clusters."""
    require(principal, "admin")
    return await scorecard(state.sessions)


@router.post("/admin/cutover/evaluate")
async def evaluate_all(state: State, principal: Login, dry_run: bool = False) -> list[dict[str, Any]]:
    """Evaluate every migration now and take the policy's step (unless `dry_run`)."""
    require(principal, "admin")
    return [run.to_dict() for run in await gates.evaluate_all(state.sessions, dry_run=dry_run)]


@router.post("/admin/cutover/{scope}/{key}/evaluate")
async def evaluate_one(scope: Scope, key: str, state: State, principal: Login, dry_run: bool = False) -> dict[str, Any]:
    require(principal, "admin")
    _ref, config = await service.current(state.sessions, scope, key)
    if config is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return (await gates.evaluate_one(state.sessions, config, dry_run=dry_run)).to_dict()


@router.get("/admin/cutover/history")
async def all_history(state: State, principal: Login, limit: int = 50) -> list[dict[str, Any]]:
    require(principal, "admin")
    return [service.event_dict(e) for e in await store.history(state.sessions, limit=max(1, min(limit, 1000)))]


@router.get("/admin/cutover/{scope}/{key}")
async def get_migration(scope: Scope, key: str, state: State, principal: Login) -> dict[str, Any]:
    require(principal, "admin")
    ref, _config = await service.current(state.sessions, scope, key)
    async with state.sessions() as session:
        row = await store.load(session, scope, ref.scope_id)
    if row is None:
        raise NotFound(f"no migration for {scope.value} {key}")
    return service.migration_dict(row)


@router.get("/admin/cutover/{scope}/{key}/history")
async def scope_history(
    scope: Scope, key: str, state: State, principal: Login, limit: int = 50
) -> list[dict[str, Any]]:
    require(principal, "admin")
    ref, _config = await service.current(state.sessions, scope, key)
    events = await store.history(state.sessions, scope, ref.scope_id, limit=max(1, min(limit, 1000)))
    return [service.event_dict(e) for e in events]


@router.get("/admin/cutover/{scope}/{key}/acceptances")
async def scope_acceptances(scope: Scope, key: str, state: State, principal: Login) -> list[dict[str, Any]]:
    """Every accepted mismatch cluster of this migration, expired ones too (`active` says which count)."""
    require(principal, "admin")
    return await triage.list_acceptances(state.sessions, scope, key)


@router.put("/admin/cutover/{scope}/{key}/clusters/{signature}/acceptance")
async def accept_cluster(
    scope: Scope, key: str, signature: str, body: CutoverAcceptanceIn, state: State, principal: Login
) -> dict[str, Any]:
    """Accept a cluster as an intended difference until its expiry: it stops counting against the gate."""
    require(principal, "admin")
    return await triage.accept_cluster(
        state.sessions, scope, key, signature, principal.username, body.note, body.expires_at, body.expires_in
    )


@router.delete("/admin/cutover/{scope}/{key}/clusters/{signature}/acceptance")
async def unaccept_cluster(
    scope: Scope, key: str, signature: str, state: State, principal: Login, reason: str = ""
) -> dict[str, Any]:
    """Withdraw an acceptance: the cluster counts against the gate again."""
    require(principal, "admin")
    return await triage.unaccept_cluster(state.sessions, scope, key, signature, principal.username, reason)


@router.post("/admin/cutover/{scope}/{key}/{action}")
async def change(
    scope: Scope, key: str, action: Action, body: CutoverChangeIn, state: State, principal: Login
) -> dict[str, Any]:
    require(principal, "admin")
    values = body.model_dump()
    stage = values.pop("stage")
    result = await service.change_migration(
        state.sessions,
        scope,
        key,
        action,
        actor=principal.username,
        stage=Stage(stage) if stage else None,
        **values,
    )
    return result.to_dict()


@router.get("/admin/results/{result_id}/routing")
async def result_routing(result_id: str, state: State, principal: Login) -> dict[str, Any]:
    """Every leg of a job with its engine and the routing decision recorded when it was admitted (property 7)."""
    require(principal, "admin")
    async with state.sessions() as session:
        row = await session.get(Result, result_id)
        if row is None:
            raise NotFound("Result not found")
        legs = (await session.execute(select(Leg).where(Leg.result_id == result_id).order_by(Leg.created_at))).scalars()
        return {
            "result_id": result_id,
            "test_system_id": row.test_system_id,
            "legs": [
                {"id": leg.id, "role": leg.role, "engine": leg.engine, "phase": leg.phase, "routing": leg.routing}
                for leg in legs
            ],
        }
