"""The embedded broker under concurrent use: every message arrives whole and exactly once.

Several processes share one broker folder, as the worker, the API, Flower and beat do: producers publish, their
connections bind and unbind reply queues on a shared exchange the whole time (what inspect, ping and Flower do),
and consumers race each other for the same queue. With kombu's own filesystem channel this fails (a consumer
reads a message file before its producer finished writing it: JSONDecodeError; or two consumers copy one
message); with `backends/celery/fs_transport.py` every message is received once, whole, and no process raises.
Nothing here depends on how the processes interleave: the assertions hold for every interleaving.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from backends.celery import fs_transport
from backends.celery.config import celery_config
from tests.support.celery_worker import settings_from_env
from tests.support.waiting import wait_until

PRODUCERS, CONSUMERS, PER_PRODUCER = 4, 3, 150
JOBS = Queue("jobs", Exchange("jobs", "direct"), routing_key="jobs")
REPLIES = Exchange("replies", "direct")

pytestmark = pytest.mark.slow


def _options(data: Path) -> dict[str, Any]:
    return celery_config(settings_from_env({"GATEWAY_DATA_DIR": str(data)}))["broker_transport_options"]


def _produce(options: dict[str, Any], tag: int, failures: Any) -> None:
    try:
        fs_transport.install()
        with Connection("filesystem://", transport_options=options) as conn:
            producer = conn.Producer()
            channel = conn.default_channel
            for i in range(PER_PRODUCER):
                producer.publish({"id": f"{tag}-{i}", "pad": "x" * 2000}, exchange=JOBS.exchange,
                                 routing_key="jobs", declare=[JOBS], serializer="json")  # fmt: skip
                # A reply queue comes and goes on the shared exchange, as a client's inspect does.
                reply = Queue(f"reply-{tag}-{i}", REPLIES, routing_key=f"r-{tag}-{i}")
                reply.bind(channel).declare()
                producer.publish({"ping": i}, exchange=REPLIES, routing_key=f"r-{tag}-{i}", serializer="json")
                reply.bind(channel).delete()
    except BaseException:
        failures.put(f"producer {tag}: {traceback.format_exc()}")


def _consume(options: dict[str, Any], received: Any, failures: Any, stop: Any) -> None:
    try:
        fs_transport.install()
        with Connection("filesystem://", transport_options=options) as conn:
            queue = conn.SimpleQueue(JOBS)
            while not stop.is_set():
                try:
                    message = queue.get(block=True, timeout=0.2)
                except Empty:
                    continue
                received.put(message.payload["id"])
                message.ack()
    except BaseException:
        failures.put(f"consumer: {traceback.format_exc()}")


def test_every_message_arrives_whole_and_once(tmp_path: Path) -> None:
    options = _options(tmp_path / "data")
    ctx = mp.get_context("spawn")
    received, failures, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    consumers = [ctx.Process(target=_consume, args=(options, received, failures, stop)) for _ in range(CONSUMERS)]
    producers = [ctx.Process(target=_produce, args=(options, tag, failures)) for tag in range(PRODUCERS)]
    for process in (*consumers, *producers):
        process.start()
    ids: list[str] = []

    def all_received() -> bool:
        while True:
            try:
                ids.append(received.get(timeout=0.5))
            except Empty:
                break
        if not failures.empty():
            raise AssertionError(failures.get())
        return len(ids) >= PRODUCERS * PER_PRODUCER and not any(p.is_alive() for p in producers)

    try:
        wait_until(all_received, "every message to be consumed", 300)
    finally:
        stop.set()
        for process in (*producers, *consumers):
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    problems = []
    while not failures.empty():
        problems.append(failures.get())
    assert problems == []
    assert sorted(ids) == sorted(f"{t}-{i}" for t in range(PRODUCERS) for i in range(PER_PRODUCER))
    assert not list((tmp_path / "data" / "broker" / "staging").iterdir()), "no staging file left behind"
