"""Shared route dependencies: the process state and the logged-in principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.auth import current_principal
from gateway.runtime import GatewayState
from gateway.store.accounts import Principal


async def get_state(request: Request) -> GatewayState:
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request."""
    return request.app.state.gw


State = Annotated[GatewayState, Depends(get_state)]
Login = Annotated[Principal, Depends(current_principal)]
