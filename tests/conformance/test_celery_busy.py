"""A busy Celery worker told from a misconfigured one, on the real engines (issue 27 §4: busy is not dead).

Shadow Prefect → Celery, with Celery's only worker at concurrency 1 (Redis broker, PostgreSQL results):

- busy: the worker consumes every queue and runs a slow student that waits for its release. The next job's
  Celery shadow leg waits in `high_priority` behind it; the adapter's hold check sees the message queued where a
  live worker consumes, so the leg is `busy`, and at its shadow deadline it ends `late`: neither an infra error
  nor a sample for the gate;
- control: the only live worker consumes `default` alone (a misconfigured engine). The shadow leg waits in
  `high_priority` where no live worker consumes: at its deadline it ends `shadow_timeout`, an infra error
  against Celery, as before.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from legacy_stack import ADMIN, FINAL, Stack, comparison_of, evaluate_gate, running_stack, submit_job, wait_until

from tests.conftest import PostgresDB, RedisDB
from tests.service.conftest import fresh_pg_database
from tests.support.celery_worker import stop_worker
from tests.support.slow_student import waiting_markers

pytestmark = [pytest.mark.slow]
# One sample is enough to be judged; the shadow deadline passes while the leg is queued.
GATE = {"min_samples": 1, "max_p99_ratio": 1000.0, "start_timeout_seconds": 5}
SHADOW_DEADLINE = 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB) -> Iterator[Stack]:
    with (
        fresh_pg_database(postgres_db) as db,
        running_stack(tmp_path_factory.mktemp("celery-busy"), db.env(), redis_db.env(), prefect=True) as found,
    ):
        yield found


def only_worker(stack: Stack, *, queues: tuple[str, ...] | None = None) -> None:
    """Celery's workers replaced by one with a single slot (consuming `queues`, else every queue); the slow
    student may run past the sandbox's default limit (the holder waits for its release)."""
    for worker in stack.workers:
        stop_worker(worker, graceful=False)
    extra = {"SANDBOX_TIMEOUT_SECONDS": "900"}
    if queues is None:
        stack.start_worker(extra, concurrency=1)
    else:
        stack.start_worker(extra, concurrency=1, queues=queues)


def shadow_to_celery(client: httpx.Client, key: str) -> None:
    answer = client.put(f"/api/admin/shadow/contents/{key}", json={"deadline_seconds": SHADOW_DEADLINE})
    assert answer.status_code == 200, answer.text
    body = {"new_engine": "celery", "stage": "shadow", "shadow_fraction": 1.0, "thresholds": GATE, "reason": key}
    answer = client.post(f"/api/admin/cutover/content/{key}/set", json=body)
    assert answer.status_code == 200, answer.text


def test_a_shadow_celery_leg_queued_behind_a_busy_worker_ends_late_not_as_an_infra_error(stack: Stack) -> None:
    only_worker(stack)
    with stack.client(ADMIN) as admin:
        # A Celery-primary job of the slow student takes the worker's only slot and keeps it.
        holder = submit_job(admin, "busy", "m-slow", stack.repos.commit("slow"))
        try:
            wait_until(lambda: len(waiting_markers(stack.sandbox_root)) == 1, "the holder to occupy the worker", 240)
            shadow_to_celery(admin, "cc-celery-busy")
            before = evaluate_gate(admin, "cc-celery-busy")
            late = submit_job(admin, "celery-busy", "m-alice", stack.repos.commit("passing"))
            found = wait_until(lambda: comparison_of(admin, late), "the Celery shadow leg to reach its deadline", 300)
            # The holder held the slot the whole time: the shadow leg never started.
            assert len(waiting_markers(stack.sandbox_root)) == 1
            after = evaluate_gate(admin, "cc-celery-busy")
        finally:
            stack.release_slow_runs()
        wait_until(
            lambda: admin.get(f"/api/results/{holder}/status").json() in FINAL, "the holder released to end", 240
        )
    assert (found["outcome"], found["side"]) == ("late", "shadow"), found
    assert "queued behind a busy worker" in found["reason"], found
    # Neither an infra error nor a sample: the gate's counts are what they were.
    for key in ("new_infra_errors", "new_legs", "comparable"):
        assert after["evidence"][key] == before["evidence"][key] == 0, (key, before, after)
    assert after["verdict"] != "Failed" and "infra_error_rate" not in after["failing"], after


def test_a_shadow_celery_leg_no_live_worker_consumes_still_times_out_as_an_infra_error(stack: Stack) -> None:
    only_worker(stack, queues=("default",))  # alive, but not consuming `high_priority`: misconfigured
    with stack.client(ADMIN) as admin:
        shadow_to_celery(admin, "cc-celery-idle")
        before = evaluate_gate(admin, "cc-celery-idle")
        run = submit_job(admin, "celery-idle", "m-carol", stack.repos.commit("passing"))
        found = wait_until(lambda: comparison_of(admin, run), "the Celery shadow leg to reach its deadline", 300)
        after = evaluate_gate(admin, "cc-celery-idle")
    assert found["outcome"] == "shadow_timeout", found
    assert before["evidence"]["new_infra_errors"] == 0, before
    assert (after["evidence"]["new_infra_errors"], after["evidence"]["new_legs"]) == (1, 1), after
