"""Cross-site request protection for the console's forms: a token bound to the login, and an Origin check.

The console logs in with HTTP Basic, which a browser replays on any request to this host, a form posted from
another site's page too. So every state-changing form carries a token (an HMAC of the login's user id and name
under a server key), which another site cannot read or compute, and the request must come from this origin:
its `Origin` header (or, when a browser sends none, its `Referer`) names this host. Either check failing is
a refusal; nothing changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from fastapi import Request

from common.settings import Settings
from gateway.store.accounts import Principal


class CsrfKey:
    """The HMAC key: the configured console secret, else one random key for this process's life."""

    def __init__(self, settings: Settings) -> None:
        configured = settings.gateway_console_secret
        self._key = configured.get_secret_value().encode() if configured else secrets.token_bytes(32)

    def token(self, principal: Principal) -> str:
        message = f"console-csrf\0{principal.user_id}\0{principal.username}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def valid(self, principal: Principal, token: str) -> bool:
        return bool(token) and hmac.compare_digest(self.token(principal), token)


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(request: Request) -> bool:
    """The request names this host as its origin (`Origin`, else `Referer`); neither header: refused."""
    host = request.headers.get("host")
    if not host:
        return False
    expected = f"{request.url.scheme}://{host}".lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin.lower() == expected  # "null" (a sandboxed or file page) never matches
    referer = request.headers.get("referer")
    return referer is not None and _origin_of(referer) == expected


def refusal(request: Request, key: CsrfKey, principal: Principal, token: str) -> str | None:
    """Why a console form is refused, or None when it may proceed."""
    if not same_origin(request):
        return "refused: this form was not sent from this console (cross-site request)"
    if not key.valid(principal, token):
        return "refused: the form's token does not belong to this login (reload the page)"
    return None
