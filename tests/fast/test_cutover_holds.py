"""A stage's evidence is its own traffic; an operator's rollback holds automation until resumed (engine-free)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.compare.step import routed_by_record
from gateway.cutover.hold import GATE_ACTOR, HoldAction, LogEntry, hold_of
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import CutoverConfig, Scope, Stage
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.jobs.cutover_holds import hold_status, set_hold
from gateway.jobs.errors import Conflict
from gateway.jobs.scorecard import scorecard
from gateway.runtime import GatewayState
from gateway.store import cutover_configs as store
from gateway.store.models import Comparison, Leg, new_id, utcnow
from tests.fast.conftest import ADMIN, MemoryGateway, body
from tests.fast.test_cutover_gates import FAST, config_of

pytestmark = pytest.mark.fast

T0 = datetime(2026, 12, 7, 12, 0, 0)


def entry(action: str, actor: str = "alice", minutes: int = 0, frm: str = "canary", to: str = "shadow") -> LogEntry:
    return LogEntry(action, actor, T0 + timedelta(minutes=minutes), frm, to)


@pytest.mark.parametrize(
    "log,paused_by",
    [
        ([], None),
        ([entry("rollback")], "rollback"),  # an operator's rollback holds
        ([entry("demote")], "demote"),
        ([entry("demote", actor=GATE_ACTOR)], None),  # the gate's own demotion does not
        ([entry("set", frm="new_primary", to="canary")], "set"),  # a manual step back by `set`
        ([entry("set", frm="shadow", to="canary")], None),  # forward: no hold
        ([entry("resume", minutes=2), entry("rollback", minutes=1)], None),  # newest first: resumed
        ([entry("rollback", minutes=2), entry("resume", minutes=1)], "rollback"),
        ([entry("pause", to="canary", frm="canary")], "pause"),
        ([entry("promote"), entry("rollback")], "rollback"),  # a promotion does not resume
    ],
)
def test_the_newest_hold_event_decides(log: list[LogEntry], paused_by: str | None) -> None:
    hold = hold_of(log)
    assert (hold.action if hold else None) == paused_by


async def jobs(state: GatewayState, n: int) -> list[tuple[str, str]]:
    """n jobs submitted now (routed by the migration as it is now): (result id, primary leg id)."""
    from gateway.jobs.submit import submit_test

    out = []
    for _ in range(n):
        row, _ = await submit_test(state, ADMIN, body(new_id()[:8], content="week2/ex1"))
        async with state.sessions() as session:
            stmt = select(Leg.id).where(Leg.result_id == row.id, Leg.role == "primary")
            out.append((row.id, (await session.execute(stmt)).scalar_one()))
    return out


async def compared(state: GatewayState, config: CutoverConfig, routed: list[tuple[str, str]], outcome: str) -> None:
    """A comparison for each job, written now (whenever its job was routed)."""
    async with state.sessions() as session, session.begin():
        for result_id, leg_id in routed:
            leg = await session.get(Leg, leg_id)
            assert leg is not None
            session.add(
                Comparison(
                    id=new_id(), result_id=result_id, primary_leg_id=leg_id, shadow_leg_id=new_id(), kind="shadow",
                    **routed_by_record(leg.routing),
                    execution_backend_id=None, course_content_id="cc-prefect", primary_engine=config.old_engine,
                    shadow_engine=config.new_engine, outcome=outcome, primary_run_seconds=1.0,
                    shadow_run_seconds=1.0, created_at=utcnow(),
                )
            )  # fmt: skip


async def migration(state: GatewayState, stage: Stage, **settings: object) -> CutoverConfig:
    await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                   new_engine="celery", stage=stage, thresholds=FAST, min_stage_seconds=0,
                                   **settings)  # fmt: skip
    return await config_of(state)


def test_a_canary_step_is_judged_on_the_jobs_it_routed(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        shadow = await migration(state, Stage.SHADOW, canary_steps=[25, 50])
        routed_in_shadow = await jobs(state, 4)
        await compared(state, shadow, routed_in_shadow[:2], "match")
        assert (await gates.evaluate_one(state.sessions, shadow, dry_run=True)).evaluation.evidence.comparable == 2
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.PROMOTE, "admin")
        canary = await config_of(state)
        # Shadow-routed jobs whose comparisons end after the promotion are not the canary's evidence.
        await compared(state, canary, routed_in_shadow[2:], "match")
        run = await gates.evaluate_one(state.sessions, canary, dry_run=True)
        assert (run.evaluation.verdict.value, run.evaluation.evidence.comparable) == ("Inconclusive", 0)
        await compared(state, canary, await jobs(state, 4), "match")
        run = await gates.evaluate_one(state.sessions, canary, dry_run=True)
        assert (run.evaluation.verdict.value, run.evaluation.evidence.comparable) == ("Successful", 4)
        (card,) = await scorecard(state.sessions)
        assert card["samples"] == 4  # the scorecard counts what the gate counts
        # Any change of the configuration (here a threshold) starts the evidence again.
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.CONFIGURE, "admin",
                                       thresholds={**FAST, "max_p99_ratio": 3.0})  # fmt: skip
        run = await gates.evaluate_one(state.sessions, await config_of(state), dry_run=True)
        assert run.evaluation.evidence.comparable == 0

    memory_gateway.run(test)


def test_an_operators_rollback_holds_automation_until_resumed(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await migration(state, Stage.CANARY, percentage=25, policy="auto")
        await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.DEMOTE, "alice",
                                       reason="students report timeouts")  # fmt: skip
        shadow = await config_of(state)
        assert shadow.stage == Stage.SHADOW
        await compared(state, shadow, await jobs(state, 4), "match")
        run = await gates.evaluate_one(state.sessions, shadow)
        assert run.evaluation.verdict.value == "Successful" and not run.applied
        assert run.next.step.value == "hold" and "paused by alice's demote" in run.next.why
        (card,) = await scorecard(state.sessions)
        assert card["paused"] and card["hold"]["actor"] == "alice" and card["next"]["step"] == "hold"
        with pytest.raises(Conflict):
            await set_hold(state.sessions, Scope.CONTENT, "cc-prefect", HoldAction.PAUSE, "bob")
        resumed = await set_hold(state.sessions, Scope.CONTENT, "cc-prefect", HoldAction.RESUME, "alice", "fixed")
        assert (resumed["paused"], resumed["event"]["action"]) == (False, "resume")
        run = await gates.evaluate_one(state.sessions, await config_of(state))
        assert run.applied and (await config_of(state)).stage == Stage.CANARY
        actions = [(e.action, e.actor) for e in await store.history(state.sessions, Scope.CONTENT, "cc-prefect")]
        assert actions[:3] == [("promote", "gate"), ("resume", "alice"), ("demote", "alice")]

    memory_gateway.run(test)


def test_pause_without_a_stage_change_and_the_gates_own_demotion_does_not_pause(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        canary = await migration(state, Stage.CANARY, percentage=25, policy="auto")
        await compared(state, canary, await jobs(state, 4), "mismatch")
        assert (await gates.evaluate_one(state.sessions, canary)).applied  # the gate demotes to shadow
        assert (await hold_status(state.sessions, Scope.CONTENT, "cc-prefect"))["paused"] is False
        paused = await set_hold(state.sessions, Scope.CONTENT, "cc-prefect", HoldAction.PAUSE, "bob", "exam week")
        assert paused["paused"] and paused["hold"]["reason"] == "exam week"
        shadow = await config_of(state)
        assert shadow.version == canary.version + 1  # a pause changes no setting (and no evidence)
        await compared(state, shadow, await jobs(state, 4), "match")
        run = await gates.evaluate_one(state.sessions, shadow)
        assert not run.applied and "paused by bob's pause" in run.next.why

    memory_gateway.run(test)


# --- a dead engine, seen in seconds ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "unstarted,alive,verdict",
    [
        (3, False, "Failed"),  # legs not taken and no live worker: dead, whatever the shadow deadline
        (3, True, "Inconclusive"),  # busy but alive (a Prefect runner at its limit): waited for
        (3, None, "Inconclusive"),  # liveness not asked (a dry run from the CLI): not judged on it
        (0, False, "Inconclusive"),  # no leg waiting: nothing to say yet
    ],
)
def test_unstarted_legs_and_no_live_worker_fail_at_once(unstarted: int, alive: bool | None, verdict: str) -> None:
    from gateway.cutover.gates import Evidence, evaluate
    from gateway.cutover.stages import GateThresholds

    result = evaluate(Evidence(new_unstarted=unstarted, new_alive=alive), GateThresholds())
    assert result.verdict.value == verdict
    if verdict == "Failed":
        assert result.decided_by.value == "infra_error_rate"
        assert result.needs[0] == "new engine dead: 3 legs not started within 20 s and no live worker"


def test_a_dead_new_engine_demotes_the_canary_within_its_start_timeout(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        from sqlalchemy import update

        canary = await migration(state, Stage.CANARY, percentage=100)
        routed = await jobs(state, 2)
        asked: list[str] = []

        async def dead(engine: str) -> bool:
            asked.append(engine)
            return False

        async with state.sessions() as session, session.begin():
            await session.execute(
                update(Leg)
                .where(Leg.id.in_([leg for _r, leg in routed]))
                .values(dispatch_state="sent", dispatched_at=utcnow() - timedelta(seconds=5), started_at=None,
                        finished=False)
            )  # fmt: skip
        early = await gates.evaluate_one(state.sessions, canary, dry_run=True, liveness=dead)
        assert early.evaluation.verdict.value == "Inconclusive" and asked == []  # within the start timeout
        later = utcnow() + timedelta(seconds=30)
        run = await gates.evaluate_one(state.sessions, canary, now=later, liveness=dead)
        assert run.applied and asked == ["celery"] and (await config_of(state)).stage == Stage.SHADOW
        assert run.evaluation.needs[0].startswith("new engine dead: 2 legs not started within 20 s")

    memory_gateway.run(test)
