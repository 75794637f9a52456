"""`CeleryAdapter`: the gateway's only door into Celery (`backends.interface.EngineAdapter`).

- Tasks are sent by name (`send_task`), so the gateway never imports task code or `backends.work`.
- The caller's leg id becomes the Celery task id.
- `poll` reads `celery_taskmeta` for many ids in one SQL statement on a pooled engine.
- `completions` (the optional `CompletionFeed`) listens on the result database for the notices the result store
  sends with each final state (PostgreSQL only), so the gateway reads a finished leg at once.
- `workers` uses `inspect` with `limit` = the number of workers known from the last ping, so a call returns as
  soon as they answered instead of waiting out the timeout.
Cheap to construct and thread-safe: the Celery app, the database reader and the worker count are built lazily
under a lock, because the gateway calls adapters from a thread pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from backends.celery import names
from backends.celery.liveness import Candidate, Holding, HoldWatch
from backends.celery.queues import SENT_AT_HEADER
from backends.celery.states import Undecodable, error_from, phase_for, progress_from, verdict_of_success
from backends.interface import EngineUnavailable, Health, JobSpec, LegPhase, LegResult, LegState, TaskKind, WorkerInfo
from common.engines import Engine
from common.redact import redact_text
from common.settings import Settings

# The message header that marks a shadow run (the task name stays the legacy one).
SHADOW_HEADER = "shadow"


def _plain(value: Any) -> Any:
    """Pydantic models (a TestJob) travel as JSON-ready dicts."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="json") if callable(dump) else value


# The keys of a job that say which run it is: what a task's kwargs read as in Flower and `celery inspect`.
_RUN_KEYS = ("user_id", "course_member_id", "course_content_id")


def kwargs_summary(kwargs: dict[str, Any]) -> str:
    """The task's `kwargsrepr`: the run's ids and commit, not a repr of the whole job.

    Why: Celery otherwise renders every message's kwargs with its `saferepr`, a pure-Python walk of the whole
    test job that was a sixth of a send's CPU; the task still receives the whole job in its body."""
    job = kwargs.get("test_job") or kwargs.get("submission")
    if not isinstance(job, dict):
        return repr(sorted(kwargs))
    module = job.get("module") if isinstance(job.get("module"), dict) else {}
    run = {key: job[key] for key in _RUN_KEYS if key in job} | {"commit": module.get("commit")}
    return repr({("test_job" if "test_job" in kwargs else "submission"): run})


def _candidate(state: LegState) -> Candidate | None:
    """Where an open leg should be held, by its row (None: not for the hold check, e.g. already lost or ending)."""
    if state.lost:
        return None
    if state.phase is LegPhase.RUNNING and state.worker:
        return Candidate(Holding.RUNNING, state.worker)
    if state.phase is LegPhase.MISSING or state.native == "RETRY":
        return Candidate(Holding.WAITING)
    return None


class CeleryAdapter:
    engine = Engine.CELERY
    # The broker queues whatever it is sent: the outbox relay sends, the request only commits (see the interface).
    refuses_at_submit = False

    # Short on purpose: a request thread may be waiting. `limit` makes inspect return before it in steady state.
    ping_timeout: float = 0.5
    inspect_timeout: float = 1.0
    # How long a known worker count is trusted before a fresh ping (a worker may have joined or left).
    worker_count_ttl: float = 30.0
    # How often the workers holding running legs are pinged (see `_mark_lost`).
    liveness_interval: float = 3.0

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._app: Any = None
        self._control_app: Any = None
        self._reader: Any = None
        self._reader_ready = False
        self._cancelling: set[str] = set()
        self._known_workers: int | None = None
        self._known_at = 0.0
        self._queues_declared = False
        self._silent_since: dict[str, float] = {}
        self._pinged_at = 0.0
        self._connection_errors: tuple[type[BaseException], ...] | None = None
        self._hold_watch: HoldWatch | None = None

    # ------------------------------------------------------------------------------------------ lazy parts
    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from backends.celery.factory import create_app

                    self._app = create_app(self._settings, main="ctutor_gateway_client")
        return self._app

    @property
    def control_app(self) -> Any:
        """A second app for broadcasts (ping, inspect) and health: its own broker connections.

        `Control.broadcast` holds a pooled connection while it waits for replies; on the app that sends jobs,
        a few slow broadcasts emptied the producer pool and every submit waited behind them.
        """
        if self._control_app is None:
            with self._lock:
                if self._control_app is None:
                    from backends.celery.factory import create_app

                    self._control_app = create_app(self._settings, main="ctutor_gateway_control")
        return self._control_app

    @property
    def hold_watch(self) -> HoldWatch:
        """What holds the open legs (`backends.celery.liveness`), asked on the control app."""
        if self._hold_watch is None:
            with self._lock:
                if self._hold_watch is None:
                    self._hold_watch = HoldWatch(
                        ask_workers=self._query_task,
                        queued_ids=self._queued_ids,
                        known_workers=self._expected_workers,
                        active_queues=self._active_queues,
                        lost_after=self._settings.celery_unheld_lost_seconds,
                        interval=self.liveness_interval,
                    )
        return self._hold_watch

    def _query_task(self, leg_ids: list[str]) -> dict[str, Any]:
        """Every answering worker's `query_task` for these ids (the whole timeout is waited: all must answer)."""
        return self.control_app.control.inspect(timeout=self.inspect_timeout).query_task(*leg_ids) or {}

    def _queued_ids(self) -> dict[str, str] | None:
        """The ids waiting in the broker's queues and the queue of each (Redis); None where the broker cannot list
        them (AMQP; the filesystem broker is not checked at all)."""
        from backends.celery import queues

        url = self._settings.broker_url()
        if url.startswith(("redis://", "rediss://", "unix://")):
            return queues.redis_queued_where(url)
        return None

    def _active_queues(self) -> dict[str, set[str]]:
        """The queues each answering worker consumes (`inspect().active_queues()`, the whole timeout waited: any
        live consumer counts). Asked on the hold check's thread, never on a poll's."""
        replies = self.control_app.control.inspect(timeout=self.inspect_timeout).active_queues() or {}
        return {
            worker: {q.get("name", "") for q in queues or [] if isinstance(q, dict)}
            for worker, queues in replies.items()
        }

    def _taskmeta(self) -> Any:
        """The SQL reader, or None when results are not in a database (a Redis result backend)."""
        if not self._reader_ready:
            with self._lock:
                if not self._reader_ready:
                    from backends.celery.config import result_database_url

                    url = result_database_url(self._settings)
                    if url is not None:
                        from backends.celery.taskmeta import TaskMetaReader

                        self._reader = TaskMetaReader(url)
                    self._reader_ready = True
        return self._reader

    # ------------------------------------------------------------------------------------------------ submit
    def submit(
        self, job: JobSpec, leg_id: str, priority: int = names.STUDENT_TESTING_PRIORITY, queue: str | None = None
    ) -> str:
        """Send the job's task by name under `leg_id`; returns the Celery task id (= `leg_id`). `queue`: another
        queue than the task's own (a rerun that must avoid a foreign worker: `names.GATEWAY_ONLY`)."""
        task_name = names.TASK_FOR_KIND[TaskKind(job.kind)]
        if job.kind == TaskKind.STUDENT_TESTING:
            kwargs = {
                "test_job": _plain(job.params["test_job"]),
                "execution_backend_properties": dict(job.properties or {}),
            }
        else:
            kwargs = {"submission": _plain(job.params["submission"])}
        headers = {SHADOW_HEADER: True} if job.shadow else None
        summary = kwargs_summary(kwargs)
        return self.send(task_name, kwargs, leg_id, priority=priority, headers=headers, kwargsrepr=summary, queue=queue)

    def rerun(self, job: JobSpec, leg_id: str, priority: int = names.STUDENT_TESTING_PRIORITY) -> str:
        """Drop the failed attempt's `celery_taskmeta` row, then send the task again under the same id.

        Without the reset a poll would read the old STARTED (on a dead worker) or FAILURE as the new attempt's.
        A stored SUCCESS with a readable report is kept and nothing is sent; one whose result is no report (not
        decodable, not a dict, gone) is run again: the gateway asks because that report could not be read. The
        dead attempt's message may still come back from the broker after the visibility timeout: the worker then
        finds the id succeeded and skips it.
        """
        current = self.poll([leg_id])[leg_id]
        foreign = False
        if current.phase is LegPhase.SUCCEEDED:
            stored = self.result(leg_id)
            if stored.report is not None and stored.error is None:
                return leg_id
            # A SUCCESS the gateway cannot read as its report: a worker that is not the gateway's (the platform's
            # own, on the shared queues) answered. The rerun goes where only the gateway's workers listen.
            foreign = True
        self.app.backend.forget(leg_id)
        self.hold_watch.forget(leg_id)  # what was seen of the failed attempt no longer counts
        return self.submit(job, leg_id, priority=priority, queue=names.GATEWAY_ONLY if foreign else None)

    def send(
        self,
        task_name: str,
        kwargs: dict[str, Any],
        task_id: str,
        priority: int | None = None,
        headers: dict[str, Any] | None = None,
        kwargsrepr: str | None = None,
        queue: str | None = None,
    ) -> str:
        """Any task by name, routed to its queue (also used for the no-op task by health checks and the bench).

        A shadow run keeps its task name; it is marked by a message header (`shadow`) instead."""
        queue = queue or names.QUEUE_FOR_TASK.get(task_name, names.DEFAULT)
        self._declare_queues_once()
        # declare=[]: the queues exist (above), so kombu's per-publish `maybe_declare` check is skipped.
        self.app.send_task(
            task_name,
            kwargs=kwargs,
            task_id=task_id,
            queue=queue,
            routing_key=queue,
            priority=priority,
            # The send time gives the queue's oldest-message age (`queue_ages`); a shadow run is marked too.
            headers={SENT_AT_HEADER: time.time(), **(headers or {})},
            declare=[],
            # None: Celery's own repr of the kwargs.
            kwargsrepr=kwargsrepr,
        )
        return task_id

    def _declare_queues_once(self) -> None:
        """Declare every task queue once per adapter, so a publish never has to (AMQP would drop a message sent
        to a queue that does not exist; Redis and the filesystem broker need no declaration to deliver)."""
        if self._queues_declared:
            return
        app = self.app  # built outside the lock: `app` takes the same (non-reentrant) lock
        with self._lock:
            if not self._queues_declared:
                with app.producer_or_acquire() as producer:
                    for queue in app.amqp.queues.values():
                        producer.maybe_declare(queue)
                self._queues_declared = True

    # -------------------------------------------------------------------------------------------------- poll
    def poll(self, leg_ids: list[str]) -> dict[str, LegState]:
        reader = self._taskmeta()
        if reader is None:
            return {leg_id: self._poll_via_backend(leg_id) for leg_id in leg_ids}
        return self._states_of(leg_ids, reader.states(leg_ids))

    def _states_of(self, leg_ids: list[str], rows: dict[str, Any]) -> dict[str, LegState]:
        states: dict[str, LegState] = {}
        for leg_id in leg_ids:
            row = rows.get(leg_id)
            if row is None:
                state = LegState(leg_id=leg_id, phase=LegPhase.MISSING, native="PENDING", engine_run_id=leg_id)
            else:
                state = self._state(leg_id, row.status, row.result)
                state.worker = row.worker
                state.queue = row.queue
                if state.phase.is_final:
                    state.finished_at = row.date_done
            states[leg_id] = self._with_cancel(state)
        self._mark_lost(states)
        return states

    def observe(self, leg_ids: list[str]) -> tuple[dict[str, LegState], dict[str, LegResult]]:
        """`poll` and the `results` of the legs it finds final, from one `celery_taskmeta` read (`OneReadObserver`):
        what the gateway runs on a completion notice. Without a result database: `poll`, then `results`."""
        reader = self._taskmeta()
        if reader is None:
            states = self.poll(leg_ids)
            final = [leg_id for leg_id, state in states.items() if state.phase.is_final]
            return states, (self.results(final) if final else {})
        rows = reader.states(leg_ids, results=True)
        states = self._states_of(leg_ids, rows)
        results = {
            leg_id: self._result_of(leg_id, (rows[leg_id].status, rows[leg_id].result))
            for leg_id, state in states.items()
            if state.phase.is_final
        }
        return states, results

    # ------------------------------------------------------------------------------------------- liveness
    def _mark_lost(self, states: dict[str, LegState]) -> None:
        """Open legs nothing will finish are `lost`, and the gateway runs them again.

        Redis would hand the message to another worker only after the visibility timeout (above the hard
        time limit, so ~16 minutes by default). Two checks, each at most once per `liveness_interval`:
        - a running leg whose worker answers no ping any more (only those workers are pinged, on the control app);
        - a leg that nothing holds although the workers answer: a worker restarted under the same hostname, a task
          cancelled on a broker connection loss, a message lost before any worker took it (`liveness.HoldWatch`).
        The same check marks `busy` the waiting legs a live worker consuming their queue will come to (issue 27 §4).
        """
        running = {s.worker: s for s in states.values() if s.phase is LegPhase.RUNNING and s.worker}
        if self._settings.broker_url().startswith("filesystem://"):
            # The embedded broker is one machine's dev setup; its file-based broadcasts are not made for a ping
            # every few seconds (a reader can meet a half-written file), and Celery's redelivery applies there.
            return
        gone = self._gone_workers(set(running)) if running else {}
        for state in states.values():
            if state.phase is LegPhase.RUNNING and state.worker in gone:
                state.lost = gone[state.worker]
        # Answering workers that do not hold what the rows say they run, and messages nobody holds (liveness.py).
        # Waiting legs a live worker will come to (their queue consumed, or reserved) are busy, not dead.
        candidates = {leg_id: c for leg_id, state in states.items() if (c := _candidate(state)) is not None}
        verdicts = self.hold_watch.observe(states, candidates)
        for leg_id, reason in verdicts.lost.items():
            states[leg_id].lost = reason
        for leg_id, reason in verdicts.busy.items():
            if not states[leg_id].lost:
                states[leg_id].busy = reason

    def _gone_workers(self, hostnames: set[str]) -> dict[str, str]:
        """Workers that left every ping unanswered for `celery_worker_lost_seconds` (two pings at least)."""
        now = time.monotonic()
        if now - self._pinged_at >= self.liveness_interval:
            try:
                replies = self.control_app.control.ping(
                    destination=sorted(hostnames),
                    timeout=self.ping_timeout * 2,
                    limit=len(hostnames),
                )
            except Exception:  # noqa: BLE001 - the broker is unreachable: nobody can be declared dead from here
                return {}
            answered = {name for reply in replies or [] for name in reply}
            for name in hostnames:
                if name in answered:
                    self._silent_since.pop(name, None)
                else:
                    self._silent_since.setdefault(name, now)  # the first unanswered ping since its last answer
            self._pinged_at = now
        lost_after = self._settings.celery_worker_lost_seconds
        return {
            name: f"worker {name} answered no ping for {now - since:.0f} s: it is gone"
            for name in hostnames
            if (since := self._silent_since.get(name)) is not None and now - since >= lost_after
        }

    def _state(self, leg_id: str, native: str, result: Any) -> LegState:
        phase = phase_for(native, result)
        state = LegState(leg_id=leg_id, phase=phase, native=native, engine_run_id=leg_id)
        if native == "PROGRESS":
            state.progress = progress_from(result)
        if phase in (LegPhase.FAILED, LegPhase.CRASHED, LegPhase.CANCELLED):
            state.error = error_from(result)[0]
        return state

    def _poll_via_backend(self, leg_id: str) -> LegState:
        """Fallback for result backends without SQL (one backend call per id: only for non-database setups)."""
        meta = self.app.backend.get_task_meta(leg_id)
        native = meta.get("status", "PENDING")
        if native == "PENDING":
            return self._with_cancel(LegState(leg_id=leg_id, phase=LegPhase.MISSING, native=native))
        result = meta.get("result")
        if isinstance(result, BaseException):
            result = {"exc_type": type(result).__name__, "exc_message": [str(result)]}
        return self._with_cancel(self._state(leg_id, native, result))

    def _with_cancel(self, state: LegState) -> LegState:
        """A revoke is asynchronous: until the stored state is final, a cancelled leg reads CANCELLING."""
        if state.leg_id in self._cancelling:
            if state.phase.is_final:
                self._cancelling.discard(state.leg_id)
            else:
                state.phase = LegPhase.CANCELLING
        return state

    # ------------------------------------------------------------------------------------------- completions
    async def completions(self) -> AsyncIterator[list[str]]:
        """Task ids whose final state the result store committed (`LISTEN` on its NOTIFY channel), batched.

        Ends at once when results are not in PostgreSQL (SQLite, Redis): there polling alone applies. A lost
        connection raises `EngineUnavailable`; whatever ended meanwhile is found by the next poll.
        """
        from backends.celery.config import result_database_url

        url = result_database_url(self._settings)
        if url is None or not url.startswith("postgresql"):
            return
        import asyncpg
        from sqlalchemy.engine import make_url

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        notices: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            raise EngineUnavailable(redact_text(f"result database unreachable: {exc}")) from None
        conn.add_termination_listener(lambda _conn: notices.put_nowait(None))
        try:
            await conn.add_listener(names.COMPLETIONS_CHANNEL, lambda *args: notices.put_nowait(args[-1]))
            yield []  # listening now
            while True:
                batch = [await notices.get()]
                while not notices.empty():
                    batch.append(notices.get_nowait())
                if None in batch:
                    raise EngineUnavailable("the result database closed the completions listener")
                yield [leg_id for leg_id in batch if leg_id is not None]
        finally:
            if not conn.is_closed():
                conn.terminate()

    # ------------------------------------------------------------------------------------------------ result
    def result(self, leg_id: str) -> LegResult:
        return self.results([leg_id])[leg_id]

    def results(self, leg_ids: list[str]) -> dict[str, LegResult]:
        """One pooled query for all of them (`celery_taskmeta`); a backend without SQL reads one by one."""
        reader = self._taskmeta()
        if reader is None:
            found: dict[str, tuple[str, Any] | None] = {}
            for leg_id in leg_ids:
                meta = self.app.backend.get_task_meta(leg_id)
                raw = meta.get("result")
                if isinstance(raw, BaseException):
                    raw = {"exc_type": type(raw).__name__, "exc_message": [str(raw)]}
                found[leg_id] = (meta.get("status", "PENDING"), raw)
        else:
            rows = reader.fetch(leg_ids)
            found = {leg_id: (row.status, row.result) if (row := rows.get(leg_id)) else None for leg_id in leg_ids}
        return {leg_id: self._result_of(leg_id, found[leg_id]) for leg_id in leg_ids}

    @staticmethod
    def _result_of(leg_id: str, stored: tuple[str, Any] | None) -> LegResult:
        if stored is None:
            return LegResult(leg_id=leg_id, phase=LegPhase.MISSING)
        native, raw = stored
        phase = phase_for(native, raw)
        if phase is LegPhase.SUCCEEDED:
            verdict = verdict_of_success(raw)
            if verdict.error is not None:  # never a graded run: an infrastructure error the student may retry
                return LegResult(
                    leg_id=leg_id, phase=LegPhase.FAILED, error=verdict.error, error_type=verdict.error_type
                )
            return LegResult(leg_id=leg_id, phase=phase, report=verdict.report)
        if phase in (LegPhase.FAILED, LegPhase.CRASHED, LegPhase.CANCELLED):
            if isinstance(raw, Undecodable):
                return LegResult(leg_id=leg_id, phase=phase, error=raw.reason, error_type="UndecodableResult")
            error, error_type = error_from(raw)
            return LegResult(leg_id=leg_id, phase=phase, error=error, error_type=error_type)
        return LegResult(leg_id=leg_id, phase=phase)

    def taskmeta_row(self, leg_id: str) -> dict[str, Any] | None:
        """The raw celery_taskmeta row as a dict (for `gateway worker test-job`), or None."""
        reader = self._taskmeta()
        if reader is None:
            return None
        row = reader.fetch([leg_id]).get(leg_id)
        return None if row is None else dict(row.__dict__)

    # ------------------------------------------------------------------------------------------------ cancel
    def cancel(self, leg_id: str) -> LegState:
        """Revoke and terminate; the leg reads CANCELLING until the worker has stored REVOKED."""
        current = self.poll([leg_id])[leg_id]
        if current.phase.is_final:
            return current
        self.app.control.revoke(leg_id, terminate=True, signal="SIGTERM")
        self._cancelling.add(leg_id)
        current.phase = LegPhase.CANCELLING
        return current

    # ----------------------------------------------------------------------------------------------- workers
    def _expected_workers(self) -> int:
        now = time.monotonic()
        # No worker known: ask every time (a worker coming back, e.g. after a broker restart, is seen at once).
        if not self._known_workers or now - self._known_at > self.worker_count_ttl:
            # The filesystem broker is polled, not pushed: give its replies a little longer.
            polled = self._settings.broker_url().startswith("filesystem://")
            replies = self.control_app.control.ping(timeout=self.ping_timeout * (3 if polled else 1)) or []
            self._known_workers, self._known_at = len(replies), now
        return self._known_workers

    def workers(self) -> list[WorkerInfo]:
        expected = self._expected_workers()
        if expected == 0:
            return []
        inspect = self.control_app.control.inspect(timeout=self.inspect_timeout, limit=expected)
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
        active = inspect.active() or {}
        if len(stats) != expected:
            self._known_workers, self._known_at = len(stats), time.monotonic()
        infos = []
        for name, stat in sorted(stats.items()):
            infos.append(
                WorkerInfo(
                    name=name,
                    queues=sorted(q.get("name", "") for q in queues.get(name, []) or []),
                    active=len(active.get(name, []) or []),
                    uptime_seconds=stat.get("uptime"),
                    details={
                        "pid": stat.get("pid"),
                        "concurrency": (stat.get("pool") or {}).get("max-concurrency"),
                        "total": stat.get("total", {}),
                    },
                )
            )
        return infos

    # ------------------------------------------------------------------------------------------------ health
    def broker_reachable(self) -> bool:
        if self._settings.broker_url().startswith("filesystem://"):
            return self._settings.broker_folder().is_dir()
        try:
            with self.control_app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not reachable"; the reason is in the error text
            return False

    def backend_reachable(self) -> bool:
        reader = self._taskmeta()
        if reader is not None:
            try:
                return bool(reader.reachable())
            except Exception:  # noqa: BLE001
                return False
        try:
            self.app.backend.get_task_meta("gateway-health-probe")
            return True
        except Exception:  # noqa: BLE001
            return False

    def _broker_connection_errors(self) -> tuple[type[BaseException], ...]:
        """What the broker's transport raises when a connection is gone (redis-py's ConnectionError for Redis)."""
        if self._connection_errors is None:
            conn = self.control_app.connection_for_write()
            try:
                self._connection_errors = tuple(conn.connection_errors) + (OSError,)
            finally:
                conn.release()
        return self._connection_errors

    def health(self) -> Health:
        """Broker, result store and workers; a probe that met a dead pooled broker connection is made once more.

        Why: the broker connections pooled for broadcasts die with the broker; after a restart the first broadcast
        through one fails ("Connection closed by server") although the broker is back. The transport resets a
        connection on that error, so a second probe reconnects; what it finds is the answer."""
        health, stale = self._probe()
        if stale:
            health, _ = self._probe()
        return health

    def _probe(self) -> tuple[Health, bool]:
        checks = {"broker": self.broker_reachable(), "backend": self.backend_reachable()}
        count, error, stale = 0, None, False
        if checks["broker"]:
            try:
                count = len(self.workers())
            except self._broker_connection_errors() as exc:
                error, stale = redact_text(f"{type(exc).__name__}: {exc}"), True
            except Exception as exc:  # noqa: BLE001
                error = redact_text(f"{type(exc).__name__}: {exc}")
        checks["workers"] = count > 0
        if error is None and not all(checks.values()):
            error = "unreachable: " + ", ".join(name for name, ok in checks.items() if not ok)
        health = Health(healthy=all(checks.values()), engine=self.engine, checks=checks, workers=count, error=error)
        return health, stale

    # ---------------------------------------------------------------------------------------------- queues
    def queue_depths(self) -> dict[str, int]:
        from backends.celery import queues

        url = self._settings.broker_url()
        if url.startswith("filesystem://"):
            return queues.filesystem_depths(self._settings.broker_folder() / "out")
        if url.startswith(("redis://", "rediss://", "unix://")):
            return queues.redis_depths(url)
        depths = {}
        with self.app.connection_for_write() as conn, conn.channel() as channel:
            for queue in names.ALL_QUEUES:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
        return depths

    def queue_ages(self) -> dict[str, float]:
        """Seconds since the oldest waiting message of each non-empty queue was sent (Redis and file brokers)."""
        from backends.celery import queues

        url = self._settings.broker_url()
        if url.startswith("filesystem://"):
            return queues.filesystem_oldest_ages(self._settings.broker_folder() / "out")
        if url.startswith(("redis://", "rediss://", "unix://")):
            return queues.redis_oldest_ages(url)
        return {}

    def close(self) -> None:
        if self._hold_watch is not None:
            self._hold_watch.close()
        if self._reader is not None:
            self._reader.dispose()
        for app in (self._app, self._control_app):
            if app is not None:
                app.close()
