"""The routes: the legacy contract's (mounted at /api and, by default, at the root) and the gateway's own.

A legacy worker's API URL often has no `/api` (a proxy stripped it), so the legacy routes are also served at
the root. The gateway's own routes (the admin catalog, health) live only under `/api`, so nothing the gateway
adds can collide with a path of the legacy platform at the root.
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.routes import admin, backends, comparisons, cutover, results, tasks, tests, user
from gateway.schemas import ERROR_RESPONSES

LEGACY = (tests, results, tasks, backends, user)


def api_router(*, legacy_only: bool = False) -> APIRouter:
    """Every route (for /api), or only those of the legacy contract (for the root).

    The error answers any route may give are declared once here, so the OpenAPI spec shows them.
    """
    router = APIRouter(responses=ERROR_RESPONSES)
    for module in LEGACY if legacy_only else (*LEGACY, admin, comparisons, cutover):
        router.include_router(module.router)
    return router
