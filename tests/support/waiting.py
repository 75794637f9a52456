"""Waiting on a condition with a deadline (never on time alone), shared by the suites that start processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 120.0, interval: float = 0.2) -> T:
    """Poll `check` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)  # polling interval of a deadline loop
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
