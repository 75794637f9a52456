"""All routes of the legacy contract plus the admin catalog, as one router mounted at /api (and maybe /)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.routes import admin, backends, cutover, results, tasks, tests


def api_router() -> APIRouter:
    router = APIRouter()
    for module in (tests, results, tasks, backends, admin, cutover):
        router.include_router(module.router)
    return router
