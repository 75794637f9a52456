"""Fixtures of the conformance suite: one real stack per module (starting engines is the expensive part).

- `both_engines`: the API on PostgreSQL, a Celery worker on Redis + PostgreSQL, a Prefect server and its runner.
- `celery_stack`: the same without Prefect (for faults that need only the Celery side and the API).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from legacy_stack import Stack, running_stack

from tests.conftest import PostgresDB, RedisDB
from tests.service.conftest import fresh_pg_database


@pytest.fixture(scope="module")
def both_engines(
    tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB
) -> Iterator[Stack]:
    with (
        fresh_pg_database(postgres_db) as db,
        running_stack(tmp_path_factory.mktemp("conf-both"), db.env(), redis_db.env(), prefect=True) as stack,
    ):
        yield stack


@pytest.fixture(scope="module")
def celery_stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_db: PostgresDB, redis_db: RedisDB
) -> Iterator[Stack]:
    with (
        fresh_pg_database(postgres_db) as db,
        running_stack(tmp_path_factory.mktemp("conf-celery"), db.env(), redis_db.env(), prefect=False) as stack,
    ):
        yield stack
