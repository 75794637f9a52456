"""`GroupCommit`: writes that arrive while one is in flight share the next statement; each caller waits for its own."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.group_commit import GroupCommit

pytestmark = pytest.mark.fast


def test_callers_arriving_during_a_flush_share_the_next_one_and_each_waits_for_its_write() -> None:
    async def main() -> None:
        release = asyncio.Event()
        written: list[list[str]] = []

        async def write(items: list[str]) -> None:
            await release.wait()  # the database round trip, held open by the test
            written.append(items)

        group: GroupCommit[str] = GroupCommit(write)
        first = asyncio.create_task(group.add("a"))
        await asyncio.sleep(0)  # let the first flush start (and block in its write)
        others = [asyncio.create_task(group.add(item)) for item in "bcde"]
        await asyncio.sleep(0)
        assert not any(task.done() for task in (first, *others))  # nobody is answered before its write
        release.set()
        await asyncio.gather(first, *others)
        assert written == [["a"], ["b", "c", "d", "e"]]
        assert group.flushes == 2

    asyncio.run(main())


def test_a_failed_write_fails_every_caller_in_it_and_the_next_batch_still_runs() -> None:
    async def main() -> None:
        calls: list[list[int]] = []

        async def write(items: list[int]) -> None:
            calls.append(items)
            if items == [1]:
                raise ConnectionError("database down")

        group: GroupCommit[int] = GroupCommit(write)
        first = asyncio.create_task(group.add(1))
        await asyncio.sleep(0)
        second = asyncio.create_task(group.add(2))
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], ConnectionError) and results[1] is None
        assert calls == [[1], [2]]

    asyncio.run(main())
