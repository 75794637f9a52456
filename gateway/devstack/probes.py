"""Health probes of the stack's services: each answers "ready yet?" without raising."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from common.engines import Engine
from common.settings import Settings


def prefect_server_healthy(api_url: str) -> bool:
    """Prefect's own health route answers `true`."""
    response = httpx.get(api_url.rstrip("/") + "/health", timeout=2.0)
    return response.status_code == 200 and response.json() is True


class RunnerPolled:
    """Health of the runner: its deployment exists and was polled after the *current* process started.

    The start time is taken when the probe first sees a new pid, so after a restart a poll by the dead runner
    does not count as the new one being ready.
    """

    def __init__(
        self, api_url: str, deployment: str, current_pid: Callable[[], int], headers: dict[str, str] | None = None
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.headers = headers or {}  # the Prefect API's auth (Settings.prefect_api_headers)
        self.deployment = deployment
        self.current_pid = current_pid
        self._pid: int | None = None
        self._since = datetime.now(UTC)

    def __call__(self) -> bool:
        pid = self.current_pid()
        if pid != self._pid:
            self._pid, self._since = pid, datetime.now(UTC)
        response = httpx.get(f"{self.api_url}/deployments/name/{self.deployment}", headers=self.headers, timeout=2.0)
        if response.status_code != 200:
            return False
        last = response.json().get("last_polled")
        return bool(last) and datetime.fromisoformat(last.replace("Z", "+00:00")) >= self._since


def celery_workers_up(settings: Settings) -> bool:
    """At least one Celery worker answers, asked through the adapter like the gateway asks.

    A fresh adapter per probe: the adapter caches a "no worker" answer for a few seconds, which would only
    delay the moment the worker shows as ready.
    """
    from backends.registry import make_adapter

    adapter = make_adapter(Engine.CELERY, settings)
    try:
        return adapter.health().workers >= 1
    finally:
        close = getattr(adapter, "close", None)
        if callable(close):
            close()


def api_healthy(base_url: str) -> bool:
    return httpx.get(f"{base_url}/api/health", timeout=2.0).status_code == 200
