"""The process's own Prometheus instruments: sends to the engines, finished legs, reconciler cycles, comparisons.

Events are counted where they happen (the dispatcher, the reconciler, the leg state machine's finish hook) so
the hot paths stay one increment each; what describes the store (backlog, in-flight legs, queue ages) is read at
scrape time instead (`gateway.api.metrics`). Every label is a bounded vocabulary: engine names, `LegRole`,
`LegOutcome`, `SendStatus`, `ComparisonOutcome`; never a leg, result or member id.

Several API processes: with `PROMETHEUS_MULTIPROC_DIR` set before start, prometheus-client keeps these values
in memory-mapped files in that folder and the `/metrics` of any process adds up all of them (see
docs/operations.md). Without it, each process exports its own counts and Prometheus scrapes every process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum

from prometheus_client import Counter, Histogram

from gateway.legs.machine import FinishedLeg, FinishHooks
from gateway.store.models import Base

log = logging.getLogger(__name__)


class SendOutcome(StrEnum):
    """What became of one attempt to hand a leg to its engine (the `outcome` label of the sends counter)."""

    ACCEPTED = "accepted"
    # The engine was unreachable: the leg stays in the outbox and the reconciler retries it.
    DEFERRED = "deferred"
    REJECTED = "rejected"


# Seconds: a send is a broker publish or one Prefect API call; a leg's life spans a queue wait and a test run.
SEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LEG_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
CYCLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

SENDS = Counter(
    "gateway_engine_sends",
    "Attempts to hand a leg to its engine, by outcome (a leg deferred to the outbox and sent later counts twice).",
    ["engine", "outcome"],
)
SEND_SECONDS = Histogram(
    "gateway_engine_send_seconds", "Time of one send to the engine (the submit call).", ["engine"], buckets=SEND_BUCKETS
)
LEGS_FINISHED = Counter(
    "gateway_legs_finished", "Legs that reached their end, by final outcome and role.", ["engine", "role", "outcome"]
)
LEG_SECONDS = Histogram(
    "gateway_leg_duration_seconds",
    "End to end: from the leg's creation (the submit) to its end as the gateway saw it.",
    ["engine", "role"],
    buckets=LEG_BUCKETS,
)
CYCLE_SECONDS = Histogram(
    "gateway_reconciler_cycle_seconds", "One reconciler tick: outbox flush and one poll of every open leg.",
    buckets=CYCLE_BUCKETS,
)  # fmt: skip
BATCH_LEGS = Histogram(
    "gateway_reconciler_batch_legs",
    "Legs in one claimed batch (`step`: flush = the outbox, poll = open legs).",
    ["step"],
    buckets=BATCH_BUCKETS,
)
PRUNED = Counter("gateway_legs_pruned", "Finished legs deleted by the retention job.")
COMPARISONS = Counter(
    "gateway_comparisons",
    "Comparisons of a primary leg with a shadow leg written by the compare step, by outcome.",
    ["kind", "primary_engine", "shadow_engine", "outcome"],
)


class _Switch:
    """Metrics on or off for this process (`GATEWAY_METRICS_ENABLED`); off, every record call returns at once."""

    enabled = True


SWITCH = _Switch()


def record_send(engine: str, outcome: SendOutcome, seconds: float) -> None:
    if not SWITCH.enabled:
        return
    SENDS.labels(engine, outcome.value).inc()
    if outcome is SendOutcome.ACCEPTED:
        SEND_SECONDS.labels(engine).observe(seconds)


def record_batch(step: str, size: int) -> None:
    if SWITCH.enabled:
        BATCH_LEGS.labels(step).observe(size)


def record_pruned(count: int) -> None:
    if SWITCH.enabled and count:
        PRUNED.inc(count)


def record_comparisons(labels: Iterable[tuple[str, str, str, str]]) -> None:
    """Count comparisons (kind, primary engine, shadow engine, outcome) once their transaction committed.

    Counted where they are written rather than read back from the store: the comparison table grows with every
    shadowed job, and a count per outcome from it would be a scan per scrape. Each comparison is written by one
    reconciler process only (row locks), so the sum over processes is the number written.
    """
    if not SWITCH.enabled:
        return
    for kind, primary_engine, shadow_engine, outcome in labels:
        COMPARISONS.labels(kind, primary_engine, shadow_engine, outcome).inc()


@contextmanager
def reconciler_cycle() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        if SWITCH.enabled:
            CYCLE_SECONDS.observe(time.perf_counter() - started)


def leg_finished(finished: FinishedLeg) -> Iterable[Base]:
    """The finish hook: count the leg by outcome and role and time its whole life. Adds no rows.

    It runs inside the finishing transaction, so a rolled-back finish is still counted (then counted again when
    it is retried): rare, and an over-count by one is what a counter of events may show.
    """
    leg = finished.leg
    ended = leg.finished_at or finished.now
    log.info(
        "leg finished: %s",
        leg.outcome,
        extra={"leg_id": leg.id, "result_id": leg.result_id, "engine": leg.engine, "role": leg.role},
    )
    if SWITCH.enabled:
        LEGS_FINISHED.labels(leg.engine, leg.role, leg.outcome or "unknown").inc()
        if leg.created_at is not None:
            LEG_SECONDS.labels(leg.engine, leg.role).observe(max(0.0, (ended - leg.created_at).total_seconds()))
    return ()


def install(hooks: FinishHooks, enabled: bool = True) -> None:
    """Register the finish hook (idempotent) and switch recording on or off for this process."""
    SWITCH.enabled = enabled
    hooks.connect("metrics", leg_finished)
