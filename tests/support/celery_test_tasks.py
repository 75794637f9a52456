"""Test-only Celery tasks, registered in a test worker with `include=[TEST_TASKS_MODULE]`.

`block_until` runs until the test creates a file, so a test can cancel or kill a task that is certainly
running, without any sleep on the test side. It reports progress first, so a test also sees PROGRESS.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery import shared_task

from backends.celery.base_task import BaseTask

BLOCK_UNTIL = "gateway_tests.block_until"


@shared_task(bind=True, base=BaseTask, name=BLOCK_UNTIL)
def block_until(self: BaseTask, release_file: str, timeout: float = 120.0) -> dict[str, Any]:
    """Report 50 %, then wait (inside the worker) until `release_file` exists."""
    self.update_progress(50, {"stage": "blocked", "release_file": release_file})
    deadline = time.monotonic() + timeout
    while not Path(release_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release_file} never appeared")
        time.sleep(0.05)
    return {"released": True, "worker": self.request.hostname}
