"""The worker's app: `celery -A backends.celery.app worker` (what `gateway worker start` runs).

Only worker processes import this module; the gateway builds its own app inside `CeleryAdapter`.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_prerun, worker_ready

from backends.celery.factory import create_app
from backends.celery.leftovers import sweep_now_and_then
from common.settings import get_settings

app = create_app(get_settings())
app.set_current()
app.set_default()


@worker_ready.connect
def _sweep_at_start(**_kwargs: Any) -> None:
    """A worker starting after a crash removes what the dead runs left on this host."""
    sweep_now_and_then(get_settings())


@task_prerun.connect
def _sweep_now_and_then(**_kwargs: Any) -> None:
    sweep_now_and_then(get_settings())
