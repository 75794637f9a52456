"""Initial schema: the legacy execution_backend and result tables, the course catalog, legs and users.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 19:30:48.380325
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "course_member",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("repository_url", sa.Text(), nullable=True),
        sa.Column("credential", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_course_member")),
    )
    with op.batch_alter_table("course_member", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_course_member_user_id"), ["user_id"], unique=False)

    op.create_table(
        "execution_backend",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("slug", sa.String(length=255), nullable=False),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_backend")),
        sa.UniqueConstraint("slug", name=op.f("uq_execution_backend_slug")),
    )
    op.create_table(
        "result",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("submit", sa.Boolean(), nullable=False),
        sa.Column("course_member_id", sa.String(length=64), nullable=True),
        sa.Column("course_content_id", sa.String(length=64), nullable=True),
        sa.Column("course_submission_group_id", sa.String(length=64), nullable=True),
        sa.Column("course_content_type_id", sa.String(length=64), nullable=True),
        sa.Column("execution_backend_id", sa.String(length=64), nullable=True),
        sa.Column("test_system_id", sa.String(length=255), nullable=True),
        sa.Column("result", sa.Float(), nullable=False),
        sa.Column("result_json", sa.JSON(), nullable=True),
        sa.Column("properties", sa.JSON(), nullable=True),
        sa.Column("version_identifier", sa.String(length=2048), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("updated_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result")),
        sa.UniqueConstraint(
            "course_member_id", "course_content_id", "version_identifier", name="uq_result_member_content_version"
        ),
        sa.UniqueConstraint("test_system_id", name="uq_result_test_system_id"),
    )
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_result_course_content_id"), ["course_content_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_result_course_member_id"), ["course_member_id"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("course_member_ids", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "course_content",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("directory", sa.String(length=1024), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("course_content_type_id", sa.String(length=64), nullable=True),
        sa.Column("execution_backend_id", sa.String(length=64), nullable=True),
        sa.Column("reference_url", sa.Text(), nullable=True),
        sa.Column("reference_commit", sa.String(length=255), nullable=True),
        sa.Column("reference_credential", sa.String(length=255), nullable=True),
        sa.Column("max_submissions", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_backend_id"],
            ["execution_backend.id"],
            name=op.f("fk_course_content_execution_backend_id_execution_backend"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_course_content")),
        sa.UniqueConstraint("path", name=op.f("uq_course_content_path")),
    )
    with op.batch_alter_table("course_content", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_course_content_directory"), ["directory"], unique=False)

    op.create_table(
        "leg",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("result_id", sa.String(length=64), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("engine", sa.String(length=32), nullable=False),
        sa.Column("task_name", sa.String(length=255), nullable=False),
        sa.Column("engine_run_id", sa.String(length=255), nullable=True),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("native_state", sa.String(length=64), nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("routing", sa.JSON(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("queue", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatch_state", sa.String(length=16), nullable=False),
        sa.Column("dispatch_attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["result_id"], ["result.id"], name=op.f("fk_leg_result_id_result"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leg")),
    )
    with op.batch_alter_table("leg", schema=None) as batch_op:
        batch_op.create_index("ix_leg_open", ["finished", "dispatch_state"], unique=False)
        batch_op.create_index("ix_leg_result_role", ["result_id", "role"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("leg", schema=None) as batch_op:
        batch_op.drop_index("ix_leg_result_role")
        batch_op.drop_index("ix_leg_open")

    op.drop_table("leg")
    with op.batch_alter_table("course_content", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_course_content_directory"))

    op.drop_table("course_content")
    op.drop_table("users")
    with op.batch_alter_table("result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_result_course_member_id"))
        batch_op.drop_index(batch_op.f("ix_result_course_content_id"))

    op.drop_table("result")
    op.drop_table("execution_backend")
    with op.batch_alter_table("course_member", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_course_member_user_id"))

    op.drop_table("course_member")
