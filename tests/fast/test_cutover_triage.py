"""Mismatch triage, engine-free: the cluster signature, the acceptance rules, and (on the SQLite store) what an
acceptance does to the gate, the scorecard and the event log - accepted, expired, re-accepted, withdrawn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope, Stage
from gateway.cutover.triage import (
    Acceptance,
    ClusterStatus,
    InvalidAcceptance,
    active_signatures,
    signature_of,
    status_of,
    validate,
)
from gateway.jobs import cutover_changes as service
from gateway.jobs import cutover_gates as gates
from gateway.jobs import cutover_triage as triage
from gateway.jobs.errors import NotFound
from gateway.jobs.scorecard import scorecard
from gateway.runtime import GatewayState
from gateway.store import cutover_configs as store
from gateway.store.models import utcnow
from tests.fast.conftest import MemoryGateway
from tests.fast.test_cutover_gates import FAST, comparisons, config_of

pytestmark = pytest.mark.fast

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ADD = '$.tests["t.py"].tests["test_add"]'
DIFF_A = [{"path": f"{ADD}.result", "primary": "PASSED", "shadow": "FAILED", "test": "t.py::test_add"}]
DIFF_B = [{"path": "$.summary.passed", "primary": 3, "shadow": 2}]


# --- the signature ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "left,right,same",
    [
        # values are not part of it: one intended difference is one cluster however its numbers vary
        (("mismatch", DIFF_A), ("mismatch", [{**DIFF_A[0], "primary": "ERROR", "shadow": "SKIPPED"}]), True),
        # order and repetition are not part of it
        (("mismatch", [*DIFF_A, *DIFF_B]), ("mismatch", [*DIFF_B, *DIFF_A, *DIFF_A]), True),
        (("mismatch", None), ("mismatch", []), True),
        # the outcome, the test identity and the path are
        (("mismatch", DIFF_A), ("noise", DIFF_A), False),
        (("mismatch", DIFF_A), ("mismatch", [{**DIFF_A[0], "test": "t.py::test_mul"}]), False),
        (("mismatch", DIFF_A), ("mismatch", [{**DIFF_A[0], "path": f"{ADD}.status"}]), False),
        (("mismatch", DIFF_A), ("mismatch", [*DIFF_A, *DIFF_B]), False),
    ],
)
def test_signature(left: tuple[str, Any], right: tuple[str, Any], same: bool) -> None:
    a, b = signature_of(*left), signature_of(*right)
    assert len(a) == 16 and int(a, 16) >= 0
    assert (a == b) is same


def test_the_signature_never_changes() -> None:
    """Stored acceptances refer to it: a change of its definition would orphan them (and needs a migration)."""
    assert signature_of("mismatch", DIFF_A) == "514df168e97db4fd"


# --- acceptance rules ----------------------------------------------------------------------------------------
SIG = signature_of("mismatch", DIFF_A)


@pytest.mark.parametrize(
    "signature,note,expires_at,error",
    [
        (SIG, "ms vs s", T0 + timedelta(days=14), None),
        (SIG, "ms vs s", T0 + timedelta(days=365), None),
        ("514DF168E97DB4FD", "ms vs s", T0 + timedelta(days=1), "16 lowercase hex"),
        ("514df1", "ms vs s", T0 + timedelta(days=1), "16 lowercase hex"),
        (SIG, "  ", T0 + timedelta(days=1), "needs a note"),
        (SIG, "ms vs s", (T0 + timedelta(days=1)).replace(tzinfo=None), "time zone"),
        (SIG, "ms vs s", T0, "not in the future"),
        (SIG, "ms vs s", T0 + timedelta(days=365, seconds=1), "at most 365 days"),
    ],
)
def test_validate(signature: str, note: str, expires_at: datetime, error: str | None) -> None:
    if error is None:
        validate(signature, note, expires_at, T0)
        return
    with pytest.raises(InvalidAcceptance, match=error):
        validate(signature, note, expires_at, T0)


def _acceptance(signature: str, expires_at: datetime) -> Acceptance:
    return Acceptance(signature, "intended", expires_at, "admin", T0 - timedelta(days=1))


@pytest.mark.parametrize(
    "expires_at,now,status",
    [
        (None, T0, ClusterStatus.OPEN),
        (T0 + timedelta(seconds=1), T0, ClusterStatus.ACCEPTED),
        (T0, T0, ClusterStatus.EXPIRED),  # at the expiry instant it counts again
        (T0 - timedelta(days=1), T0, ClusterStatus.EXPIRED),
    ],
)
def test_status_and_active_signatures(expires_at: datetime | None, now: datetime, status: ClusterStatus) -> None:
    found = {} if expires_at is None else {SIG: _acceptance(SIG, expires_at)}
    assert status_of(SIG, found, now) == status
    assert active_signatures(found.values(), now) == (frozenset({SIG}) if status == ClusterStatus.ACCEPTED else set())


# --- on the store: the gate, the scorecard, the log ----------------------------------------------------------
async def _canary_with_two_clusters(state: GatewayState) -> None:
    """Canary 25 %, manual: 10 matches, 8 mismatches in cluster A, 2 in cluster B (mismatch rate 50 % > 25 %)."""
    await service.change_migration(state.sessions, Scope.CONTENT, "cc-prefect", Action.SET, "admin",
                                   new_engine="celery", stage=Stage.CANARY, percentage=25,
                                   thresholds=TRIAGE)  # fmt: skip
    config = await config_of(state)
    await comparisons(state, config, ["match"] * 10)
    await comparisons(state, config, ["mismatch"] * 8, differences=DIFF_A)
    await comparisons(state, config, ["mismatch"] * 2, differences=DIFF_B)


SIG_B = signature_of("mismatch", DIFF_B)
TRIAGE = {**FAST, "max_mismatch_rate": 0.25}


@pytest.mark.parametrize(
    "accepted,at_days,verdict,accepted_mismatches,needs",
    [
        ((), 0, "Failed", 0, "mismatch 50 % (50 %: 42.5–57.5 %) above 25 %"),
        ((SIG,), 0, "Successful", 8, None),  # 2 real mismatches in 20: 10 %, interval within 25 %
        ((SIG_B,), 0, "Failed", 2, "mismatch 40 % (50 %: 32.9–47.5 %) above 25 %"),
        ((SIG, SIG_B), 0, "Successful", 10, None),
        ((SIG,), 15, "Failed", 0, "mismatch 50 % (50 %: 42.5–57.5 %) above 25 %"),  # the acceptance expired
    ],
)
def test_accepted_clusters_stop_counting_against_the_gate_until_they_expire(
    memory_gateway: MemoryGateway,
    accepted: tuple[str, ...],
    at_days: int,
    verdict: str,
    accepted_mismatches: int,
    needs: str | None,
) -> None:
    async def test(state: GatewayState) -> None:
        await _canary_with_two_clusters(state)
        for signature in accepted:
            await triage.accept_cluster(state.sessions, Scope.CONTENT, "week2.ex1", signature, "admin",
                                        "intended", expires_in=timedelta(days=14))  # fmt: skip
        config = await config_of(state)
        run = await gates.evaluate_one(state.sessions, config, utcnow() + timedelta(days=at_days), dry_run=True)
        assert run.evaluation.verdict.value == verdict, run.to_dict()
        assert run.evaluation.evidence.accepted_mismatches == accepted_mismatches
        assert run.to_dict()["accepted_clusters"] == (sorted(accepted) if at_days == 0 else [])
        assert (needs in run.evaluation.needs) if needs else not run.evaluation.needs

    memory_gateway.run(test)


def test_a_failed_gate_demotes_once_the_acceptance_it_relied_on_expires(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await _canary_with_two_clusters(state)
        await triage.accept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG, "admin", "ms vs s",
                                    expires_in=timedelta(days=1))  # fmt: skip
        await triage.accept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG_B, "admin", "summary",
                                    expires_in=timedelta(days=1))  # fmt: skip
        held = await gates.evaluate_one(state.sessions, await config_of(state))
        assert (held.evaluation.verdict.value, held.applied) == ("Successful", False)  # manual: recommends only
        migration = (await store.all_migrations(state.sessions))[0]
        assert migration.last_evaluation["accepted_clusters"] == sorted([SIG, SIG_B])
        later = await gates.evaluate_one(state.sessions, await config_of(state), utcnow() + timedelta(days=2))
        assert later.applied and (await config_of(state)).stage == Stage.SHADOW
        (event, *_rest) = await store.history(state.sessions, Scope.CONTENT, "cc-prefect")
        assert (event.actor, event.action, event.evaluation["accepted_clusters"]) == ("gate", "demote", [])

    memory_gateway.run(test)


def test_the_scorecard_shows_accepted_clusters_apart_and_expired_ones_as_open(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await _canary_with_two_clusters(state)
        (card,) = await scorecard(state.sessions)
        clusters = [(c["signature"], c["count"], c["status"]) for c in card["clusters"]]
        assert clusters == [(SIG, 8, "open"), (SIG_B, 2, "open")]
        assert (card["accepted_clusters"], card["accepted_mismatches"], card["parity"]) == ([], 0, 0.5)
        await triage.accept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG, "admin", "ms vs s",
                                    expires_in=timedelta(days=1))  # fmt: skip
        (card,) = await scorecard(state.sessions)
        assert [c["signature"] for c in card["clusters"]] == [SIG_B]
        (accepted,) = card["accepted_clusters"]
        assert (accepted["signature"], accepted["status"], accepted["tests"]) == (SIG, "accepted", ["t.py::test_add"])
        assert (accepted["acceptance"]["note"], accepted["acceptance"]["accepted_by"]) == ("ms vs s", "admin")
        assert (card["accepted_mismatches"], card["parity"], card["evaluation"]["verdict"]) == (8, 0.9, "Successful")
        (card,) = await scorecard(state.sessions, now=utcnow() + timedelta(days=2))
        assert [(c["signature"], c["status"]) for c in card["clusters"]] == [(SIG, "expired"), (SIG_B, "open")]
        assert (card["accepted_clusters"], card["accepted_mismatches"]) == ([], 0)

    memory_gateway.run(test)


def test_every_acceptance_is_an_event_and_bad_ones_are_refused(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await _canary_with_two_clusters(state)
        until = utcnow() + timedelta(days=7)
        first = await triage.accept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG, "alice", "ms vs s",
                                            expires_at=until)  # fmt: skip
        assert first["acceptance"]["expires_at"] == until.isoformat() and first["acceptance"]["active"]
        await triage.accept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG, "bob", "still ms vs s",
                                    expires_in=timedelta(days=30))  # fmt: skip
        (only,) = await triage.list_acceptances(state.sessions, Scope.CONTENT, "cc-prefect")
        assert (only["note"], only["accepted_by"]) == ("still ms vs s", "bob")  # accepting again replaces
        await triage.unaccept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG, "carol", "fixed in celery")
        assert await triage.list_acceptances(state.sessions, Scope.CONTENT, "cc-prefect") == []
        config = await config_of(state)
        events = await store.history(state.sessions, Scope.CONTENT, "cc-prefect")
        logged = [(e.action, e.actor, e.reason, e.cluster["signature"]) for e in events[:3]]
        assert logged == [("unaccept", "carol", "fixed in celery", SIG), ("accept", "bob", "still ms vs s", SIG),
                          ("accept", "alice", "ms vs s", SIG)]  # fmt: skip
        assert events[1].cluster["replaces"] == {"signature": SIG, "note": "ms vs s", "expires_at": until.isoformat()}
        # Triage changes neither the stage nor the version: the events say where the migration stood.
        assert {(e.from_stage, e.to_stage, e.version) for e in events[:3]} == {("canary", "canary", config.version)}

        refused = [
            ("0123456789abcdef", "never seen", {"expires_in": timedelta(days=1)}, NotFound),
            ("not-a-signature", "bad", {"expires_in": timedelta(days=1)}, service.InvalidCutover),
            (SIG, "", {"expires_in": timedelta(days=1)}, service.InvalidCutover),
            (SIG, "both", {"expires_in": timedelta(days=1), "expires_at": until}, service.InvalidCutover),
            (SIG, "neither", {}, service.InvalidCutover),
            (SIG, "past", {"expires_at": utcnow() - timedelta(minutes=1)}, service.InvalidCutover),
        ]
        for signature, note, expiry, error in refused:
            with pytest.raises(error):
                await triage.accept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", signature, "admin", note,
                                            **expiry)  # fmt: skip
        with pytest.raises(NotFound):  # nothing to withdraw
            await triage.unaccept_cluster(state.sessions, Scope.CONTENT, "cc-prefect", SIG, "admin")
        with pytest.raises(NotFound):  # no migration for this scope
            await triage.accept_cluster(state.sessions, Scope.BACKEND, "celery-main", SIG, "admin", "x",
                                        expires_in=timedelta(days=1))  # fmt: skip
        assert len(await store.history(state.sessions, Scope.CONTENT, "cc-prefect")) == len(events)

    memory_gateway.run(test)
