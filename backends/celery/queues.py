"""Queue lengths straight from the broker: Redis lists (with their priority sub-queues) or broker files.

Flower's most common complaint is that Celery has no queue-length metric; this is it, without inspect.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from backends.celery import names

# The header every send carries (`CeleryAdapter.send`): the epoch seconds it was published, for queue ages.
SENT_AT_HEADER = "gateway_sent_at"

# kombu's Redis transport: `<queue>` holds priority 0, `<queue>\x06\x16<step>` the other priority steps.
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)


def redis_queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{REDIS_PRIORITY_SEP}{step}" for step in REDIS_PRIORITY_STEPS]


def redis_depths(url: str, queues: Sequence[str] = names.ALL_QUEUES, timeout: float = 2.0) -> dict[str, int]:
    """LLEN of every queue and its priority sub-queues, in one pipelined round trip."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in redis_queue_keys(queue):
                pipe.llen(key)
        counts = pipe.execute()
    finally:
        client.close()
    depths: dict[str, int] = {}
    per_queue = len(REDIS_PRIORITY_STEPS)
    for index, queue in enumerate(queues):
        depths[queue] = int(sum(counts[index * per_queue : (index + 1) * per_queue]))
    return depths


def filesystem_depths(folder: Path, queues: Sequence[str] = names.ALL_QUEUES) -> dict[str, int]:
    """The filesystem transport names each message `<ms>_<uuid>.<queue>.msg`: count the files per queue."""
    depths = dict.fromkeys(queues, 0)
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return depths
    for entry in entries:
        queue_part = entry.partition(".")[2]
        if queue_part.endswith(".msg"):
            queue = queue_part[: -len(".msg")]
            if queue in depths:
                depths[queue] += 1
    return depths


def _sent_at(raw: bytes | str | None) -> float | None:
    """The publish time from a kombu Redis message (a JSON envelope); None when absent or unreadable."""
    if raw is None:
        return None
    try:
        value = json.loads(raw).get("headers", {}).get(SENT_AT_HEADER)
        return float(value) if value is not None else None
    except (ValueError, TypeError, AttributeError):
        return None


def redis_oldest_ages(url: str, queues: Sequence[str] = names.ALL_QUEUES, timeout: float = 2.0) -> dict[str, float]:
    """Age of the oldest message per queue: kombu pushes on the left and pops on the right, so the oldest message
    of each priority list is at index -1 (one pipelined round trip). Queues that are empty, or whose oldest message
    was sent without the header (by another client), are left out."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in redis_queue_keys(queue):
                pipe.lindex(key, -1)
        tails = pipe.execute()
    finally:
        client.close()
    now = time.time()
    ages: dict[str, float] = {}
    per_queue = len(REDIS_PRIORITY_STEPS)
    for index, queue in enumerate(queues):
        sent = [t for raw in tails[index * per_queue : (index + 1) * per_queue] if (t := _sent_at(raw)) is not None]
        if sent:
            ages[queue] = max(0.0, now - min(sent))
    return ages


def filesystem_oldest_ages(folder: Path, queues: Sequence[str] = names.ALL_QUEUES) -> dict[str, float]:
    """The file broker writes one file per message: the oldest file's modification time per queue (the names'
    numbers are a monotonic clock of the sending process, not a time of day)."""
    oldest: dict[str, float] = {}
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return {}
    for entry in entries:
        queue = entry.name.partition(".")[2].removesuffix(".msg")
        if queue in queues:
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:  # consumed meanwhile
                continue
            oldest[queue] = min(oldest.get(queue, mtime), mtime)
    now = time.time()
    return {queue: max(0.0, now - mtime) for queue, mtime in oldest.items()}


# The task id in a kombu Redis message's headers (`"id": "<task id>"`); the body is base64, so nothing in it matches.
_HEADER_ID = re.compile(rb'"id": "([^"]+)"')


def redis_queued_ids(url: str, queues: Sequence[str] = names.ALL_QUEUES, timeout: float = 5.0) -> set[str]:
    """The task ids of every message waiting in the queues (all priority sub-queues), in one pipelined round trip.

    Messages a worker took but did not acknowledge are not here (kombu keeps them in its `unacked` hash until the
    visibility timeout): a live worker reports those itself (`query_task`), a dead one's are what a caller wants
    to find."""
    return set(redis_queued_where(url, queues, timeout))


def redis_queued_where(url: str, queues: Sequence[str] = names.ALL_QUEUES, timeout: float = 5.0) -> dict[str, str]:
    """The queue each waiting message's task id waits in ({task id: queue}; a priority sub-queue counts as its
    queue), in one pipelined round trip. Why the queue: a message waits for a *consumer of that queue*; whether a
    live worker consumes it tells a busy engine from a misconfigured one (`liveness.HoldWatch`)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in redis_queue_keys(queue):
                pipe.lrange(key, 0, -1)
        lists = pipe.execute()
    finally:
        client.close()
    found: dict[str, str] = {}
    per_queue = len(REDIS_PRIORITY_STEPS)
    for index, messages in enumerate(lists):
        for raw in messages:
            match = _HEADER_ID.search(raw)
            if match is not None:
                found[match.group(1).decode("ascii", "replace")] = queues[index // per_queue]
    return found
