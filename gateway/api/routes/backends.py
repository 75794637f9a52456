"""The legacy `/execution-backends` CRUD (admin only), built by the same factory as the admin catalog."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.auth import GuardedRoute
from gateway.api.routes.crud import crud
from gateway.jobs.catalog_admin import EXECUTION_BACKENDS
from gateway.schemas import ExecutionBackendCreate, ExecutionBackendGet, ExecutionBackendUpdate

router = APIRouter(prefix="/execution-backends", route_class=GuardedRoute)

crud(
    router, "", EXECUTION_BACKENDS, ExecutionBackendCreate, ExecutionBackendUpdate, ExecutionBackendGet,
    "execution-backends",
)  # fmt: skip
