"""`MemoryAdapter`: an `EngineAdapter` whose engine is a dict the test scripts.

The fast layer of tests drives the gateway's state machine and reconciler against it, with no Celery or
Prefect: a test submits through the gateway, then says what the "engine" did (`start`, `succeed`, `fail`,
`lose`), or breaks it (`down`, `results_fail`), and checks what the gateway made of it. Every call is counted,
so a test can prove a batch was one round trip. The behaviour each script stands for also has a test on the
real engines. It implements the optional `CompletionFeed` too: every scripted end is pushed to the listeners of
the engine name the run was submitted under (switch `push` off to leave only polling).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backends.interface import (
    EngineConfigurationError,
    EngineUnavailable,
    Health,
    JobSpec,
    LegPhase,
    LegResult,
    LegState,
    TaskKind,
    WorkerInfo,
)
from common.engines import Engine

NEEDED = {TaskKind.STUDENT_TESTING: "test_job", TaskKind.SUBMISSION_PROCESSING: "submission"}


@dataclass
class MemoryRun:
    job: JobSpec
    phase: LegPhase = LegPhase.QUEUED
    report: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    finished_at: datetime | None = None
    submits: int = 1
    # The engine name of the adapter that submitted it: whose completion listeners hear of its end.
    engine: str = ""
    lost: str | None = None
    result_gone: bool = False


@dataclass
class MemoryEngine:
    """The scripted engine: runs by leg id, switches for outages, and a count of every call."""

    runs: dict[str, MemoryRun] = field(default_factory=dict)
    # Every call raises EngineUnavailable while set (broker or API down).
    down: bool = False
    # `results` raises while set (the state is readable, the stored result is not).
    results_fail: bool = False
    # `submit` refuses the job for good while set (EngineConfigurationError).
    reject: str | None = None
    # `cancel` only asks, like a Celery revoke or a Prefect CANCELLING proposal: the run reads CANCELLING until
    # the next poll after it (a worker that noticed), then CANCELLED.
    slow_cancel: bool = False
    # The engine's own run id is this prefix + the leg id (Prefect's flow run id differs from the leg id; Celery's
    # task id is the leg id: prefix "").
    run_id_prefix: str = ""
    calls: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Scripted ends are pushed to completion listeners while set (the engine's notices get lost when not).
    push: bool = True
    listeners: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Queue[str]]] = field(default_factory=list)

    # ------------------------------------------------------------------------------------------ scripting
    def start(self, leg_id: str) -> None:
        self.runs[leg_id].phase = LegPhase.RUNNING

    def succeed(self, leg_id: str, report: dict[str, Any]) -> None:
        self._end(leg_id, LegPhase.SUCCEEDED, report=report)

    def succeed_unreadable(self, leg_id: str, error: str | None = None, error_type: str | None = None) -> None:
        """The run succeeded but its report cannot be had: a Prefect runner whose result storage the API cannot
        read (`error` and `error_type="ResultUnavailable"`), or a SUCCESS that carries no report at all."""
        self._end(leg_id, LegPhase.SUCCEEDED, report=None, error=error, error_type=error_type)

    def forget_result(self, leg_id: str) -> None:
        """The run's state still reads final but its stored result is gone (a result backend that expired it)."""
        self.runs[leg_id].result_gone = True

    def fail(self, leg_id: str, error: str, error_type: str = "InfrastructureError") -> None:
        self._end(leg_id, LegPhase.FAILED, error=error, error_type=error_type)

    def crash(self, leg_id: str, error: str = "the flow run crashed") -> None:
        """The infrastructure broke under the run (Prefect's CRASHED): not the student's doing."""
        self._end(leg_id, LegPhase.CRASHED, error=error, error_type="Crashed")

    def die(self, leg_id: str, reason: str = "its worker is gone") -> None:
        """The run's worker died: it stays RUNNING at the engine, and the engine says it is lost."""
        self.runs[leg_id].phase = LegPhase.RUNNING
        self.runs[leg_id].lost = reason

    def lose(self, leg_id: str) -> None:
        """The engine forgets the run (a broker that dropped the message)."""
        self.runs.pop(leg_id, None)

    def _end(self, leg_id: str, phase: LegPhase, **values: Any) -> None:
        run = self.runs[leg_id]
        run.phase = phase
        run.finished_at = datetime.now(UTC)
        for name, value in values.items():
            setattr(run, name, value)
        if self.push:
            for engine, loop, queue in list(self.listeners):
                if engine == run.engine:
                    loop.call_soon_threadsafe(queue.put_nowait, leg_id)


class MemoryAdapter:
    """The interface over a `MemoryEngine`; several adapters (one per engine name) may share one engine."""

    def __init__(
        self, engine: str = Engine.MEMORY, backend: MemoryEngine | None = None, *, refuses_at_submit: bool = True
    ) -> None:
        self.engine = engine
        self.backend = backend or MemoryEngine()
        # True: sent by the request, as Prefect is; False: left to the outbox relay, as Celery is.
        self.refuses_at_submit = refuses_at_submit

    def _call(self, name: str) -> None:
        with self.backend.lock:
            self.backend.calls[name] += 1
        if self.backend.down:
            raise EngineUnavailable(f"{self.engine} is down")

    def submit(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        self._call("submit")
        if self.backend.reject:
            raise EngineConfigurationError(self.backend.reject)
        # As the real adapters do: the parameter the task kind needs is read, so a job without it raises (KeyError).
        job.params[NEEDED[job.kind]]
        with self.backend.lock:
            found = self.backend.runs.get(leg_id)
            if found is not None:
                found.submits += 1  # idempotent by leg id, like both real engines
            else:
                self.backend.runs[leg_id] = MemoryRun(job=job, engine=self.engine)
        return self.backend.run_id_prefix + leg_id

    async def completions(self) -> AsyncIterator[list[str]]:
        """The ids of runs of this engine name as the script ends them, batched like a real feed."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        listener = (self.engine, asyncio.get_running_loop(), queue)
        with self.backend.lock:
            self.backend.listeners.append(listener)
        try:
            yield []  # listening now
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                yield batch
        finally:
            with self.backend.lock:
                self.backend.listeners.remove(listener)

    def rerun(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        """A new attempt under the same id: the run starts over, queued (a success with its report is never
        replaced; one whose report could not be had is run again, like the real adapters do)."""
        self._call("rerun")
        with self.backend.lock:
            found = self.backend.runs.get(leg_id)
            if (
                found is not None
                and found.phase == LegPhase.SUCCEEDED
                and isinstance(found.report, dict)
                and not found.result_gone
            ):
                return self.backend.run_id_prefix + leg_id
            submits = found.submits + 1 if found is not None else 1
            self.backend.runs[leg_id] = MemoryRun(job=job, submits=submits, engine=self.engine)
        return self.backend.run_id_prefix + leg_id

    def poll(self, leg_ids: list[str]) -> dict[str, LegState]:
        self._call("poll")
        states = {leg_id: self._state(leg_id) for leg_id in leg_ids}
        with self.backend.lock:
            for leg_id in leg_ids:
                run = self.backend.runs.get(leg_id)
                if run is not None and run.phase == LegPhase.CANCELLING:
                    run.phase, run.finished_at = LegPhase.CANCELLED, datetime.now(UTC)  # seen next time
        return states

    def _state(self, leg_id: str) -> LegState:
        run = self.backend.runs.get(leg_id)
        if run is None:
            return LegState(leg_id=leg_id, phase=LegPhase.MISSING, native="MISSING")
        return LegState(
            leg_id=leg_id,
            phase=run.phase,
            native=run.phase.value.upper(),
            finished_at=run.finished_at,
            error=run.error,
            engine_run_id=self.backend.run_id_prefix + leg_id,
            lost=run.lost,
        )

    def result(self, leg_id: str) -> LegResult:
        return self.results([leg_id])[leg_id]

    def results(self, leg_ids: list[str]) -> dict[str, LegResult]:
        self._call("results")
        if self.backend.results_fail:
            raise EngineUnavailable("result store unreadable")
        answer: dict[str, LegResult] = {}
        for leg_id in leg_ids:
            run = self.backend.runs.get(leg_id)
            if run is None or run.result_gone:
                answer[leg_id] = LegResult(leg_id=leg_id, phase=LegPhase.MISSING)
                continue
            answer[leg_id] = LegResult(
                leg_id=leg_id, phase=run.phase, report=run.report, error=run.error, error_type=run.error_type
            )
        return answer

    def cancel(self, leg_id: str) -> LegState:
        self._call("cancel")
        with self.backend.lock:
            run = self.backend.runs.get(leg_id)
            if run is not None and not run.phase.is_final:
                if self.backend.slow_cancel:
                    run.phase = LegPhase.CANCELLING
                else:
                    run.phase, run.finished_at = LegPhase.CANCELLED, datetime.now(UTC)
            return self._state(leg_id)

    def workers(self) -> list[WorkerInfo]:
        self._call("workers")
        return [WorkerInfo(name=f"{self.engine}@memory")]

    def health(self) -> Health:
        self._call("health")
        return Health(healthy=True, engine=self.engine, workers=1)

    def queue_depths(self) -> dict[str, int]:
        self._call("queue_depths")
        return {"default": sum(1 for run in self.backend.runs.values() if run.phase == LegPhase.QUEUED)}

    def queue_ages(self) -> dict[str, float]:
        self._call("queue_ages")
        return {}

    def close(self) -> None:
        self.backend.calls["close"] += 1
