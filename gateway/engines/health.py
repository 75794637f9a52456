"""Engine health for routes anyone may call: bounded, cached, time-limited, on resources of its own.

Why: a health check talks to the engine (Celery broadcasts a ping over the broker and waits for replies). Served
straight from a request, a dozen concurrent anonymous calls each held a request thread and a broker connection
from the pool the submit path sends with, and the pool ran dry: submits and health hung together. Here:

- *cached*: an answer is reused for `ttl` seconds (`cachetools.TTLCache`), so a flood costs one probe per engine
  per `ttl`;
- *bounded*: at most one probe per engine is in flight; every caller in the meantime awaits that same probe;
- *time-limited*: a caller waits at most `timeout` seconds and then gets "unhealthy: no answer in time" (the probe
  itself goes on and fills the cache when it ends);
- *its own resources*: probes run on a dedicated thread per engine, never on the request thread pool or the
  dispatcher's send threads, and the adapters use a broker connection of their own for control commands.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from cachetools import TTLCache

from backends.interface import Health
from common.redact import redact_text
from gateway.engines.dispatcher import Dispatcher


class HealthMonitor:
    def __init__(self, dispatcher: Dispatcher, ttl: float = 5.0, timeout: float = 3.0) -> None:
        self.dispatcher = dispatcher
        self.ttl = ttl
        self.timeout = timeout
        self._cache: TTLCache[str, Health] = TTLCache(maxsize=64, ttl=ttl)
        self._in_flight: dict[str, asyncio.Future[Health]] = {}
        self._threads: dict[str, ThreadPoolExecutor] = {}
        self.probes = 0  # how many probes really ran (a test proves a flood costs one)

    async def check(self, engine: str) -> Health:
        cached = self._cache.get(engine)
        if cached is not None:
            return cached
        probe = self._in_flight.get(engine)
        if probe is None:
            probe = asyncio.ensure_future(self._probe(engine))
            self._in_flight[engine] = probe
            probe.add_done_callback(lambda _done: self._in_flight.pop(engine, None))
        try:
            return await asyncio.wait_for(asyncio.shield(probe), self.timeout)
        except TimeoutError:
            return Health(healthy=False, engine=engine, error=f"no answer from the engine within {self.timeout:g} s")

    async def alive(self, engine: str) -> bool | None:
        """Whether the engine reports a live worker (a Celery worker answering the ping, a Prefect runner whose
        heartbeat is recent): a busy engine is alive, a dead one is not. None when the probe said nothing (no
        answer in time): a slow probe on a loaded machine must not make a live engine look dead."""
        health = await self.check(engine)
        if health.workers > 0:
            return True
        if health.checks.get("workers") is False or health.checks.get("runner") is False:
            return False
        return None

    async def _probe(self, engine: str) -> Health:
        threads = self._threads.get(engine)
        if threads is None:
            threads = self._threads[engine] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"health-{engine}")
        self.probes += 1
        try:
            adapter = self.dispatcher.adapter(engine)
            health = await asyncio.get_running_loop().run_in_executor(threads, adapter.health)
        except Exception as exc:  # noqa: BLE001 - health answers, it never fails
            health = Health(healthy=False, engine=engine, error=redact_text(f"{type(exc).__name__}: {exc}"))
        self._cache[engine] = health
        return health

    def close(self) -> None:
        """Stop the probe threads without waiting for a probe that hangs (it dies with the process)."""
        for threads in self._threads.values():
            threads.shutdown(wait=False, cancel_futures=True)
        self._threads.clear()
