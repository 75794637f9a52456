"""Read `celery_taskmeta` directly: many task ids in one SQL statement, over a pooled engine.

Celery's client-side reader (`AsyncResult.state`) opens a fresh `NullPool` engine, i.e. a new database
connection, for every id it asks about. The gateway polls hundreds of in-flight legs each second, so it reads
the table itself: `SELECT ... WHERE task_id IN (...)` on a connection pool shared by all threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, any_, bindparam, case, create_engine, null, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import DBAPIError

from backends.celery.result_store import pooled_engine_options

# Large IN lists are split so one statement stays well under every driver's parameter limit.
CHUNK = 5000


# States whose stored result a poll does not need (a queued or running task's metadata, a SUCCESS report: the
# report is read by `results` for the legs that finished). The server leaves those results out of a state read.
_RESULT_NOT_NEEDED = ("PENDING", "RECEIVED", "RETRY", "STARTED", "SUCCESS")


@dataclass(frozen=True, slots=True)
class TaskState:
    """What a poll reads of one task: the state, and the result only where the state needs it (progress, error)."""

    task_id: str
    status: str
    result: Any
    date_done: datetime | None
    worker: str | None
    queue: str | None


@dataclass(frozen=True)
class TaskMetaRow:
    task_id: str
    status: str
    result: Any
    date_done: datetime | None
    traceback: str | None
    name: str | None
    args: Any
    kwargs: Any
    worker: str | None
    retries: int | None
    queue: str | None


class TaskMetaReader:
    """Thread-safe, lazily connected reader of Celery's result table."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._table: Any = None
        # PostgreSQL: the `states` statements (lean, with results), built once.
        self._by_ids: dict[bool, Any] = {}

    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from celery.backends.database.models import TaskExtended
                    from celery.backends.database.session import ResultModelBase

                    engine = create_engine(self._url, **pooled_engine_options(self._url))
                    # The same table Celery's backend creates; idempotent, so the reader never sees "no table".
                    ResultModelBase.metadata.create_all(engine)
                    self._table = TaskExtended.__table__
                    self._engine = engine
        return self._engine

    def fetch(self, task_ids: Sequence[str]) -> dict[str, TaskMetaRow]:
        """Rows by id for every id that has one; ids without a row are absent. One statement per CHUNK ids."""
        from backends.celery.states import decode_result

        engine = self.engine()
        table = self._table
        rows: dict[str, TaskMetaRow] = {}
        unique = list(dict.fromkeys(task_ids))
        with engine.connect() as conn:
            for start in range(0, len(unique), CHUNK):
                chunk = unique[start : start + CHUNK]
                stmt = select(
                    table.c.task_id, table.c.status, table.c.result, table.c.date_done, table.c.traceback,
                    table.c.name, table.c.args, table.c.kwargs, table.c.worker, table.c.retries, table.c.queue,
                ).where(table.c.task_id.in_(chunk))  # fmt: skip
                for row in conn.execute(stmt):
                    rows[row.task_id] = TaskMetaRow(
                        task_id=row.task_id,
                        status=row.status,
                        result=decode_result(row.result),
                        date_done=row.date_done,
                        traceback=row.traceback,
                        name=row.name,
                        args=decode_result(row.args),
                        kwargs=decode_result(row.kwargs),
                        worker=row.worker,
                        retries=row.retries,
                        queue=row.queue,
                    )
        return rows

    def states(self, task_ids: Sequence[str], results: bool = False) -> dict[str, TaskState]:
        """The lean read behind every poll: only the columns a state needs, results only where they matter
        (`results=True`: every result, for a read that also gives the finished legs' results).

        On PostgreSQL the ids travel as one array parameter (`task_id = ANY(:ids)`), so a statement over 10,000
        ids is compiled once and cached instead of expanding 10,000 bound parameters on every call; the
        statement itself is built once.
        """
        from backends.celery.states import decode_result

        engine = self.engine()
        table = self._table
        unique = list(dict.fromkeys(task_ids))
        result = (
            table.c.result if results else case((table.c.status.in_(_RESULT_NOT_NEEDED), null()), else_=table.c.result)
        )
        columns = (table.c.task_id, table.c.status, result, table.c.date_done, table.c.worker, table.c.queue)
        postgres = engine.dialect.name == "postgresql"
        chunks = [unique] if postgres else [unique[i : i + CHUNK] for i in range(0, len(unique), CHUNK)]
        found: dict[str, TaskState] = {}
        with engine.connect() as conn:
            for chunk in chunks:
                if postgres:
                    stmt = self._by_ids.get(results)
                    if stmt is None:
                        ids = bindparam("ids", type_=ARRAY(String))
                        stmt = self._by_ids[results] = select(*columns).where(table.c.task_id == any_(ids))
                    rows = conn.execute(stmt, {"ids": chunk})
                else:
                    rows = conn.execute(select(*columns).where(table.c.task_id.in_(chunk)))
                for task_id, status, raw, date_done, worker, queue in rows:
                    value = None if raw is None else decode_result(raw)
                    found[task_id] = TaskState(task_id, status, value, date_done, worker, queue)
        return found

    def reachable(self) -> bool:
        try:
            with self.engine().connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except (DBAPIError, OSError):
            return False

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
                self._by_ids.clear()
