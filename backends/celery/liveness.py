"""Legs that nothing holds any more, although their worker answers: found in seconds, not at the visibility timeout.

Three faults leave a leg open with no one to finish it while every worker answers its ping (issue 24):

- a worker SIGKILLed and restarted under the same hostname (compose `restart:`, `celery-system-worker@%h`): the
  row still names that hostname as running the task, but the restarted process never received it;
- the broker restarted while tasks ran: `worker_cancel_long_running_tasks_on_connection_loss` cancels them (the
  row reads RETRY, or the last PROGRESS) and their messages wait in the broker's unacknowledged set;
- queued messages lost (`FLUSHALL`, a broker without persistence restarted): the leg was sent, but is neither
  queued nor started.

Redis hands an unacknowledged message out again only after its visibility timeout (above the hard time limit,
16 minutes by default), and a lost message never. So the adapter asks what *is* held: every live worker, with
`query_task` (what it has active, reserved or scheduled), and, for Redis, the queues themselves (the ids of the
messages waiting). A leg that neither holds, on checks spanning `lost_after` seconds (two at least), is lost;
the gateway then runs it again under the same id (a stored success is never replaced, so a late redelivery of
the old message runs nothing).

What is not judged, because it cannot be told: a running leg whose worker did not answer the check (that is the
ping's business: `CeleryAdapter._gone_workers`), and a queued or missing leg when fewer workers answered than are
known (a silent worker may hold it) or when the broker cannot list its queues (AMQP).

A waiting leg can also be *busy* (issue 27 §4: a busy-but-alive engine is not a dead one): its message waits in
a queue that at least one live worker consumes (`active_queues`), or a live worker has reserved it behind the
tasks it runs. Such a leg is only queued behind students ahead of it (a worker at its concurrency, endless loops
running to their time limit): a shadow leg still so at its deadline ends `late`, not as an infrastructure error.
A message in a queue no live worker consumes (a misconfigured engine), or no live worker at all, is not busy; a
running leg never is (its time is the student's). Told only where the broker can list its queues (Redis).

The checks run on a thread of their own, at most one at a time, so a poll never waits for a broadcast's timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)

# `query_task`'s answer per worker: {task id: [state, request info]}; "ready" means it just finished there.
Replies = Mapping[str, Mapping[str, Any]]
# `active_queues`' answer, reduced: {worker: the names of the queues it consumes}.
Consumers = Mapping[str, Collection[str]]


class Holding(StrEnum):
    """Where a leg should be, by what its row says."""

    # STARTED/PROGRESS on a named worker: that worker must have it active.
    RUNNING = "running"
    # No row yet, or RETRY (cancelled by Celery): a queue or some worker must hold its message.
    WAITING = "waiting"


@dataclass(frozen=True)
class Candidate:
    holding: Holding
    worker: str | None = None


@dataclass
class _Unheld:
    since: float
    seen: float
    checks: int = 1


@dataclass(frozen=True)
class HoldVerdicts:
    """What `HoldWatch.observe` found of a poll's candidates: {leg id: reason} each."""

    # Held nowhere long enough: nothing will finish it (the gateway runs it again).
    lost: dict[str, str] = field(default_factory=dict)
    # Queued behind a busy but live worker that consumes its queue (or reserved by one): waited for, not dead.
    busy: dict[str, str] = field(default_factory=dict)


# A busy leg is reported for this many check intervals after the last check that saw it busy: a failed check
# (broker unreachable) says nothing, but a leg is not busy on old news for ever.
_BUSY_FRESH = 5

# An unheld leg no poll has named for this long is dropped (it finished, or another process took it over).
_FORGET_AFTER = 600.0


@dataclass
class HoldWatch:
    """Background checks of what holds the legs a poll saw open; `observe` answers from the checks so far.

    `ask_workers(ids)` broadcasts `query_task` and returns every answer ({} when none); `queued_ids()` returns the
    ids waiting in the broker's queues with the queue each waits in, or None when the broker cannot tell;
    `known_workers()` how many workers are known to be up; `active_queues()` the queues each answering worker
    consumes (asked only when a candidate is queued, at most once per check)."""

    ask_workers: Callable[[list[str]], Replies]
    queued_ids: Callable[[], Mapping[str, str] | None]
    known_workers: Callable[[], int]
    lost_after: float
    active_queues: Callable[[], Consumers] = field(default=lambda: {})
    interval: float = 3.0
    clock: Callable[[], float] = time.monotonic
    # How a check is run: on a thread of its own (the fast layer runs it in place).
    start: Callable[[Callable[[], None]], None] = field(default=lambda check: _on_a_thread(check))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _unheld: dict[str, _Unheld] = field(default_factory=dict, repr=False)
    _pending: dict[str, Candidate] = field(default_factory=dict, repr=False)
    # {leg id: (why busy, when the check that saw it began)}.
    _busy: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    _checking: bool = False
    _checked_at: float = float("-inf")
    _closed: bool = False

    def observe(self, polled: Iterable[str], candidates: Mapping[str, Candidate]) -> HoldVerdicts:
        """Of `candidates` (the open legs of this poll that should be held somewhere), those found unheld long enough
        and those the last check found busy, with the reasons; starts a check when one is due.

        The other legs of the poll (`polled`) are not candidates any more (finished, or now running): what was seen
        of them is forgotten. A check covers the candidates of every poll since the last one began."""
        now = self.clock()
        with self._lock:
            for leg_id in polled:
                if leg_id not in candidates:
                    self._unheld.pop(leg_id, None)
                    self._busy.pop(leg_id, None)  # running now, or ended: its time is no longer a queue's
            self._pending.update(candidates)
            for leg_id in [leg_id for leg_id, unheld in self._unheld.items() if now - unheld.seen > _FORGET_AFTER]:
                del self._unheld[leg_id]  # not polled for long: finished or taken over elsewhere
            for leg_id in [leg_id for leg_id, (_why, at) in self._busy.items() if now - at > _FORGET_AFTER]:
                del self._busy[leg_id]
            for leg_id in candidates:
                if (unheld := self._unheld.get(leg_id)) is not None:
                    unheld.seen = now
            due = bool(self._pending) and not self._checking and not self._closed
            due = due and now - self._checked_at >= self.interval
            batch: dict[str, Candidate] = {}
            if due:
                self._checking, self._checked_at = True, now
                batch, self._pending = self._pending, {}
            lost = {
                leg_id: self._reason(candidates[leg_id], now - unheld.since)
                for leg_id, unheld in self._unheld.items()
                if leg_id in candidates and unheld.checks >= 2 and now - unheld.since >= self.lost_after
            }
            # Busy only as long as checks still see it: with the broker or the workers unreachable, it lapses.
            busy = {
                leg_id: reason
                for leg_id, (reason, at) in self._busy.items()
                if leg_id in candidates and now - at <= _BUSY_FRESH * self.interval
            }
        if due:
            self.start(lambda: self._check(batch))
        return HoldVerdicts(lost=lost, busy=busy)

    def forget(self, leg_id: str) -> None:
        """A leg sent again: what was seen of its previous attempt no longer counts."""
        with self._lock:
            self._unheld.pop(leg_id, None)
            self._busy.pop(leg_id, None)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @staticmethod
    def _reason(candidate: Candidate, seconds: float) -> str:
        if candidate.holding is Holding.RUNNING:
            return (
                f"worker {candidate.worker} answers but has not held the task for {seconds:.0f} s "
                "(restarted, or the task was cancelled on a broker connection loss)"
            )
        return f"neither queued at the broker nor held by any worker for {seconds:.0f} s (its message was lost)"

    def _check(self, candidates: dict[str, Candidate]) -> None:
        started = self.clock()
        busy: dict[str, str] | None
        try:
            held, judged, busy = self._held(candidates)
        except Exception as exc:  # noqa: BLE001 - broker or workers unreachable: nothing can be said this round
            logger.debug("hold check skipped: %r", exc)
            held, judged, busy = set(), set(), None
        with self._lock:
            self._checking = False
            # Busy is what the last check that could tell saw: a leg it checked and did not find busy is not.
            for leg_id in candidates if busy is not None else ():
                if leg_id in busy:
                    self._busy[leg_id] = (busy[leg_id], started)
                else:
                    self._busy.pop(leg_id, None)
            for leg_id in judged:
                if leg_id in held:
                    self._unheld.pop(leg_id, None)
                elif (unheld := self._unheld.get(leg_id)) is None:
                    self._unheld[leg_id] = _Unheld(since=started, seen=started)
                else:
                    unheld.checks += 1

    def _held(self, candidates: dict[str, Candidate]) -> tuple[set[str], set[str], dict[str, str]]:
        """(the ids held somewhere, the ids this check can judge, the busy ones with the reason). The queues are
        read before the workers are asked: a message taken off a queue in between is then already in its worker's
        hands."""
        waiting = [leg_id for leg_id, c in candidates.items() if c.holding is Holding.WAITING]
        queued = self.queued_ids() if waiting else {}
        ask = [leg_id for leg_id in candidates if queued is None or leg_id not in queued]
        replies = self.ask_workers(ask) if ask else {}
        busy = self._busy_of(waiting, queued or {}, replies)
        if not replies:  # no worker answered: no one can be judged from here
            return set(queued or ()), set(), busy
        held = set(queued or ())
        for answer in replies.values():
            held.update(leg_id for leg_id, info in (answer or {}).items() if _holds(info))
        judged = {
            leg_id
            for leg_id, c in candidates.items()
            if (c.holding is Holding.RUNNING and c.worker in replies)
            or (c.holding is Holding.WAITING and queued is not None and len(replies) >= self.known_workers())
        }
        return held, judged, busy

    def _busy_of(self, waiting: list[str], queued: Mapping[str, str], replies: Replies) -> dict[str, str]:
        """The waiting legs that wait for a live worker: queued in a queue an answering worker consumes (asked with
        one `active_queues` broadcast, only when some are queued), or reserved by a worker that answered."""
        busy: dict[str, str] = {}
        waiting_ids = set(waiting)
        for worker, answer in replies.items():
            for leg_id, info in (answer or {}).items():
                if leg_id in waiting_ids and _state(info) in _RESERVED:
                    busy[leg_id] = f"reserved by the live worker {worker} behind the tasks it runs"
        in_queue = {leg_id: queued[leg_id] for leg_id in waiting if leg_id in queued}
        if not in_queue:
            return busy
        consumers: dict[str, list[str]] = {}
        for worker, consumed in (self.active_queues() or {}).items():
            for queue in consumed:
                consumers.setdefault(queue, []).append(worker)
        for leg_id, queue in in_queue.items():
            if workers := consumers.get(queue):
                busy[leg_id] = f"queued in {queue} behind busy live workers consuming it ({', '.join(sorted(workers))})"
        return busy


def _on_a_thread(check: Callable[[], None]) -> None:
    threading.Thread(target=check, daemon=True, name="hold-check").start()


# `query_task` states of a task a worker took but has not started: it waits behind what the worker runs.
_RESERVED = frozenset({"reserved", "scheduled"})


def _state(info: Any) -> str | None:
    return info[0] if isinstance(info, list | tuple) and info else None


def _holds(info: Any) -> bool:
    """A `query_task` entry that says the worker has the task (active, reserved or scheduled)."""
    return _state(info) != "ready"
