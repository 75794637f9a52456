"""Accounts: password hashing (the stdlib's scrypt), who a login is (`Principal`), and checking a login.

Hashing is deliberately slow, so a verified (username, password) pair is remembered for a short while (keyed
by a SHA-256 of the password, never the password itself): the submit path must not pay scrypt per request.
Concurrent requests with the same login share one check (single flight): a burst of a student's first requests
costs one scrypt, not one each; and a login in use is checked again in the background before it expires
(refresh-ahead, `gateway.store.refresh_ahead`), so the end of its cache time never makes every request in flight
wait for a check (issue 29). A changed password or a removed user shows at that re-check, as at expiry before.
The HTTP side (Basic credentials, 401/403 answers) lives in `gateway.api.auth`; this module knows no HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.concurrency import run_in_threadpool

from gateway.schemas import Role
from gateway.store.models import User
from gateway.store.refresh_ahead import RefreshAhead

_N, _R, _P = 2**14, 8, 1
# Verified logins held at once; when full, the least recently used goes.
_MAX_LOGINS = 10_000
# A cached login read after this share of its cache time is checked again in the background.
REFRESH_AT = 0.75

_Login = tuple[str, bytes]  # username, SHA-256 of the password


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algo, n, r, p, salt, digest = encoded.split("$")
        if algo != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# A hash of a random password: unknown users cost the same time as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str
    course_member_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def may_see_member(self, member_id: str | None) -> bool:
        return self.is_admin or (member_id is not None and member_id in self.course_member_ids)


class Authenticator:
    """Checks a username and password; a short in-process cache of successful logins keeps the hot path cheap."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions = sessions
        self.cache_seconds = cache_seconds
        # 0 turns the cache off (nothing is kept); the cache itself wants a positive ttl.
        ttl = cache_seconds if cache_seconds > 0 else 1
        # Checks under way are shared by login (single flight); a failure is shared too, and never cached.
        self._cache: RefreshAhead[_Login, Principal] = RefreshAhead(
            ttl=ttl, refresh_after=ttl * REFRESH_AT, maxsize=_MAX_LOGINS, clock=clock
        )
        self.checks = 0  # password checks really run (a test proves concurrent logins cost one)

    def forget(self) -> None:
        """Called when users change, so a removed user or new password takes effect at once in this process;
        a check that began before it does not cache its (maybe stale) answer."""
        self._cache.forget()

    async def settled(self) -> None:
        """Until no check is under way, background re-checks included (for tests)."""
        await self._cache.settled()

    async def login(self, username: str, password: str) -> Principal | None:
        """The principal for these credentials, or None; every failure costs the same scrypt."""
        key = (username, hashlib.sha256(password.encode()).digest())
        principal = await self._cache.get(key, lambda: self._check(username, password))
        if self.cache_seconds <= 0:
            self._cache.discard(key)
        return principal

    async def _check(self, username: str, password: str) -> Principal | None:
        self.checks += 1
        async with self.sessions() as session:
            user = (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()
        ok = await run_in_threadpool(verify_password, password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not ok:
            return None
        return Principal(user.id, user.username, user.role, frozenset(user.course_member_ids or ()))
