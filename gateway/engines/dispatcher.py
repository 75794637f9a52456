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
from backends.registry import ENGINE_ALIASES, UnknownEngineError, canonical_engine, make_adapter
from common.redact import redact_text
from common.settings import Settings
from gateway.engines import metrics

log = logging.getLogger(__name__)


class DispatchMode(StrEnum):
    """Who sends a new job's primary leg (`EngineAdapter.refuses_at_submit` decides, per engine)."""

    REQUEST = "request"  # the admitting request, right after its commit: a refusal reaches the client
    OUTBOX = "outbox"  # the outbox relay (the reconciler), woken by the commit: the request does no engine work


class SendBy(StrEnum):
    """Who sends one new job's primary leg, and how the leg is committed for it (`GatewayState.send_by`)."""

    # The admitting request, right after its commit (due after a grace: the outbox takes over if it did not).
    REQUEST = "request"
    # A relay woken by the commit (in-process wake-up or PostgreSQL NOTIFY) claims it: committed due at once.
    RELAY = "relay"
    # This process's relay, which is running: committed under its lease and handed over in memory, so no relay
    # has to claim it back from the store.
    HAND_OVER = "hand_over"


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
    # RETRY for a reason that is not an outage (the adapter raised something unexpected for this job): counted
    # on the leg, which is rejected after a bounded number of them instead of being retried for ever.
    fault: bool = False


_METRIC_OUTCOME = {
    SendStatus.SENT: metrics.SendOutcome.ACCEPTED,
    SendStatus.RETRY: metrics.SendOutcome.DEFERRED,
    SendStatus.REJECTED: metrics.SendOutcome.REJECTED,
}


def _engine_label(engine: str) -> str:
    """The canonical engine name; anything else is one `unknown` label, never the raw value."""
    try:
        return canonical_engine(engine)
    except UnknownEngineError:
        return "unknown"


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
        self._modes: dict[str, DispatchMode] = {}

    def dispatch_mode(self, engine: str) -> DispatchMode:
        """Who sends a new leg for `engine`; an engine this gateway cannot build is the request's (it then hears
        the error and answers it)."""
        mode = self._modes.get(engine)
        if mode is None:
            try:
                refuses = self.adapter(engine).refuses_at_submit
            except Exception:  # noqa: BLE001 - unknown or unbuildable: the request's send reports it
                return DispatchMode.REQUEST
            mode = self._modes[engine] = DispatchMode.REQUEST if refuses else DispatchMode.OUTBOX
        return mode

    def reachable(self, engine: str) -> bool:
        """False for a while after a send to the engine found it down (a shadow is then skipped, not queued)."""
        return self._unreachable_until.get(_engine_label(engine), 0.0) <= time.monotonic()

    def adapter(self, engine: str) -> EngineAdapter:
        engine = canonical_engine(engine)
        found = self._adapters.get(engine)
        if found is None:
            found = self._factory(engine, self.settings)
            self._adapters[engine] = found
        return found

    def known_engines(self) -> list[str]:
        """Every engine name the gateway can route to (canonical names), whether used yet or not."""
        return sorted(set(ENGINE_ALIASES.values()))

    def send_blocking(self, engine: str, spec: dict[str, Any], leg_id: str, rerun: bool = False) -> SendOutcome:
        """One send, counted and timed per engine and outcome (`gateway.engines.metrics`); a send that found the
        engine unreachable opens the shadow circuit breaker for it (`reachable`), a good one closes it.

        `rerun`: the leg ran before and failed in the infrastructure, so the engine starts it over.
        """
        started = time.perf_counter()
        outcome = self._send_blocking(engine, spec, leg_id, rerun)
        metrics.record_send(_engine_label(engine), _METRIC_OUTCOME[outcome.status], time.perf_counter() - started)
        key = _engine_label(engine)
        if outcome.status == SendStatus.RETRY:
            self._unreachable_until[key] = time.monotonic() + UNREACHABLE_FOR
        elif outcome.status == SendStatus.SENT:
            self._unreachable_until.pop(key, None)
        return outcome

    def _send_blocking(self, engine: str, spec: dict[str, Any], leg_id: str, rerun: bool) -> SendOutcome:
        job = JobSpec(
            kind=TaskKind(spec["kind"]),
            params=spec["params"],
            properties=spec.get("properties") or {},
            shadow=bool(spec.get("shadow")),
        )
        priority = int(spec.get("priority") or 8)
        try:
            adapter = self.adapter(engine)
            send = adapter.rerun if rerun else adapter.submit
            run_id = send(job, leg_id, priority=priority)
        except DeploymentNotFound as exc:
            return SendOutcome(SendStatus.REJECTED, error=str(exc), deployment=exc.deployment)
        except EngineConfigurationError as exc:
            return SendOutcome(SendStatus.REJECTED, error=redact_text(str(exc)))
        except EngineUnavailable as exc:
            return SendOutcome(SendStatus.RETRY, error=redact_text(str(exc)) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - an unexpected adapter error: retry a bounded number of times
            log.warning(
                "dispatch of leg %s failed: %s",
                leg_id,
                redact_text(repr(exc)),
                extra={"leg_id": leg_id, "engine": engine},
            )
            return SendOutcome(SendStatus.RETRY, error=redact_text(f"{type(exc).__name__}: {exc}"), fault=True)
        return SendOutcome(SendStatus.SENT, engine_run_id=run_id)

    async def send(self, engine: str, spec: dict[str, Any], leg_id: str, rerun: bool = False) -> SendOutcome:
        """Send one leg; a shadow leg (`spec["shadow"]`) goes through the shadow threads."""
        loop = asyncio.get_running_loop()
        threads = self._pool(bool(spec.get("shadow")))
        return await loop.run_in_executor(threads, self.send_blocking, engine, spec, leg_id, rerun)

    async def send_many(self, engine: str, legs: list[tuple[str, dict[str, Any], bool]]) -> list[SendOutcome]:
        """Send a batch (leg id, spec, rerun) to one engine, outcomes in order.

        The batch is cut into at most `SEND_THREADS` runs, each sent one leg after the other by one thread: the
        network waits still overlap, but the event loop hands work to a thread once per run, not once per leg
        (a thread hop per leg, with the GIL passed back and forth each time, cost more than the send itself)."""
        loop = asyncio.get_running_loop()
        sends = []
        slots: list[list[int]] = []
        for shadow in (False, True):
            mine = [i for i, (_, spec, _) in enumerate(legs) if bool(spec.get("shadow")) is shadow]
            if not mine:
                continue
            size = -(-len(mine) // (SHADOW_THREADS if shadow else SEND_THREADS))
            for start in range(0, len(mine), size):
                slots.append(mine[start : start + size])
                run = [legs[i] for i in slots[-1]]
                sends.append(loop.run_in_executor(self._pool(shadow), self._send_run, engine, run))
        outcomes: list[SendOutcome | None] = [None] * len(legs)
        for slot, done in zip(slots, await asyncio.gather(*sends), strict=True):
            for i, outcome in zip(slot, done, strict=True):
                outcomes[i] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _send_run(self, engine: str, legs: list[tuple[str, dict[str, Any], bool]]) -> list[SendOutcome]:
        return [self.send_blocking(engine, spec, leg_id, rerun) for leg_id, spec, rerun in legs]

    def _pool(self, shadow: bool) -> ThreadPoolExecutor:
        """The shadow threads for a shadow leg, the send threads for any other (built on first use)."""
        if shadow:
            if self._shadow_threads is None:
                self._shadow_threads = ThreadPoolExecutor(max_workers=SHADOW_THREADS, thread_name_prefix="shadow")
            return self._shadow_threads
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="dispatch")
        return self._threads

    def engines(self) -> list[str]:
        """The engines this process has talked to (an adapter was built): the ones whose queues are worth a look."""
        return sorted(self._adapters)

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
