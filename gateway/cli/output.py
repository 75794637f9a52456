"""Where the CLI's tables go: a Rich console as wide as the terminal, and not cut at 80 columns when piped.

Rich falls back to 80 columns when standard output is not a terminal, so `gateway cutover status | less` or a
redirect to a file cut every wide table. Here: a terminal's own width; when piped, `COLUMNS` if set, else wide
enough that a row is never folded (the reader's pager or editor wraps, not us).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

PIPED_WIDTH = 1000
T = TypeVar("T")


def width() -> int | None:
    """None on a terminal (Rich measures it); `COLUMNS` or `PIPED_WIDTH` otherwise."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else PIPED_WIDTH


def console() -> Console:
    return Console(width=width())


def named(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """`work`, its answer given names beside the ids: `label` beside a `scope_id` (the backend's slug or the
    content's path), `content` beside a `course_content_id`, `member` (the login's name) beside a
    `course_member_id`. Tables show the names; `--json` keeps both."""
    from gateway.jobs.console import labels, student_names

    async def named(sessions: async_sessionmaker[AsyncSession]) -> T:
        out = await work(sessions)
        async with sessions() as session:
            names, students = await labels(session), await student_names(session)

        def walk(value: Any) -> None:
            if isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, dict):
                for item in list(value.values()):
                    walk(item)
                if isinstance(value.get("scope_id"), str):
                    value["label"] = names.get(value["scope_id"], value["scope_id"])
                if isinstance(value.get("course_content_id"), str):
                    value["content"] = names.get(value["course_content_id"], value["course_content_id"])
                if isinstance(value.get("course_member_id"), str):
                    value["member"] = students.get(value["course_member_id"], value["course_member_id"])

        walk(out)
        return out

    return named
