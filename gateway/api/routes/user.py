"""`GET /user`: the current login in the legacy `UserGet` shape (the platform's CLI checks credentials with it)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.auth import GuardedRoute
from gateway.api.deps import Login, State
from gateway.api.views import user_get
from gateway.jobs.catalog_admin import current_user as current_user_row
from gateway.schemas import LegacyUserGet

router = APIRouter(route_class=GuardedRoute)


@router.get("/user", response_model=LegacyUserGet)
async def current_user(state: State, principal: Login) -> LegacyUserGet:
    """Every role may ask who it is; fields the gateway does not keep (names, e-mail) are null."""
    return user_get(principal, await current_user_row(state, principal))
