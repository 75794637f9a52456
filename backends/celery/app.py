"""The worker's app: `celery -A backends.celery.app worker` (what `gateway worker start` runs).

Only worker processes import this module; the gateway builds its own app inside `CeleryAdapter`.
"""

from __future__ import annotations

from backends.celery.factory import create_app
from common.settings import get_settings

app = create_app(get_settings())
app.set_current()
app.set_default()
