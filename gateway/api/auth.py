"""HTTP Basic as FastAPI dependencies: the logged-in principal, or the contract's 401; role checks, or 403.

Every failure answers the same 401, so the answer never tells which part of a login was wrong. Checking the
password itself is `gateway.store.accounts.Authenticator`'s job.
"""

from __future__ import annotations

import base64

from fastapi import HTTPException, Request, status

from gateway.store.accounts import Principal

UNAUTHORIZED = "Could not validate credentials"


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "Basic"}
    )


def _basic_credentials(request: Request) -> tuple[str, str]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise _unauthorized()
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise _unauthorized() from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise _unauthorized()
    return username, password


async def current_principal(request: Request) -> Principal:
    """FastAPI dependency: the logged-in principal, or 401."""
    username, password = _basic_credentials(request)
    principal = await request.app.state.gw.auth.login(username, password)
    if principal is None:
        raise _unauthorized()
    return principal


def forbidden() -> HTTPException:
    return HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Not allowed")


def require(principal: Principal, *roles: str) -> None:
    if principal.role not in roles:
        raise forbidden()
