"""Accounts: password hashing (the stdlib's scrypt), who a login is (`Principal`), and checking a login.

Hashing is deliberately slow, so a verified (username, password) pair is remembered for a short while (keyed
by a SHA-256 of the password, never the password itself): the submit path must not pay scrypt per request.
Concurrent requests with the same login share one check (single flight): a burst of a student's first requests
costs one scrypt, not one each (issue 29).
The HTTP side (Basic credentials, 401/403 answers) lives in `gateway.api.auth`; this module knows no HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.concurrency import run_in_threadpool

from gateway.schemas import Role
from gateway.store.models import User

_N, _R, _P = 2**14, 8, 1
# Verified logins held at once; when full, the least recently used goes.
_MAX_LOGINS = 10_000

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

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cache_seconds: float) -> None:
        self.sessions = sessions
        self.cache_seconds = cache_seconds
        # 0 turns the cache off (nothing is stored); TTLCache itself wants a positive ttl.
        ttl = cache_seconds if cache_seconds > 0 else 1
        self._cache: TTLCache[_Login, Principal] = TTLCache(maxsize=_MAX_LOGINS, ttl=ttl)
        # Checks under way, by login: a second request for the same login awaits the first one's.
        self._checking: dict[_Login, asyncio.Future[Principal | None]] = {}
        # Bumped by `forget`: a check that began before it does not cache its (maybe stale) answer.
        self._generation = 0
        self.checks = 0  # password checks really run (a test proves concurrent logins cost one)

    def forget(self) -> None:
        """Called when users change, so a removed user or new password takes effect at once in this process."""
        self._cache.clear()
        self._generation += 1

    async def login(self, username: str, password: str) -> Principal | None:
        """The principal for these credentials, or None; every failure costs the same scrypt."""
        key = (username, hashlib.sha256(password.encode()).digest())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        checking = self._checking.get(key)
        if checking is None:
            checking = asyncio.ensure_future(self._check(key, username, password, self._generation))
            self._checking[key] = checking
            checking.add_done_callback(lambda done: self._done(key, done))
        # Shielded: a caller that goes away (a closed connection) does not cancel the others' check.
        return await asyncio.shield(checking)

    def _done(self, key: _Login, done: asyncio.Future[Principal | None]) -> None:
        if self._checking.get(key) is done:
            del self._checking[key]

    async def _check(self, key: _Login, username: str, password: str, generation: int) -> Principal | None:
        self.checks += 1
        async with self.sessions() as session:
            user = (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()
        ok = await run_in_threadpool(verify_password, password, user.password_hash if user else _DUMMY_HASH)
        if user is None or not ok:
            return None
        principal = Principal(user.id, user.username, user.role, frozenset(user.course_member_ids or ()))
        if self.cache_seconds > 0 and generation == self._generation:
            self._cache[key] = principal
        return principal
