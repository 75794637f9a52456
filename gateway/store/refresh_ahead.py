"""A cache whose values are loaded once at a time per key (single flight) and refreshed before they expire.

Why: a value read on every request (a verified login, the count of unfinished shadow legs under a cap) used to
be reloaded by every request in flight at the moment it expired: 128 concurrent scrypt checks, or 32 concurrent
counts of the whole shadow backlog (issue 29). Here one load per key runs at a time and the others await it; and
a value read after `refresh_after` (but before `ttl`) is answered at once from the cache while one background
load replaces it, so a key in steady use never expires under its readers. A key nobody reads expires at `ttl`.

A load that answers None stores nothing (and drops the key): a failed login is never cached. `forget()` drops
every value, and a load that began before it does not store its (maybe stale) answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

from common.redact import redact_text

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RefreshAhead(Generic[K, V]):
    """Values by key: loaded by one caller at a time, refreshed in the background once older than `refresh_after`."""

    def __init__(
        self,
        ttl: float,
        refresh_after: float,
        maxsize: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < refresh_after <= ttl:
            raise ValueError("refresh_after must be within (0, ttl]")
        self.ttl = ttl
        self.refresh_after = refresh_after
        self._clock = clock
        # key -> (value, when it was loaded); the least recently used goes when full.
        self._entries: TTLCache[K, tuple[V, float]] = TTLCache(maxsize=maxsize, ttl=ttl, timer=clock)
        self._loading: dict[K, asyncio.Future[V | None]] = {}
        self._generation = 0
        self.loads = 0  # loads really run (foreground and background): what tests count

    def peek(self, key: K) -> V | None:
        """The cached value, loading nothing."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (value, self._clock())

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)

    async def settled(self) -> None:
        """Until no load is under way (background refreshes included): what a test waits on."""
        while self._loading:
            await asyncio.wait(list(self._loading.values()))

    def forget(self) -> None:
        """Drop every value; loads under way will not store theirs."""
        self._entries.clear()
        self._generation += 1

    async def get(self, key: K, load: Callable[[], Awaitable[V | None]]) -> V | None:
        """The value for `key`: cached (and, if old, refreshed in the background), or loaded once for all callers."""
        entry = self._entries.get(key)
        if entry is not None:
            value, loaded_at = entry
            if self._clock() - loaded_at >= self.refresh_after and key not in self._loading:
                self._start(key, load)  # answered now; the next reader gets the new value
            return value
        loading = self._loading.get(key) or self._start(key, load)
        # Shielded: a caller that goes away (a closed connection) does not cancel the others' load.
        return await asyncio.shield(loading)

    def _start(self, key: K, load: Callable[[], Awaitable[V | None]]) -> asyncio.Future[V | None]:
        future = asyncio.ensure_future(self._load(key, load, self._generation))
        self._loading[key] = future
        future.add_done_callback(lambda done: self._done(key, done))
        return future

    async def _load(self, key: K, load: Callable[[], Awaitable[V | None]], generation: int) -> V | None:
        self.loads += 1
        value = await load()
        if generation == self._generation:
            if value is None:
                self._entries.pop(key, None)
            else:
                self.put(key, value)
        return value

    def _done(self, key: K, done: asyncio.Future[V | None]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        # A background refresh has no awaiting caller: its failure is logged here (the old value stays until ttl).
        if not done.cancelled() and done.exception() is not None:
            log.warning("cache load failed: %s", redact_text(repr(done.exception())))
