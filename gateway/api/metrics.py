"""`GET /metrics`: the process's counters plus what the store and the brokers say right now, for Prometheus.

Two sources, one text:
- the event counters and histograms of `gateway.engines.metrics` (this process's, or every process's when
  `PROMETHEUS_MULTIPROC_DIR` is set: prometheus-client's multiprocess mode adds up the files in that folder);
- a snapshot of the open legs (one grouped query, `gateway.store.leg_stats`), of the cutover stages (one query
  over the migrations, `gateway.store.cutover_configs.stage_rows`) and of every engine's queue
  depths (`EngineAdapter.queue_depths`), taken at most once per `gateway_metrics_cache_seconds` per process
  however often it is scraped, so a scrape never scans the history and concurrent scrapes share one refresh.

The snapshot's gauges are not process values, so they never go through the multiprocess files: any process
serves the same numbers for them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cachetools import TTLCache
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backends.interface import LegPhase
from common.redact import redact_text
from gateway.cutover.stages import STAGE_ORDER
from gateway.jobs.metrics_snapshot import StoreSnapshot, store_snapshot
from gateway.legs.states import DispatchState
from gateway.runtime import GatewayState

log = logging.getLogger(__name__)

# A broker or engine API slower than this is reported as unreadable for this scrape instead of holding it.
QUEUE_READ_TIMEOUT = 3.0
WAITING_PHASES = {LegPhase.QUEUED.value, LegPhase.MISSING.value}
SNAPSHOT = "snapshot"  # the one key of the snapshot's cache


@dataclass
class Snapshot:
    """What the store and the engines said at `taken` (monotonic seconds)."""

    taken: float
    now: datetime
    engines: list[str]
    store: StoreSnapshot
    depths: dict[str, dict[str, int] | None] = field(default_factory=dict)
    ages: dict[str, dict[str, float]] = field(default_factory=dict)


def _age(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


class SnapshotCollector(Collector):
    """Turns the latest snapshot into gauge families (engines with nothing open still report 0)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot
        if snap is None:
            return
        in_flight = GaugeMetricFamily(
            "gateway_legs_in_flight",
            "Legs sent to their engine and not finished, by phase.",
            labels=["engine", "role", "phase"],
        )
        backlog = GaugeMetricFamily(
            "gateway_outbox_backlog", "Legs waiting in the outbox to be sent to their engine.", labels=["engine"]
        )
        backlog_age = GaugeMetricFamily(
            "gateway_outbox_oldest_age_seconds", "Age of the oldest leg in the outbox (0: empty).", labels=["engine"]
        )
        waiting_age = GaugeMetricFamily(
            "gateway_legs_waiting_oldest_age_seconds",
            "Since the oldest sent leg that no worker or runner has started was sent (0: none waiting).",
            labels=["engine"],
        )
        stalled = GaugeMetricFamily(
            "gateway_legs_stalled",
            "Sent legs the engine reports nothing runs any more (Prefect: a Late run, its runner gone).",
            labels=["engine"],
        )
        stalled_count: dict[str, int] = dict.fromkeys(snap.engines, 0)
        pending: dict[str, int] = dict.fromkeys(snap.engines, 0)
        pending_since: dict[str, datetime | None] = dict.fromkeys(snap.engines)
        waiting_since: dict[str, datetime | None] = dict.fromkeys(snap.engines)
        for group in snap.store.groups:
            if group.dispatch_state == DispatchState.PENDING:
                pending[group.engine] = pending.get(group.engine, 0) + group.count
                pending_since[group.engine] = _earliest(pending_since.get(group.engine), group.oldest_created)
            elif group.dispatch_state == DispatchState.SENT:
                in_flight.add_metric([group.engine, group.role, group.phase], group.count)
                stalled_count[group.engine] = stalled_count.get(group.engine, 0) + group.with_error
                if group.phase in WAITING_PHASES:
                    waiting_since[group.engine] = _earliest(waiting_since.get(group.engine), group.oldest_dispatched)
        for engine, count in pending.items():
            backlog.add_metric([engine], count)
            backlog_age.add_metric([engine], _age(snap.now, pending_since.get(engine)))
        for engine, since in waiting_since.items():
            waiting_age.add_metric([engine], _age(snap.now, since))
        for engine, count in stalled_count.items():
            stalled.add_metric([engine], count)
        yield from (in_flight, backlog, backlog_age, waiting_age, stalled)
        depth = GaugeMetricFamily(
            "gateway_queue_depth",
            "Messages waiting per queue: Celery queue (broker) or Prefect deployment (runs not yet picked up).",
            labels=["engine", "queue"],
        )
        readable = GaugeMetricFamily(
            "gateway_queue_depth_readable",
            "1 when the engine's queue depths could be read for this scrape.",
            labels=["engine"],
        )
        oldest = GaugeMetricFamily(
            "gateway_queue_oldest_age_seconds",
            "Since the oldest waiting message of a queue was sent (Celery; absent for an empty queue).",
            labels=["engine", "queue"],
        )
        for engine, queues in snap.depths.items():
            readable.add_metric([engine], 0 if queues is None else 1)
            for queue, count in (queues or {}).items():
                depth.add_metric([engine, queue], count)
        for engine, ages in snap.ages.items():
            for queue, age in ages.items():
                oldest.add_metric([engine, queue], age)
        yield from (depth, readable, oldest)
        stage = GaugeMetricFamily(
            "gateway_cutover_stage",
            "Each migration's stage as its rank: " + ", ".join(f"{s.rank} {s.value}" for s in STAGE_ORDER) + ".",
            labels=["scope", "target", "old_engine", "new_engine"],
        )
        for row in snap.store.stages:
            stage.add_metric([row.scope, row.target, row.old_engine, row.new_engine], row.stage.rank)
        yield stage


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return min(a, b)


def process_registry() -> CollectorRegistry:
    """Every process's counters in multiprocess mode, else this process's own."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class MetricsView:
    """One per API process: the snapshot (kept `ttl` seconds in a one-entry `cachetools.TTLCache`) and the two
    registries it renders. Concurrent scrapes of an expired snapshot share one refresh (the lock)."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.collector = SnapshotCollector()
        self.snapshot_registry = CollectorRegistry(auto_describe=False)
        self.snapshot_registry.register(self.collector)
        self.processes = process_registry()
        self._lock = asyncio.Lock()
        self.ttl = state.settings.gateway_metrics_cache_seconds

    @property
    def ttl(self) -> float:
        return float(self._cache.ttl)

    @ttl.setter
    def ttl(self, seconds: float) -> None:
        self._cache: TTLCache[str, Snapshot] = TTLCache(maxsize=1, ttl=seconds, timer=time.monotonic)

    async def refresh(self) -> None:
        if SNAPSHOT in self._cache:
            return
        async with self._lock:
            if SNAPSHOT in self._cache:
                return
            store = await store_snapshot(self.state.sessions)
            engines = sorted(
                set(self.state.dispatcher.engines())
                | {g.engine for g in store.groups}
                | {self.state.settings.gateway_tasks_engine}
            )
            queues = await asyncio.gather(*(self._queues(engine) for engine in engines))
            snapshot = Snapshot(
                taken=time.monotonic(),
                now=datetime.now(UTC),
                engines=engines,
                store=store,
                depths={engine: depths for engine, (depths, _) in zip(engines, queues, strict=True)},
                ages={engine: ages for engine, (_, ages) in zip(engines, queues, strict=True)},
            )
            self._cache[SNAPSHOT] = self.collector.snapshot = snapshot

    async def _queues(self, engine: str) -> tuple[dict[str, int] | None, dict[str, float]]:
        """The engine's queue depths and oldest-message ages (None, {} when it cannot be read now)."""

        def read() -> tuple[dict[str, int], dict[str, float]]:
            adapter = self.state.dispatcher.adapter(engine)
            return adapter.queue_depths(), adapter.queue_ages()

        try:
            return await asyncio.wait_for(asyncio.to_thread(read), QUEUE_READ_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - an engine that cannot say must not break the scrape
            log.info("queues of %s unreadable: %s", engine, redact_text(repr(exc)), extra={"engine": engine})
            return None, {}

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.processes) + generate_latest(self.snapshot_registry)


def metrics_router() -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state: GatewayState = request.app.state.gw
        if not state.settings.gateway_metrics_enabled:
            return Response(status_code=404)
        view: MetricsView | None = getattr(request.app.state, "metrics_view", None)
        if view is None:
            view = request.app.state.metrics_view = MetricsView(state)
        return Response(await view.render(), media_type=CONTENT_TYPE_LATEST)

    return router
