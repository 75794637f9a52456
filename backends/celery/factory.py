"""Build a Celery app from the settings. Cheap: no broker or database connection until first use."""

from __future__ import annotations

from celery import Celery

from backends.celery.config import celery_config
from common.settings import Settings


def create_app(settings: Settings, main: str = "ctutor_gateway") -> Celery:
    """A configured app; task modules are imported only by a worker (they are listed in `include`)."""
    app = Celery(main, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
