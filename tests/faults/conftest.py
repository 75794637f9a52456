"""One fault stack per module: its own PostgreSQL cluster (the tests stop it), Redis, the API and a worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RedisDB, service_missing
from tests.faults.stack import FaultStack, fault_stack
from tests.support.pg_cluster import pg_cluster, postgres_bin

# Enough commits for every case of a module: each submit is a new job.
JOBS = 80


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_db: RedisDB) -> Iterator[FaultStack]:
    if postgres_bin() is None:
        service_missing("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (initdb, pg_ctl)")
    tmp = tmp_path_factory.mktemp("faults")
    with pg_cluster(keep_log=tmp / "postgres.log") as pg, fault_stack(tmp, pg, redis_db.env(), JOBS) as stack:
        yield stack
