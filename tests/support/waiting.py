"""Waiting on a condition with a deadline (never on time alone), shared by the suites that start processes.

A loaded machine answers slowly: a request that times out, a connection refused or reset while a server is
(re)starting, a 5xx from a server still warming up. None of these says the condition will never hold, so a wait
counts them as "not yet" and keeps polling until its deadline; anything else a check raises (an assertion, a
4xx) fails at once. The deadline is the only limit, and it says what was last seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

# How long a process (a server, a runner, a worker) may take to come up: generous, because a loaded 2-core machine
# (other suites, CPU burners) stretches a start that takes 3-10 s when idle; a wait ends as soon as it holds.
STARTUP = 240.0


def is_slow_answer(exc: BaseException) -> bool:
    """A timeout, a connection error, or a server error: the other side is not ready yet, not wrong."""
    if isinstance(exc, httpx.TransportError):  # connect/read/write/pool timeouts, refused or reset connections
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 120.0, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout` seconds.

    A slow answer raised by `check` (`is_slow_answer`) is one more "not yet"; any other exception propagates.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except httpx.HTTPError as exc:
            if not is_slow_answer(exc):
                raise
            last = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)  # polling interval of a deadline loop
