"""The dispatcher: `execution_backend.type` → a `RoutePlan` → an engine adapter, and sending one leg.

The gateway knows only `backends.interface`; adapters are built through `backends.registry` and cached per
engine. `RoutePlan` is the seam for the next issue: today the plan is the backend's engine alone; a cutover
stage will add a shadow leg and record its rule in `decision` (stored on the leg as its routing decision).
Adapter calls are blocking, so they run in worker threads: a small pool of its own, not the shared anyio pool,
because those threads live for the whole process and so keep each thread's engine state warm (Celery's
producer connection and its per-thread result backend, which costs a new database connection and a schema
check to build); the shared pool retires idle threads after a few seconds and would rebuild that state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from backends.interface import (
    DeploymentNotFound,
    EngineAdapter,
    EngineConfigurationError,
    EngineUnavailable,
    JobSpec,
    TaskKind,
)
from backends.redact import redact_text
from backends.registry import UnknownEngineError, canonical_engine, make_adapter
from backends.settings import Settings

log = logging.getLogger(__name__)

UNSUPPORTED = "execution_backend type not supported!"

# Task names of the legacy contract (the Celery era's `/api/tasks` family), accepted short or in full.
TASK_NAMES: dict[str, TaskKind] = {
    "ctutor_backend.tasks.student_testing": TaskKind.STUDENT_TESTING,
    "ctutor_backend.tasks.submission_processing": TaskKind.SUBMISSION_PROCESSING,
}
_SHORT = {name.rsplit(".", 1)[1]: kind for name, kind in TASK_NAMES.items()}


def task_kind(task_name: str) -> TaskKind | None:
    return TASK_NAMES.get(task_name) or _SHORT.get(task_name)


def task_name_of(kind: TaskKind) -> str:
    return next(name for name, k in TASK_NAMES.items() if k == kind)


class UnsupportedBackend(ValueError):
    """The execution backend's type names no engine; the API answers 400 with the legacy text."""


@dataclass(frozen=True)
class RoutePlan:
    """Which engine answers (primary) and, later, which one shadows; `decision` is recorded on the leg."""

    primary: str
    shadow: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)


def plan_route(backend_type: str | None, backend_id: str | None = None) -> RoutePlan:
    try:
        engine = canonical_engine(backend_type or "")
    except UnknownEngineError:
        raise UnsupportedBackend(UNSUPPORTED) from None
    return RoutePlan(
        primary=engine,
        decision={"rule": "execution_backend.type", "type": backend_type, "execution_backend_id": backend_id},
    )


class SendStatus(StrEnum):
    SENT = "sent"
    RETRY = "retry"  # engine unreachable: the leg stays in the outbox
    REJECTED = "rejected"  # configuration error: retrying will not help


@dataclass(frozen=True)
class SendOutcome:
    status: SendStatus
    engine_run_id: str | None = None
    error: str | None = None
    deployment: str | None = None


def backoff_seconds(attempts: int, cap: float = 60.0) -> float:
    """0.5 s, 1 s, 2 s ... capped: fast recovery after a short outage, no hammering during a long one."""
    return float(min(cap, 0.5 * 2 ** max(0, attempts - 1)))


def next_attempt(now: datetime, attempts: int) -> datetime:
    return now + timedelta(seconds=backoff_seconds(attempts))


# Sends are short and mostly network waits; a few threads overlap them without piling up GIL contention.
SEND_THREADS = 4


class Dispatcher:
    """Holds one adapter per engine and sends legs; never raises for an engine outage."""

    def __init__(
        self, settings: Settings, adapter_factory: Callable[[str, Settings], EngineAdapter] = make_adapter
    ) -> None:
        self.settings = settings
        self._factory = adapter_factory
        self._adapters: dict[str, EngineAdapter] = {}
        self._threads: ThreadPoolExecutor | None = None

    def adapter(self, engine: str) -> EngineAdapter:
        engine = canonical_engine(engine)
        found = self._adapters.get(engine)
        if found is None:
            found = self._factory(engine, self.settings)
            self._adapters[engine] = found
        return found

    def send_blocking(self, engine: str, spec: dict[str, Any], leg_id: str) -> SendOutcome:
        job = JobSpec(kind=TaskKind(spec["kind"]), params=spec["params"], properties=spec.get("properties") or {})
        priority = int(spec.get("priority") or 8)
        try:
            run_id = self.adapter(engine).submit(job, leg_id, priority=priority)
        except DeploymentNotFound as exc:
            return SendOutcome(SendStatus.REJECTED, error=str(exc), deployment=exc.deployment)
        except EngineConfigurationError as exc:
            return SendOutcome(SendStatus.REJECTED, error=redact_text(str(exc)))
        except EngineUnavailable as exc:
            return SendOutcome(SendStatus.RETRY, error=redact_text(str(exc)) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - an unexpected adapter error must not lose the job: retry later
            log.warning("dispatch of leg %s failed: %s", leg_id, redact_text(repr(exc)))
            return SendOutcome(SendStatus.RETRY, error=redact_text(f"{type(exc).__name__}: {exc}"))
        return SendOutcome(SendStatus.SENT, engine_run_id=run_id)

    async def send(self, engine: str, spec: dict[str, Any], leg_id: str) -> SendOutcome:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="dispatch")
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.send_blocking, engine, spec, leg_id)

    def close(self) -> None:
        """Stop the send threads (a send in progress finishes first); a later send starts new ones."""
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=True, cancel_futures=True)
