"""The Celery-era task list (issue 25.3): Celery's words, the platform's keys, and a `?status=` filter in SQL that
selects exactly the legs the view shows with that status."""

from __future__ import annotations

from datetime import timedelta
from itertools import product

import pytest

from backends.interface import LegPhase
from common.legacy import CELERY_STATE_OF, CeleryState, TaskStatus
from gateway.api.views import task_list_item
from gateway.jobs.errors import BadJobRequest
from gateway.jobs.tasks import list_tasks, task_statuses
from gateway.legs import machine
from gateway.legs.states import DispatchState, LegRole
from gateway.runtime import GatewayState
from gateway.store.models import Leg, utcnow
from tests.fast.conftest import MemoryGateway

pytestmark = pytest.mark.fast


def _leg(index: int, phase: LegPhase, dispatch: DispatchState, attempts: int) -> Leg:
    now = utcnow() + timedelta(seconds=index)
    values = machine.new_leg(
        leg_id=f"leg-{index:03d}",
        result_id=None,
        role=LegRole.PRIMARY,
        engine="celery",
        task_name="ctutor_backend.tasks.student_testing",
        spec={"kind": "student_testing", "params": {}},
        routing=None,
        now=now,
        due_at=now,
    )
    leg = Leg(**values)
    leg.phase, leg.dispatch_state, leg.dispatch_attempts = phase.value, dispatch.value, attempts
    leg.finished = phase.is_final
    if leg.finished:
        leg.finished_at = now
        leg.error = "boom" if phase in (LegPhase.FAILED, LegPhase.CRASHED) else None
        leg.payload = {"ok": True} if phase == LegPhase.SUCCEEDED else None
    return leg


def test_every_status_word_selects_exactly_the_legs_shown_with_it(memory_gateway: MemoryGateway) -> None:
    combos = list(product(LegPhase, DispatchState, (0, 2)))
    legs = [_leg(i, *combo) for i, combo in enumerate(combos)]
    shown = {leg.id: task_list_item(leg) for leg in legs}

    async def test(state: GatewayState) -> None:
        async with state.sessions() as session, session.begin():
            session.add_all(legs)
        everything, total = await list_tasks(state, 1000, 0)
        assert total == len(legs) and [leg.id for leg in everything] == sorted(shown, reverse=True)
        for word in [*CeleryState, *TaskStatus]:
            selected, count = await list_tasks(state, 1000, 0, task_statuses(word))
            expected = {i for i, item in shown.items() if word in (item.status, item.task_status)}
            assert {leg.id for leg in selected} == expected and count == len(expected), word

    memory_gateway.run(test)


def test_a_listed_task_speaks_celery_and_says_what_it_stored() -> None:
    done = task_list_item(_leg(1, LegPhase.SUCCEEDED, DispatchState.SENT, 1))
    assert (done.status, done.task_status, done.has_result, done.has_error) == ("SUCCESS", "finished", True, False)
    assert done.date_done is not None
    failed = task_list_item(_leg(2, LegPhase.CRASHED, DispatchState.SENT, 1))
    assert (failed.status, failed.has_result, failed.has_error) == ("FAILURE", False, True)
    waiting = task_list_item(_leg(3, LegPhase.QUEUED, DispatchState.PENDING, 0))
    assert (waiting.status, waiting.task_status, waiting.date_done) == ("PENDING", "deferred", None)
    assert {CELERY_STATE_OF[s] for s in TaskStatus} == set(CeleryState) - {CeleryState.RETRY}


def test_an_unknown_status_word_is_a_clear_400() -> None:
    with pytest.raises(BadJobRequest, match="Unknown task status 'DONE'"):
        task_statuses("DONE")
    assert task_statuses("RETRY") == set()  # a Celery word nothing is in: an empty page, not an error
