"""HTTP Basic and roles as FastAPI dependencies: the logged-in principal or the contract's 401; a role or 403.

- `LegacyBasic` is FastAPI's `HTTPBasic` (so the OpenAPI spec declares the scheme) with the contract's stricter
  reading: strict base64, UTF-8, a non-empty username; every failure is the same 401, so the answer never
  tells which part of a login was wrong. Checking the password is `gateway.store.accounts.Authenticator`'s job.
- `require_role(Role.ADMIN, ...)` builds a dependency that admits only those roles. Its 403 comes *after* the
  request has validated, as when the check sat at the top of each route: a malformed body or query is a 422
  whoever sends it, a missing login a 401 before anything. FastAPI resolves dependencies before it validates
  the route's own parameters, so the dependency hands back a `Refusal` instead of raising, and `GuardedRoute`
  (the route class of every router here) raises it right before the endpoint runs. On a route of another
  class the dependency raises at once: a refusal is never lost.
"""

from __future__ import annotations

import base64
import functools
import inspect
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.requests import HTTPConnection

from gateway.schemas import Role

UNAUTHORIZED = "Could not validate credentials"


def _unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=UNAUTHORIZED, headers={"WWW-Authenticate": "Basic"}
    )


def forbidden() -> HTTPException:
    return HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="Not allowed")


class LegacyBasic(HTTPBasic):
    """`HTTPBasic`, reading the header as the contract does (FastAPI's own accepts lax base64, ASCII only and
    an empty username, and answers "Not authenticated")."""

    def make_not_authenticated_error(self) -> HTTPException:
        return _unauthorized()

    async def __call__(self, request: HTTPConnection) -> HTTPBasicCredentials:  # type: ignore[override]
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic" or not value:
            raise _unauthorized()
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise _unauthorized() from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise _unauthorized()
        return HTTPBasicCredentials(username=username, password=password)


class Refusal:
    """A login whose role a route does not admit: raised as 403 by `GuardedRoute` once the request validated.

    Deliberately not a `Principal` (no role, no ids): code that received one by mistake fails, never grants."""

    __slots__ = ()

    def error(self) -> HTTPException:
        return forbidden()


class BasicLogin(LegacyBasic):
    """One dependency for the login and, with `roles`, the role: the header read, the password checked, the
    role admitted. One dependency rather than three nested ones: it runs on every request, the submit's too."""

    def __init__(self, roles: frozenset[Role] | None = None) -> None:
        super().__init__(scheme_name="LegacyBasic")  # one security scheme in the spec, whatever the roles
        self.roles = roles

    async def __call__(self, request: Request) -> Any:  # type: ignore[override]
        credentials = await super().__call__(request)
        principal = await request.app.state.gw.auth.login(credentials.username, credentials.password)
        if principal is None:
            raise _unauthorized()
        if self.roles is None or principal.role in self.roles:
            return principal
        if isinstance(request.scope.get("route"), GuardedRoute):
            return Refusal()
        raise forbidden()


current_principal = BasicLogin()  # any role: the login alone


def require_role(*roles: Role) -> BasicLogin:
    """A dependency admitting only `roles` (403 for the others, after validation: see the module's note)."""
    return BasicLogin(frozenset(roles))


class GuardedRoute(APIRoute):
    """The route class of the API's routers: raises a role dependency's `Refusal` just before the endpoint."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _raising_refusals(endpoint), **kwargs)


def _raising_refusals(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    if getattr(endpoint, "__guarded__", False):
        return endpoint
    if not inspect.iscoroutinefunction(endpoint):
        raise TypeError(f"{endpoint.__qualname__}: the API's endpoints are async")

    @functools.wraps(endpoint)  # FastAPI reads the endpoint's own signature through __wrapped__
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        for value in kwargs.values():
            if isinstance(value, Refusal):
                raise value.error()
        return await endpoint(*args, **kwargs)

    guarded.__guarded__ = True  # type: ignore[attr-defined]
    return guarded
