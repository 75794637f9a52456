"""Admin API of the cutover: list migrations, change one (set/promote/demote/rollback/configure, with dry run),
read its history, accept or withdraw a mismatch cluster, pause or resume its automation, and see how a job was
routed. Thin: the services are `gateway.jobs.cutover_changes`, `gateway.jobs.cutover_triage` and
`gateway.jobs.cutover_holds`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.auth import GuardedRoute
from gateway.api.deps import Admin, State
from gateway.cutover.hold import HoldAction
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.jobs import cutover_holds as holds
from gateway.jobs import cutover_triage as triage
from gateway.jobs.scorecard import scorecard
from gateway.schemas import CutoverAcceptanceIn, CutoverChangeIn, CutoverHoldIn

router = APIRouter(route_class=GuardedRoute)


@router.get("/admin/cutover")
async def list_migrations(state: State, principal: Admin) -> list[dict[str, Any]]:
    return await service.list_migrations(state.sessions)


@router.get("/cutover/scorecard")
async def get_scorecard(state: State, principal: Admin) -> list[dict[str, Any]]:
    """Per migration: stage, parity, per-engine errors and run times, the gate's needs, the open clusters."""
    return await scorecard(state.sessions)


@router.post("/admin/cutover/evaluate")
async def evaluate_all(state: State, principal: Admin, dry_run: bool = False) -> list[dict[str, Any]]:
    """Evaluate every migration now and take the policy's step (unless `dry_run`)."""
    runs = await gates.evaluate_all(state.sessions, dry_run=dry_run, liveness=state.health.alive)
    return [run.to_dict() for run in runs]


@router.post("/admin/cutover/{scope}/{key}/evaluate")
async def evaluate_one(scope: Scope, key: str, state: State, principal: Admin, dry_run: bool = False) -> dict[str, Any]:
    return await service.evaluate_scope(state.sessions, scope, key, dry_run, liveness=state.health.alive)


@router.get("/admin/cutover/history")
async def all_history(state: State, principal: Admin, limit: int = 50) -> list[dict[str, Any]]:
    return await service.history(state.sessions, None, None, limit)


@router.get("/admin/cutover/{scope}/{key}")
async def get_migration(scope: Scope, key: str, state: State, principal: Admin) -> dict[str, Any]:
    return await service.migration(state.sessions, scope, key)


@router.get("/admin/cutover/{scope}/{key}/history")
async def scope_history(
    scope: Scope, key: str, state: State, principal: Admin, limit: int = 50
) -> list[dict[str, Any]]:
    return await service.history(state.sessions, scope, key, limit)


@router.get("/admin/cutover/{scope}/{key}/acceptances")
async def scope_acceptances(scope: Scope, key: str, state: State, principal: Admin) -> list[dict[str, Any]]:
    """Every accepted mismatch cluster of this migration, expired ones too (`active` says which count)."""
    return await triage.list_acceptances(state.sessions, scope, key)


@router.put("/admin/cutover/{scope}/{key}/clusters/{signature}/acceptance")
async def accept_cluster(
    scope: Scope, key: str, signature: str, body: CutoverAcceptanceIn, state: State, principal: Admin
) -> dict[str, Any]:
    """Accept a cluster as an intended difference until its expiry: it stops counting against the gate."""
    return await triage.accept_cluster(
        state.sessions, scope, key, signature, principal.username, body.note, body.expires_at, body.expires_in
    )


@router.delete("/admin/cutover/{scope}/{key}/clusters/{signature}/acceptance")
async def unaccept_cluster(
    scope: Scope, key: str, signature: str, state: State, principal: Admin, reason: str = ""
) -> dict[str, Any]:
    """Withdraw an acceptance: the cluster counts against the gate again."""
    return await triage.unaccept_cluster(state.sessions, scope, key, signature, principal.username, reason)


@router.get("/admin/cutover/{scope}/{key}/hold")
async def get_hold(scope: Scope, key: str, state: State, principal: Admin) -> dict[str, Any]:
    """Whether automation is paused (an operator's rollback, demotion or pause) and by what."""
    return await holds.hold_of_scope(state.sessions, scope, key)


@router.post("/admin/cutover/{scope}/{key}/pause")
async def pause(scope: Scope, key: str, body: CutoverHoldIn, state: State, principal: Admin) -> dict[str, Any]:
    """Pause automatic promotion until resumed; the gate still demotes a failing answering stage."""
    return await holds.set_hold(state.sessions, scope, key, HoldAction.PAUSE, principal.username, body.reason)


@router.post("/admin/cutover/{scope}/{key}/resume")
async def resume(scope: Scope, key: str, body: CutoverHoldIn, state: State, principal: Admin) -> dict[str, Any]:
    """Let the gate promote again after an operator's rollback, demotion or pause."""
    return await holds.set_hold(state.sessions, scope, key, HoldAction.RESUME, principal.username, body.reason)


def _change_route(action: Action) -> Any:
    """The route of one action. One path per action, not `{action}`: a catch-all segment would also match
    `.../history` and `.../acceptances`, whose undeclared POST must answer 405, not a 422 about the action."""

    async def change(scope: Scope, key: str, body: CutoverChangeIn, state: State, principal: Admin) -> dict[str, Any]:
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

    change.__name__ = f"change_{action.value}"
    return change


for _action in Action:
    router.add_api_route(
        f"/admin/cutover/{{scope}}/{{key}}/{_action.value}",
        _change_route(_action),
        methods=["POST"],
        summary=f"Cutover: {_action.value}",
    )


@router.get("/admin/results/{result_id}/routing")
async def result_routing(result_id: str, state: State, principal: Admin) -> dict[str, Any]:
    """Every leg of a job with its engine and the routing decision recorded when it was admitted (property 7)."""
    return await service.result_routing(state.sessions, result_id)
