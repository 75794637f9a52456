"""The login cache: a credential is checked once while concurrent requests for the same login wait for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.runtime import GatewayState
from gateway.store.accounts import Authenticator, Role, hash_password
from gateway.store.models import User
from tests.fast.conftest import MemoryGateway

pytestmark = pytest.mark.fast


async def _add_user(state: GatewayState, username: str, password: str) -> None:
    async with state.sessions() as session, session.begin():
        session.add(User(username=username, password_hash=hash_password(password), role=Role.STUDENT.value))


def test_concurrent_logins_share_one_check(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await _add_user(state, "carol", "s3cret")
        auth = Authenticator(state.sessions, cache_seconds=60)
        logins = await asyncio.gather(*(auth.login("carol", "s3cret") for _ in range(8)))
        assert auth.checks == 1
        assert {p.username if p else None for p in logins} == {"carol"}
        assert await auth.login("carol", "s3cret") == logins[0] and auth.checks == 1  # cached now
        wrong = await asyncio.gather(*(auth.login("carol", "wrong") for _ in range(4)))
        assert wrong == [None] * 4 and auth.checks == 2  # a failure is shared too, and never cached
        assert await auth.login("carol", "wrong") is None and auth.checks == 3

    memory_gateway.run(test)


def test_forget_drops_the_cache_and_the_answer_of_a_check_under_way(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await _add_user(state, "dave", "pw")
        entered, release = asyncio.Event(), asyncio.Event()

        @contextlib.asynccontextmanager
        async def gated() -> AsyncIterator[AsyncSession]:
            """The store, reached only once the test lets the check go on."""
            entered.set()
            await release.wait()
            async with state.sessions() as session:
                yield session

        auth = Authenticator(gated, cache_seconds=60)  # type: ignore[arg-type]
        release.set()
        assert await auth.login("dave", "pw") is not None and auth.checks == 1
        auth.forget()
        entered.clear()
        release.clear()
        under_way = asyncio.ensure_future(auth.login("dave", "pw"))
        await entered.wait()  # the check has begun
        auth.forget()  # users changed meanwhile: its answer must not be cached
        release.set()
        assert await under_way is not None and auth.checks == 2
        assert await auth.login("dave", "pw") is not None and auth.checks == 3

    memory_gateway.run(test)


def test_a_zero_ttl_caches_nothing(memory_gateway: MemoryGateway) -> None:
    async def test(state: GatewayState) -> None:
        await _add_user(state, "erin", "pw")
        auth = Authenticator(state.sessions, cache_seconds=0)
        assert await auth.login("erin", "pw") is not None
        assert await auth.login("erin", "pw") is not None and auth.checks == 2

    memory_gateway.run(test)


class _Clock:
    """Time as the test sets it: the cache's ages are decided here, never by how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_login_in_use_is_checked_again_before_it_expires(memory_gateway: MemoryGateway) -> None:
    """Refresh-ahead: past 3/4 of its cache time a login is answered from the cache while ONE background check
    renews it, so a login in steady use never expires under its readers (no stampede at the 60 s mark)."""

    async def test(state: GatewayState) -> None:
        await _add_user(state, "fay", "pw")
        clock = _Clock()
        auth = Authenticator(state.sessions, cache_seconds=60, clock=clock)
        assert await auth.login("fay", "pw") is not None and auth.checks == 1
        clock.now += 30  # young: answered from the cache, nothing checked
        assert await auth.login("fay", "pw") is not None and auth.checks == 1
        clock.now += 20  # 50 s old: 32 concurrent requests are answered at once, and one re-check starts
        logins = await asyncio.gather(*(auth.login("fay", "pw") for _ in range(32)))
        assert {p.username if p else None for p in logins} == {"fay"}
        await auth.settled()
        assert auth.checks == 2
        clock.now += 20  # 70 s after the first check: without the re-check this would have expired
        logins = await asyncio.gather(*(auth.login("fay", "pw") for _ in range(32)))
        assert {p.username if p else None for p in logins} == {"fay"} and auth.checks == 2
        clock.now += 61  # unused for its whole cache time: gone, checked again in the foreground, once
        logins = await asyncio.gather(*(auth.login("fay", "pw") for _ in range(8)))
        assert {p.username if p else None for p in logins} == {"fay"} and auth.checks == 3

    memory_gateway.run(test)


def test_a_re_check_that_fails_drops_the_login(memory_gateway: MemoryGateway) -> None:
    """The password changed in another process: the background re-check finds it wrong and the login goes."""

    async def test(state: GatewayState) -> None:
        await _add_user(state, "gus", "old")
        clock = _Clock()
        auth = Authenticator(state.sessions, cache_seconds=60, clock=clock)
        assert await auth.login("gus", "old") is not None
        async with state.sessions() as session, session.begin():
            user = (await session.execute(select(User).where(User.username == "gus"))).scalar_one()
            user.password_hash = hash_password("new")
        clock.now += 50
        assert await auth.login("gus", "old") is not None  # still cached; the re-check starts
        await auth.settled()
        assert await auth.login("gus", "old") is None and auth.checks == 3

    memory_gateway.run(test)
