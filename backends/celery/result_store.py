"""Celery's database result backend, with one pooled statement per state change.

Why: the stock `DatabaseBackend` stores a state with an ORM read, a second `SELECT ... FOR UPDATE`, a write and a
commit, and a process that never forked (the gateway, a `celery call`) builds a fresh engine with `NullPool` for
every read, i.e. a new PostgreSQL connection per poll. Measured here that caps a PostgreSQL-backed worker at about
100 no-op tasks/s. This subclass keeps the same table (`celery_taskmeta`, the same columns and JSON encoding) and
the same rule (nothing overwrites a SUCCESS), but writes with a single `INSERT ... ON CONFLICT DO UPDATE ... WHERE
status <> 'SUCCESS'` through an engine pooled per process (rebuilt after fork, so no socket is shared by two
processes). Dialects without that upsert fall back to the stock code path.

On PostgreSQL a final state also announces itself: the upsert returns the task id and the same statement calls
`pg_notify(COMPLETIONS_CHANNEL, task_id)`, so the notice is sent exactly when the row commits (NOTIFY is
transactional), never for a repeated store that changed nothing, and costs no extra round trip. The gateway
listens (`CeleryAdapter.completions`) and reads the leg at once instead of at its next poll.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from typing import Any

from celery import states
from celery.backends.database import DatabaseBackend
from celery.backends.database.session import ResultModelBase
from kombu.utils.encoding import ensure_bytes
from sqlalchemy import Engine, bindparam, create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from backends.celery.names import COMPLETIONS_CHANNEL
from common.redact import scrub, strip_credentials_in_text

_UPSERT_DIALECTS = ("postgresql", "sqlite")
_SKIPPED_COLUMNS = {"id", "task_id", "stamps"}
# STARTED outcomes kept for tasks that never ask (e.g. the no-op): the oldest are dropped beyond this.
_STARTED_KEPT = 1000


def pooled_engine_options(url: str) -> dict[str, Any]:
    """Engine options for a long-lived, pooled connection per process."""
    if url.startswith("sqlite"):
        # SQLite: one file, writers serialise anyway; wait on a lock instead of failing at once.
        return {"connect_args": {"timeout": 30}}
    # No pre_ping (it costs a round trip per store): a dropped connection fails one attempt, Celery's
    # result_backend_always_retry retries it, and on_backend_retryable_error below replaces the pool.
    return {"pool_size": 5, "max_overflow": 10, "pool_recycle": 1800}


def _async_commit_options(url: str) -> dict[str, Any]:
    """The same, for intermediate states: PostgreSQL does not wait for their WAL flush (no extra round trip).

    Autocommit: a store is one statement, so it needs no BEGIN and COMMIT round trips around it."""
    options = pooled_engine_options(url)
    options["connect_args"] = {"options": "-c synchronous_commit=off"}
    options["isolation_level"] = "AUTOCOMMIT"
    return options


class PooledDatabaseBackend(DatabaseBackend):
    """`celery_taskmeta` writes and reads through one pooled engine per process, one statement per store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before Celery's __init__, which may already open a session to create the tables.
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._fast_engine: Engine | None = None
        # PostgreSQL: final states are stored through their own autocommit pool (one round trip, still durable).
        self._final_engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        # Per task id: did its STARTED store meet a stored SUCCESS? Read once by the task (`started_over_success`).
        self._started: dict[str, bool] = {}
        # Prebuilt store statements by (dialect, kind), and the columns a store writes (see `_upsert`).
        self._statements: dict[tuple[str, str], Any] = {}
        self._column_names: tuple[str, ...] | None = None
        # PostgreSQL (psycopg2): each kind's SQL compiled once, with its fixed parameters (see `_execute`).
        self._compiled: dict[str, tuple[str, dict[str, Any]]] = {}
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------ engine
    def engine(self) -> Engine:
        """This process's pooled engine; a forked child drops the parent's pool without closing its sockets."""
        pid = os.getpid()
        if self._engine is not None and self._pid == pid:
            return self._engine
        with self._lock:
            if self._engine is None or self._pid != pid:
                for old in (self._engine, self._fast_engine, self._final_engine):
                    if old is not None:
                        old.dispose(close=False)
                engine = create_engine(self.url, **pooled_engine_options(self.url))
                ResultModelBase.metadata.create_all(engine)
                self._fast_engine = self._final_engine = None
                if engine.dialect.name == "postgresql":
                    # STARTED/PROGRESS are superseded within seconds: their commit need not wait for fsync.
                    # A database crash can lose only such an intermediate row, never a final result.
                    self._fast_engine = create_engine(self.url, **_async_commit_options(self.url))
                    # A final state is one statement committed on its own (synchronous commit, so durable when
                    # the call returns, and its NOTIFY sent): no BEGIN/COMMIT round trips around it. Its own
                    # pool: switching a shared connection to autocommit and back cost a round trip per store.
                    self._final_engine = create_engine(
                        self.url, isolation_level="AUTOCOMMIT", **pooled_engine_options(self.url)
                    )
                self._engine = engine
                self._sessions = sessionmaker(bind=engine)
                self._pid = pid
        return self._engine

    def on_backend_retryable_error(self, exc: Exception) -> None:
        """A failed store: drop this process's pools so the retry opens fresh connections."""
        with self._lock:
            for engine in (self._engine, self._fast_engine, self._final_engine):
                if engine is not None:
                    engine.dispose()
            self._engine = self._fast_engine = self._final_engine = None
        super().on_backend_retryable_error(exc)

    def ResultSession(self, session_manager: Any = None) -> Session:  # noqa: N802 - Celery's name
        self.engine()
        assert self._sessions is not None
        return self._sessions()

    # ------------------------------------------------------------------------------------------------- secrets
    def store_result(
        self, task_id: str, result: Any, state: str, traceback: str | None = None, request: Any = None, **kwargs: Any
    ) -> Any:
        """Whoever sent the job (an old producer may put a token in the kwargs), nothing secret is stored: the
        result is scrubbed here, args/kwargs in `_get_result_meta`, the traceback's URLs lose their credentials."""
        if isinstance(result, dict | list | str):
            result = scrub(result)
        if traceback:
            traceback = strip_credentials_in_text(traceback)
        return super().store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)

    def _get_result_meta(
        self,
        result: Any,
        state: str,
        traceback: str | None,
        request: Any,
        format_date: bool = True,
        encode: bool = False,
    ) -> dict[str, Any]:
        meta = super()._get_result_meta(result, state, traceback, request, format_date=format_date, encode=False)
        for name in ("args", "kwargs"):
            if name in meta:
                value = scrub(meta[name])
                meta[name] = ensure_bytes(self.encode(value)) if encode else value
        return meta

    # ------------------------------------------------------------------------------------------------- store
    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        engine = self.engine()
        if engine.dialect.name not in _UPSERT_DIALECTS:
            return super()._store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)
        table = self.task_cls.__table__
        meta = self._get_result_meta(
            result=ensure_bytes(self.encode(result)),
            state=state,
            traceback=traceback,
            request=request,
            format_date=False,
            encode=True,
        )
        values: dict[str, Any] = {name: meta.get(name) for name in self._columns(table)}
        children = meta.get("children")
        values["children"] = ensure_bytes(self.encode(children)) if children else None
        # date_done doubles as "last change": the stock ORM path stamps it on every write as well.
        values["date_done"] = meta.get("date_done") or datetime.now(UTC)
        values["task_id"] = task_id
        final = state in states.READY_STATES
        target = (self._final_engine or engine) if final else (self._fast_engine or engine)
        if state == states.STARTED:
            # The upsert skips a stored SUCCESS: no row back means this id already succeeded (`started_over_success`).
            with target.begin() as conn:
                written = self._execute(conn, "started", values).first() is not None
            with self._lock:
                self._started[task_id] = not written
                while len(self._started) > _STARTED_KEPT:
                    self._started.pop(next(iter(self._started)))
            return result
        kind = "final" if final and engine.dialect.name == "postgresql" else "plain"
        with target.begin() as conn:
            self._execute(conn, kind, values)
        return result

    def _execute(self, conn: Any, kind: str, values: dict[str, Any]) -> Any:
        """Run the `kind` store statement. PostgreSQL: its SQL is compiled once and handed to the driver as is
        (`exec_driver_sql`: none of the statement's per-call compile-cache lookup and parameter processing; every
        column's value is already what psycopg2 sends, bytes or text). Elsewhere the prebuilt statement."""
        dialect = conn.dialect
        stmt = self._upsert(dialect.name, kind)
        if dialect.name != "postgresql" or dialect.driver != "psycopg2":
            return conn.execute(stmt, values)
        compiled = self._compiled.get(kind)
        if compiled is None:
            built = stmt.compile(dialect=dialect)
            fixed = {k: v for k, v in built.params.items() if k not in values}
            compiled = self._compiled[kind] = (built.string, fixed)
        sql, fixed = compiled
        return conn.exec_driver_sql(sql, {**fixed, **values})

    def _columns(self, table: Any) -> tuple[str, ...]:
        if self._column_names is None:
            self._column_names = tuple(c.name for c in table.columns if c.name not in _SKIPPED_COLUMNS)
        return self._column_names

    def _upsert(self, dialect: str, kind: str) -> Any:
        """The store statement, built once per dialect and kind with every value a bound parameter.

        Building an `INSERT ... ON CONFLICT` per store (and its cache key, each time a new object) cost more CPU than
        the round trip; a prebuilt statement is compiled once and its cache key is memoised. `kind`: "plain",
        "started" (returns the task id: nothing back means a stored SUCCESS was kept), "final" (PostgreSQL: the
        same statement announces the committed row with `pg_notify`).
        """
        key = (dialect, kind)
        stmt = self._statements.get(key)
        if stmt is not None:
            return stmt
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        table = self.task_cls.__table__
        names = ("task_id", *self._columns(table))
        upsert = insert(table).values({name: bindparam(name, type_=table.c[name].type) for name in names})
        upsert = upsert.on_conflict_do_update(
            index_elements=[table.c.task_id],
            set_={name: upsert.excluded[name] for name in self._columns(table)},
            # Like the stock backend: a repeated run never replaces a stored SUCCESS.
            where=table.c.status != states.SUCCESS,
        )
        if kind == "started":
            stmt = upsert.returning(table.c.task_id)
        elif kind == "final":
            stored = upsert.returning(table.c.task_id).cte("stored")
            stmt = select(func.pg_notify(COMPLETIONS_CHANNEL, stored.c.task_id))
        else:
            stmt = upsert
        self._statements[key] = stmt
        return stmt

    def started_over_success(self, task_id: str) -> bool | None:
        """Whether this process's STARTED store of `task_id` found a SUCCESS already there (and so changed nothing);
        None when it did not store STARTED for it. Lets a task skip its own "did this id already succeed?" read."""
        with self._lock:
            return self._started.pop(task_id, None)
