"""The dispatcher: one adapter per engine, and sending legs to them (one at a time or a batch at once).

The gateway knows only `backends.interface`; adapters are built through `backends.registry` and cached per
engine (and closed with the dispatcher).
Adapter calls are blocking, so they run in worker threads: a small pool of its own, not the shared anyio pool,
because those threads live for the whole process and so keep each thread's engine state warm (Celery's
producer connection and its per-thread result backend, which costs a new database connection and a schema
check to build); the shared pool retires idle threads after a few seconds and would rebuild that state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from backends.registry import canonical_engine, make_adapter
from common.redact import redact_text
from common.settings import Settings

log = logging.getLogger(__name__)


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


# Sends are short and mostly network waits; a few threads overlap them without piling up GIL contention.
SEND_THREADS = 4
# Shadow sends have threads of their own: a shadow engine that hangs can never hold up a primary's send.
SHADOW_THREADS = 2
# After a send found an engine unreachable, new shadow legs for it are skipped this long (a circuit breaker).
UNREACHABLE_FOR = 30.0


class Dispatcher:
    """Holds one adapter per engine and sends legs; never raises for an engine outage."""

    def __init__(
        self, settings: Settings, adapter_factory: Callable[[str, Settings], EngineAdapter] = make_adapter
    ) -> None:
        self.settings = settings
        self._factory = adapter_factory
        self._adapters: dict[str, EngineAdapter] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._shadow_threads: ThreadPoolExecutor | None = None
        # engine -> monotonic time until which it counts as unreachable (set by a failed send, cleared by a good one)
        self._unreachable_until: dict[str, float] = {}

    def reachable(self, engine: str) -> bool:
        """False for a while after a send to the engine found it down (a shadow is then skipped, not queued)."""
        return self._unreachable_until.get(canonical_engine(engine), 0.0) <= time.monotonic()

    def adapter(self, engine: str) -> EngineAdapter:
        engine = canonical_engine(engine)
        found = self._adapters.get(engine)
        if found is None:
            found = self._factory(engine, self.settings)
            self._adapters[engine] = found
        return found

    def send_blocking(self, engine: str, spec: dict[str, Any], leg_id: str) -> SendOutcome:
        outcome = self._send_blocking(engine, spec, leg_id)
        key = canonical_engine(engine)
        if outcome.status == SendStatus.RETRY:
            self._unreachable_until[key] = time.monotonic() + UNREACHABLE_FOR
        elif outcome.status == SendStatus.SENT:
            self._unreachable_until.pop(key, None)
        return outcome

    def _send_blocking(self, engine: str, spec: dict[str, Any], leg_id: str) -> SendOutcome:
        job = JobSpec(
            kind=TaskKind(spec["kind"]),
            params=spec["params"],
            properties=spec.get("properties") or {},
            shadow=bool(spec.get("shadow")),
        )
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
        """Send one leg; a shadow leg (`spec["shadow"]`) goes through the shadow threads."""
        if spec.get("shadow"):
            if self._shadow_threads is None:
                self._shadow_threads = ThreadPoolExecutor(max_workers=SHADOW_THREADS, thread_name_prefix="shadow")
            threads = self._shadow_threads
        else:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="dispatch")
            threads = self._threads
        return await asyncio.get_running_loop().run_in_executor(threads, self.send_blocking, engine, spec, leg_id)

    async def send_many(self, engine: str, legs: list[tuple[str, dict[str, Any]]]) -> list[SendOutcome]:
        """Send a batch to one engine through the send threads at once; outcomes in the order of `legs`."""
        return list(await asyncio.gather(*(self.send(engine, spec, leg_id) for leg_id, spec in legs)))

    def close(self) -> None:
        """Stop the send threads (a send in progress finishes first) and close every adapter."""
        for threads in (self._threads, self._shadow_threads):
            if threads is not None:
                threads.shutdown(wait=True, cancel_futures=True)
        self._threads = self._shadow_threads = None
        adapters, self._adapters = self._adapters, {}
        for engine, adapter in adapters.items():
            try:
                adapter.close()
            except Exception as exc:  # noqa: BLE001 - closing one adapter must not keep the others open
                log.warning("closing the %s adapter failed: %s", engine, redact_text(repr(exc)))
