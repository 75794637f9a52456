"""`GET /user`: the current login in the legacy `UserGet` shape (the platform's CLI checks credentials with it)."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.deps import Login, State
from gateway.api.views import user_get
from gateway.schemas import LegacyUserGet
from gateway.store.models import User

router = APIRouter()


@router.get("/user", response_model=LegacyUserGet)
async def current_user(state: State, principal: Login) -> LegacyUserGet:
    """Every role may ask who it is; fields the gateway does not keep (names, e-mail) are null."""
    async with state.sessions() as session:
        user = await session.get(User, principal.user_id)
    return user_get(principal, user)
