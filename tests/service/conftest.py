"""Gateway fixtures: a catalog, a fresh PostgreSQL database per module, and a running API on either store."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2

from tests.conftest import PostgresDB


@contextlib.contextmanager
def fresh_pg_database(base: PostgresDB, template: PostgresDB | None = None) -> Iterator[PostgresDB]:
    """A database of its own next to the session's one, dropped afterwards (the API owns its whole schema).

    With `template`, the new database starts as a copy of it (`CREATE DATABASE ... TEMPLATE`): a migrated and
    seeded store in a fraction of the time the migrations take; nothing may be connected to the template."""
    name = f"{base.name}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(host=base.host, port=base.port, user=base.user, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template.name}"' if template else ""))
    try:
        yield PostgresDB(base.host, base.port, base.user, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


PASSWORD = "s3cret-pw"


def demo_catalog(
    reference_url: str = "file:///nonexistent/reference", reference_commit: str = "0" * 40
) -> dict[str, Any]:
    """Two students, a worker and an admin; contents on a Celery backend, one capped, one unsupported, one not
    an assignment."""
    return {
        "execution_backends": [
            {"slug": "celery-main", "type": "celery", "properties": {}},
            {"slug": "mystery", "type": "kubernetes", "properties": {}},
        ],
        "course_contents": [
            {
                "id": "cc-main",
                "path": "week1.ex1",
                "directory": "week1/ex1",
                "execution_backend": "celery-main",
                "reference_url": reference_url,
                "reference_commit": reference_commit,
            },
            {"id": "cc-max", "path": "week1.ex2", "directory": "week1/ex2", "execution_backend": "celery-main",
             "max_submissions": 1},
            {"id": "cc-bad", "path": "week1.ex3", "directory": "week1/ex3", "execution_backend": "mystery"},
            {"id": "cc-unit", "path": "week1", "directory": "week1", "kind": "unit",
             "execution_backend": "celery-main"},
        ],
        "course_members": [
            {"id": "m-alice", "user_id": "u-alice", "repository_url": "file:///nonexistent/alice"},
            {"id": "m-bob", "user_id": "u-bob", "repository_url": "file:///nonexistent/bob"},
        ],
        "users": [
            {"username": "admin", "password": PASSWORD, "role": "admin"},
            {"username": "worker", "password": PASSWORD, "role": "worker"},
            {"username": "alice", "password": PASSWORD, "role": "student", "course_member_ids": ["m-alice"]},
            {"username": "bob", "password": PASSWORD, "role": "student", "course_member_ids": ["m-bob"]},
        ],
    }  # fmt: skip
