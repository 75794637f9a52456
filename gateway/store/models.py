"""The tables. `result` and `execution_backend` keep the legacy columns; `leg` is the gateway's own truth.

One legacy `result` row is a *job*; each run of it on one engine is a *leg*. The leg id is chosen by the gateway
before dispatch and is the row's `test_system_id`, so the row can be committed first and dispatch retried
(the leg rows with `dispatch_state == "pending"` are the outbox).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates

from common.redact import strip_credentials
from gateway.schemas import Role


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both databases (SQLite forgets the zone; this puts it back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ExecutionBackend(Base):
    __tablename__ = "execution_backend"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(255))
    slug: Mapped[str] = mapped_column(String(255), unique=True)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    updated_by: Mapped[str | None] = mapped_column(String(64))


class CourseContent(Base):
    """An assignment the dispatcher can route: where its reference lives and which backend runs it."""

    __tablename__ = "course_content"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    path: Mapped[str] = mapped_column(String(1024), unique=True)  # dotted, e.g. week1.ex2
    directory: Mapped[str | None] = mapped_column(String(1024), index=True)
    kind: Mapped[str] = mapped_column(String(64), default="assignment")
    course_content_type_id: Mapped[str | None] = mapped_column(String(64))
    execution_backend_id: Mapped[str | None] = mapped_column(ForeignKey("execution_backend.id"))
    reference_url: Mapped[str | None] = mapped_column(Text)
    reference_commit: Mapped[str | None] = mapped_column(String(255))
    reference_credential: Mapped[str | None] = mapped_column(String(255))
    max_submissions: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @validates("reference_url")
    def _no_credentials(self, _key: str, url: str | None) -> str | None:
        """Credentials are named in `reference_credential`, never kept inside the URL."""
        return strip_credentials(url) if url else url


class CourseMember(Base):
    """A student in a course, with the repository the student pushes to."""

    __tablename__ = "course_member"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    user_id: Mapped[str | None] = mapped_column(String(64), index=True)
    repository_url: Mapped[str | None] = mapped_column(Text)
    credential: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @validates("repository_url")
    def _no_credentials(self, _key: str, url: str | None) -> str | None:
        """Credentials are named in `credential`, never kept inside the URL (the admin listing shows it)."""
        return strip_credentials(url) if url else url


class Result(Base):
    """The legacy `result` row: what clients read. Unique per (member, content, commit) and per run id."""

    __tablename__ = "result"
    __table_args__ = (
        UniqueConstraint(
            "course_member_id", "course_content_id", "version_identifier", name="uq_result_member_content_version"
        ),
        UniqueConstraint("test_system_id", name="uq_result_test_system_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    submit: Mapped[bool] = mapped_column(Boolean, default=False)
    course_member_id: Mapped[str | None] = mapped_column(String(64), index=True)
    course_content_id: Mapped[str | None] = mapped_column(String(64), index=True)
    course_submission_group_id: Mapped[str | None] = mapped_column(String(64))
    course_content_type_id: Mapped[str | None] = mapped_column(String(64))
    execution_backend_id: Mapped[str | None] = mapped_column(String(64))
    test_system_id: Mapped[str | None] = mapped_column(String(255))
    result: Mapped[float] = mapped_column(Float, default=0.0)
    result_json: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    version_identifier: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[int] = mapped_column(Integer, default=3)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(64))
    updated_by: Mapped[str | None] = mapped_column(String(64))


class Leg(Base):
    """One run of a job on one engine. `result_id` is None for bare `/api/tasks` submissions."""

    __tablename__ = "leg"
    __table_args__ = (
        Index("ix_leg_open", "finished", "dispatch_state"),
        Index("ix_leg_result_role", "result_id", "role"),
        # A foreign Prefect flow writes back knowing only its flow run id (`GET /results?test_system_id=`).
        Index("ix_leg_engine_run_id", "engine_run_id"),
        # The shadow decision's reads, bounded whatever the backlog (migration 0013; the queries render these
        # predicates literally: `gateway.store.shadow_counters`).
        Index(
            "ix_leg_shadow_open",
            "result_id",
            postgresql_where=text("role = 'shadow' AND finished IS false"),
            sqlite_where=text("role = 'shadow' AND finished IS 0"),
        ),
        # The cutover gate's `routed_by` (PostgreSQL only: JSON operators; migration 0014).
        Index(
            "ix_leg_routed_stage",
            text("(routing ->> 'config_scope')"),
            text("(routing ->> 'stage')"),
            text("(CAST((routing ->> 'config_version') AS INTEGER))"),
            postgresql_where=text("(routing ->> 'stage') IS NOT NULL"),
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_leg_shadow_stalled",
            "engine",  # not `updated_at`: every update sets it, and no update may lose HOT for this index
            postgresql_where=text(
                "role = 'shadow' AND dispatch_state = 'pending' AND finished IS false AND last_error IS NOT NULL"
            ),
            sqlite_where=text(
                "role = 'shadow' AND dispatch_state = 'pending' AND finished IS 0 AND last_error IS NOT NULL"
            ),
        ),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True, default=new_id)
    result_id: Mapped[str | None] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16), default="primary")  # primary | shadow
    engine: Mapped[str] = mapped_column(String(32))
    task_name: Mapped[str] = mapped_column(String(255))
    engine_run_id: Mapped[str | None] = mapped_column(String(255))
    phase: Mapped[str] = mapped_column(String(32), default="queued")  # backends.interface.LegPhase
    native_state: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(String(32))  # succeeded | failed | cancelled | crashed | timed_out
    error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # task result (tasks API)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"kind", "params", "properties", "priority"}: no secrets
    routing: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255))
    queue: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(nullable=True)
    # The outbox: pending until the engine accepted it; retried with backoff at next_attempt_at.
    dispatch_state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    dispatch_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Sends that failed for a reason that is not an outage; the leg is rejected once they reach a bound.
    dispatch_faults: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Runs again after an infrastructure failure (crashed, worker gone); the last one's reason is in last_error.
    infra_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set by the finish hook on a leg that takes part in a comparison; the compare step clears it.
    compare_due: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)


class User(Base):
    """A login. `password_hash` is `scrypt$n$r$p$salt$hash`; roles: admin, worker, student."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default=Role.STUDENT.value)
    course_member_ids: Mapped[list[str] | None] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CutoverMigration(Base):
    """One migration's configuration (see gateway.cutover): per execution backend, or a course content's override.

    `version` grows by one with every accepted change; a change names the version it was planned on, so two
    operators (or an operator and the automatic gate) cannot overwrite each other's change unseen.
    """

    __tablename__ = "cutover_migration"
    __table_args__ = (UniqueConstraint("scope", "scope_id", name="uq_cutover_migration_scope"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(16))  # gateway.cutover.stages.Scope
    scope_id: Mapped[str] = mapped_column(String(64))  # execution_backend.id or course_content.id
    old_engine: Mapped[str] = mapped_column(String(32))
    new_engine: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(16))  # gateway.cutover.stages.Stage
    percentage: Mapped[float] = mapped_column(Float, default=0.0)
    shadow_fraction: Mapped[float] = mapped_column(Float, default=1.0)
    policy: Mapped[str] = mapped_column(String(16), default="manual")
    answer_policy: Mapped[str] = mapped_column(String(16), default="verified", server_default="verified")
    canary_steps: Mapped[list[float]] = mapped_column(JSON)
    min_stage_seconds: Mapped[float] = mapped_column(Float, default=3600.0)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    salt: Mapped[str] = mapped_column(String(64), default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    stage_since: Mapped[datetime | None] = mapped_column(nullable=True)
    last_evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_evaluated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(255))


class CutoverEvent(Base):
    """Every accepted change of a migration: who, when, from what, to what, why (an append-only log)."""

    __tablename__ = "cutover_event"
    __table_args__ = (Index("ix_cutover_event_scope", "scope", "scope_id", "at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    migration_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)  # the version this change produced
    action: Mapped[str] = mapped_column(String(16))  # gateway.cutover.stage_machine.Action
    actor: Mapped[str] = mapped_column(String(255))  # a user name, `cli:<user>`, or `gate` for automatic steps
    at: Mapped[datetime] = mapped_column(default=utcnow)
    from_stage: Mapped[str | None] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    from_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    to_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text, default="")
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A triage event (`accept`/`unaccept`): the cluster's signature, the note and the expiry.
    cluster: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CutoverAcceptance(Base):
    """A mismatch cluster (by signature) an admin accepted for one migration's scope, until `expires_at`.

    Kept after it expires (the scorecard shows it as expired, and it counts against the gate again); accepting
    again replaces the note and the expiry. Every change is also a `cutover_event`.
    """

    __tablename__ = "cutover_acceptance"
    __table_args__ = (UniqueConstraint("scope", "scope_id", "signature", name="uq_cutover_acceptance_signature"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    migration_id: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(32))  # gateway.cutover.triage.signature_of
    note: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column()
    accepted_by: Mapped[str] = mapped_column(String(255))
    accepted_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShadowSetting(Base):
    """Shadowing for one execution backend (`scope` "backend") or one course content ("content", an override).

    `engine` runs the shadow leg; `fraction` of the jobs are sampled; at most `max_in_flight` shadow legs of this
    scope are unfinished at once; a shadow leg not finished `deadline_seconds` after admission is a
    shadow_timeout. `aa_fraction` of the jobs also run a second time on their own engine (the noise baseline).
    `properties` are laid over the backend's properties for the shadow leg (e.g. the other engine's deployment).
    """

    __tablename__ = "shadow_setting"
    __table_args__ = (UniqueConstraint("scope", "scope_id", name="uq_shadow_setting_scope"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    scope: Mapped[str] = mapped_column(String(16))
    scope_id: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    engine: Mapped[str | None] = mapped_column(String(32))
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    max_in_flight: Mapped[int] = mapped_column(Integer, default=100)
    deadline_seconds: Mapped[int] = mapped_column(Integer, default=1800)
    aa_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))


class ShadowSkip(Base):
    """How many shadow legs were not started, per backend, content and reason (never a silent drop)."""

    __tablename__ = "shadow_skip"
    __table_args__ = (
        UniqueConstraint("execution_backend_id", "course_content_id", "reason", name="uq_shadow_skip_key"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    execution_backend_id: Mapped[str] = mapped_column(String(64))
    course_content_id: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# What the cutover gate reads of each comparison in its window (`gateway.jobs.cutover_gates`).
GATE_COLUMNS = (
    "kind",
    "primary_engine",
    "shadow_engine",
    "outcome",
    "side",
    "primary_run_seconds",
    "shadow_run_seconds",
    "signature",
    # The stage's own traffic (gateway.jobs.cutover_gates.routed_by).
    "routed_scope",
    "routed_stage",
    "routed_version",
)


def _gate_run_indexes() -> list[Index]:
    """Per routed scope and leg: (scope id, stage, version, this leg's engine, the other's, this leg's run time),
    partial on the live comparisons a stage routed (`gateway.jobs.cutover_gates.live_runs`)."""
    found = []
    for scope, column in (("content", "course_content_id"), ("backend", "execution_backend_id")):
        for side, other in (("primary", "shadow"), ("shadow", "primary")):
            where = text(f"kind = 'shadow' AND routed_scope = '{scope}'")
            found.append(
                Index(
                    f"ix_comparison_gate_{scope}_{side}_runs",
                    column,
                    "routed_stage",
                    "routed_version",
                    f"{side}_engine",
                    f"{other}_engine",
                    f"{side}_run_seconds",
                    postgresql_include=["outcome", "side"],
                    postgresql_where=where,
                    sqlite_where=where,
                )
            )
    return found


GATE_RUN_INDEXES = _gate_run_indexes()


class Comparison(Base):
    """One comparison of a job's primary leg with one of its shadow legs (`kind` "shadow", "aa" or "replay")."""

    __tablename__ = "comparison"
    __table_args__ = (
        UniqueConstraint("shadow_leg_id", name="uq_comparison_shadow_leg_id"),
        # Covering the cutover gate's window (PostgreSQL: index-only scans, migration 0014).
        Index("ix_comparison_backend_created", "execution_backend_id", "created_at", postgresql_include=GATE_COLUMNS),
        Index("ix_comparison_content_created", "course_content_id", "created_at", postgresql_include=GATE_COLUMNS),
        # Each leg's run time in order within one stage's window: the gate's p99 reads the top 1 % (migration 0016).
        *GATE_RUN_INDEXES,
        Index(
            "ix_comparison_environment_differs",
            "created_at",
            postgresql_where=text("environment_differs IS true"),
            sqlite_where=text("environment_differs IS true"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    result_id: Mapped[str] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"), index=True)
    primary_leg_id: Mapped[str] = mapped_column(String(255))
    shadow_leg_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    execution_backend_id: Mapped[str | None] = mapped_column(String(64))
    course_content_id: Mapped[str | None] = mapped_column(String(64))
    primary_engine: Mapped[str] = mapped_column(String(32))
    shadow_engine: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    side: Mapped[str | None] = mapped_column(String(16))  # infra_error: primary | shadow | both
    reason: Mapped[str | None] = mapped_column(Text)
    differences: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    difference_count: Mapped[int] = mapped_column(Integer, default=0)
    # A mismatch's (or noise's) cluster: gateway.cutover.triage.signature_of(outcome, differences).
    signature: Mapped[str | None] = mapped_column(String(32), nullable=True)
    primary_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    primary_queue_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_queue_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    primary_run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow_run_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Both legs' effective environments and where they differ (gateway.compare.environment), and whether they do.
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    environment_differs: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Which migration scope, stage and config version routed this comparison's job (from its primary leg's
    # routing record): a gate weighs only the comparisons of the jobs its current stage routed.
    routed_scope: Mapped[str | None] = mapped_column(String(16), nullable=True)
    routed_stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    routed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # A mismatch's re-judgement (gateway.compare.rejudge): its state, re-run legs, verdict and the class before.
    rejudge: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GateTally(Base):
    """How many live comparisons a migration's stage routed, per class: what one gate evaluation counts.

    Kept by triggers on `comparison` (migration 0016) in the transaction that inserts, re-classifies or deletes a
    comparison, so an evaluation reads these few rows instead of every comparison of the stage. `side` and
    `signature` are "" where the comparison has none; `signature` only for a mismatch (accepted clusters)."""

    __tablename__ = "gate_tally"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    primary_engine: Mapped[str] = mapped_column(String(32), primary_key=True)
    shadow_engine: Mapped[str] = mapped_column(String(32), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    side: Mapped[str] = mapped_column(String(16), primary_key=True)
    signature: Mapped[str] = mapped_column(String(32), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # Of those, the comparisons with the primary's / the shadow's run time (the p99's ranks).
    primary_timed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    shadow_timed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    environment_differs: Mapped[int] = mapped_column(BigInteger, server_default="0")


class FlakeStat(Base):
    """A/A evidence per course content and test: how often two identical runs on one engine disagreed."""

    __tablename__ = "flake_stat"
    __table_args__ = (UniqueConstraint("course_content_id", "test_key", name="uq_flake_stat_test"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    course_content_id: Mapped[str] = mapped_column(String(64))
    test_key: Mapped[str] = mapped_column(String(1024))
    runs: Mapped[int] = mapped_column(Integer, default=0)
    flips: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CompareRules(Base):
    """The admin's overrides of the shipped comparison rules (one document, merged over the shipped file)."""

    __tablename__ = "compare_rules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default="default")
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(64))
