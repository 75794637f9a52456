"""Shared route dependencies: the process state, the logged-in principal, and the role aliases.

A route states who may call it by the type of its principal parameter (`Admin`, `AdminOrStudent`, ...): the
role check is the dependency's (`gateway.api.auth.require_role`), never the route body's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.auth import current_principal, require_role
from gateway.runtime import GatewayState
from gateway.schemas import Role
from gateway.store.accounts import Principal


async def get_state(request: Request) -> GatewayState:
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request."""
    return request.app.state.gw


State = Annotated[GatewayState, Depends(get_state)]
# Any role: only the login is checked.
Login = Annotated[Principal, Depends(current_principal)]
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
AdminOrStudent = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.STUDENT))]
AdminOrWorker = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.WORKER))]
AnyRole = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.WORKER, Role.STUDENT))]
