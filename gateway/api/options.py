"""`OPTIONS` on any route answers 204 with `Allow` (the methods the path takes) instead of 405.

A pure ASGI wrapper: one string compare on every other request, so the submit path pays nothing measurable.
"""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class OptionsAllow:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods: set[str] = set()
        # Starlette puts the application itself in the scope before its middleware runs; included routers are
        # nested, so each method is tried on the route list rather than read off flat routes.
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", [])
        for method in METHODS:
            probe = {**scope, "method": method}
            if any(route.matches(probe)[0] == Match.FULL for route in routes):
                methods.add(method)
        if not methods:
            await self.app(scope, receive, send)  # an unknown path: the usual 404
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
        await send({"type": "http.response.body", "body": b""})
