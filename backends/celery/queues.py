"""Queue lengths straight from the broker: Redis lists (with their priority sub-queues) or broker files.

Flower's most common complaint is that Celery has no queue-length metric; this is it, without inspect.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from backends.celery import names

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
