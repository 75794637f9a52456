"""The engine adapter interface: the only thing the gateway knows about Celery or Prefect.

Each engine lives behind an `EngineAdapter`. Ids are chosen by the caller (a *leg id*): it becomes the Celery
task id and the Prefect flow run's idempotency key, so a caller can write its own record first and retry a
submit safely. `poll` is batched: one round trip for many legs. An engine that can tell when a leg ends also
implements `CompletionFeed`, so the gateway need not wait for its next poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from common.legacy import Progress, ResultStatus, TaskStatus


class TaskKind(StrEnum):
    """The two kinds of work both engines run."""

    STUDENT_TESTING = "student_testing"
    SUBMISSION_PROCESSING = "submission_processing"


class LegPhase(StrEnum):
    """One normalised state model for both engines; the engine-native name is kept beside it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    CRASHED = "crashed"
    # No trace of the id at the engine yet: only the caller's own record can tell "not started" from "unknown".
    MISSING = "missing"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    def result_status(self) -> ResultStatus:
        return _TO_RESULT_STATUS[self]

    def task_status(self) -> TaskStatus:
        return _TO_TASK_STATUS[self]


_FINAL = {LegPhase.SUCCEEDED, LegPhase.FAILED, LegPhase.CANCELLED, LegPhase.CRASHED}

_TO_RESULT_STATUS = {
    LegPhase.QUEUED: ResultStatus.SCHEDULED,
    LegPhase.MISSING: ResultStatus.PENDING,
    LegPhase.RUNNING: ResultStatus.RUNNING,
    LegPhase.SUCCEEDED: ResultStatus.COMPLETED,
    LegPhase.FAILED: ResultStatus.FAILED,
    LegPhase.CANCELLING: ResultStatus.CANCELLING,
    LegPhase.CANCELLED: ResultStatus.CANCELLED,
    LegPhase.CRASHED: ResultStatus.CRASHED,
}

_TO_TASK_STATUS = {
    LegPhase.QUEUED: TaskStatus.QUEUED,
    LegPhase.MISSING: TaskStatus.QUEUED,
    LegPhase.RUNNING: TaskStatus.STARTED,
    LegPhase.SUCCEEDED: TaskStatus.FINISHED,
    LegPhase.FAILED: TaskStatus.FAILED,
    LegPhase.CANCELLING: TaskStatus.STARTED,
    LegPhase.CANCELLED: TaskStatus.CANCELLED,
    LegPhase.CRASHED: TaskStatus.FAILED,
}


class EngineUnavailable(RuntimeError):
    """The engine cannot be reached right now (broker or API down); the caller may retry the same leg later."""


class EngineConfigurationError(RuntimeError):
    """The engine is reachable but the job cannot run as configured; retrying will not help."""


class DeploymentNotFound(EngineConfigurationError):
    """The Prefect deployment named in `execution_backend.properties.deployment` does not exist."""

    def __init__(self, deployment: str) -> None:
        super().__init__(f"deployment not found: {deployment}")
        self.deployment = deployment


@dataclass(frozen=True)
class JobSpec:
    """What to run: the kind, its legacy parameters, and the execution backend's properties.

    For `STUDENT_TESTING`, `params` is `{"test_job": TestJob-as-dict}`; for `SUBMISSION_PROCESSING`,
    `{"submission": {...}}`. `properties` is `execution_backend.properties` (e.g. the Prefect deployment name).
    """

    kind: TaskKind
    params: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)
    # A shadow run (a comparison's second leg): the engine marks it as such (a Prefect tag, a Celery header)
    # without changing the task or deployment it runs.
    shadow: bool = False


@dataclass
class LegState:
    """What an engine says about one leg right now."""

    leg_id: str
    phase: LegPhase
    native: str
    progress: Progress | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    worker: str | None = None
    queue: str | None = None
    engine_run_id: str | None = None
    # Set when the engine can tell that nothing is executing the leg any more (a runner gone, its runs Late).
    stalled: str | None = None
    # Set when the leg waits behind a busy but live worker (a Prefect run Late while its runner still polls, at its
    # limit; a Celery message in a queue a live worker consumes, or reserved by one): waited for up to its
    # deadline; a shadow leg still waiting so at its deadline ends `late`, which is neither an infrastructure
    # error nor a sample.
    busy: str | None = None
    # Set when the run died without an end and nothing will ever finish it (the worker that ran it is gone):
    # the caller may `rerun` the leg. Unlike `stalled`, waiting cannot help.
    lost: str | None = None


@dataclass
class LegResult:
    """A finished leg: the report on success, the error text otherwise."""

    leg_id: str
    phase: LegPhase
    report: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    # The score the engine's worker computed, when it said so (a legacy Celery worker); else from the report.
    score: float | None = None


@dataclass
class WorkerInfo:
    name: str
    queues: list[str] = field(default_factory=list)
    active: int = 0
    uptime_seconds: float | None = None
    last_seen: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Health:
    healthy: bool
    engine: str
    checks: dict[str, bool] = field(default_factory=dict)
    workers: int = 0
    error: str | None = None


@runtime_checkable
class EngineAdapter(Protocol):
    """submit, poll, result(s), cancel, workers, health, queue_depths/ages, close: all the gateway may ask."""

    engine: str
    # Whether the engine may refuse a job when it is sent (Prefect: no deployment by the configured name). Such a
    # job is sent by the request that admits it, so the client hears the refusal (the contract's 404). A job for
    # an engine that takes whatever it is sent (Celery: a broker queues any message) is committed and answered,
    # and the gateway's outbox relay sends it: the request does no engine work at all.
    refuses_at_submit: bool

    def submit(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        """Start `job` under `leg_id`; return the engine-side run id. Retrying with the same leg id is safe."""
        ...

    def rerun(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        """Run `leg_id` again after an infrastructure failure (crashed, lost): same id, the old outcome dropped.

        The engine's record of the failed attempt is reset first, so a poll never reads the old end as the
        new one; a result the leg already stored as a success is never replaced.
        """
        ...

    def poll(self, leg_ids: list[str]) -> dict[str, LegState]:
        """The current state of many legs in one round trip; ids the engine has no trace of are MISSING."""
        ...

    def result(self, leg_id: str) -> LegResult: ...

    def results(self, leg_ids: list[str]) -> dict[str, LegResult]:
        """The results of many finished legs in one round trip where the engine allows it."""
        ...

    def cancel(self, leg_id: str) -> LegState: ...

    def workers(self) -> list[WorkerInfo]: ...

    def health(self) -> Health: ...

    def queue_depths(self) -> dict[str, int]: ...

    def queue_ages(self) -> dict[str, float]:
        """Seconds since the oldest waiting message of each non-empty queue was sent, where the engine can tell
        ({} where it cannot: Prefect's waiting runs are aged from the gateway's own store instead)."""
        ...

    def close(self) -> None:
        """Release connections and pools; the gateway calls it once when it stops."""
        ...


@runtime_checkable
class CompletionFeed(Protocol):
    """Optional capability: the engine pushes the ids of legs that reached a final state, as they do.

    Only a hint to look now: a notice can be lost (the feed reconnecting, a crash between store and notice), so
    the gateway keeps polling every open leg as the safety net and reads the state itself with `poll`/`results`.
    """

    def completions(self) -> AsyncIterator[list[str]]:
        """Batches of leg ids, for as long as the caller iterates; ends at once when the setup cannot push.

        The first batch is empty and comes as soon as the feed listens: from then on no notice is missed.

        Raises `EngineUnavailable` when the channel is lost; the caller may iterate a fresh call later.
        """
        ...


@runtime_checkable
class OneReadObserver(Protocol):
    """Optional capability: what `poll` and then `results` tell, in one round trip.

    The gateway reads a leg it was told just ended (`CompletionFeed`) with it: its state, and the result when that
    state is final, from one consistent read instead of two.
    """

    def observe(self, leg_ids: list[str]) -> tuple[dict[str, LegState], dict[str, LegResult]]:
        """(`poll(leg_ids)`, `results(...)` of those whose state is final), from a single read."""
        ...
