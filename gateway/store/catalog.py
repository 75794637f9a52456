"""Load a whole catalog at once (`gateway catalog load FILE.yaml`): backends, course contents, members, users.

Idempotent: each entry is matched by id, or else by its natural key (backend slug, content path, username), and
updated in place, so loading the same file twice changes nothing. A course content names its backend by `slug`
(`execution_backend: <slug>`) or by id. Checked first (`catalog_check`, `gateway catalog check FILE`); every field
and an example per backend type in docs/catalog.md. In short:

    execution_backends: [{slug: celery, type: celery, properties: {}}]
    course_contents: [{path: week1.ex1, directory: ex1, execution_backend: celery,
                       reference_url: ..., reference_commit: ..., max_submissions: 3}]
    course_members: [{id: m1, user_id: u1, repository_url: ...}]
    users: [{username: alice, password: ..., role: student, course_member_ids: [m1]}]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.settings import Settings, get_settings
from gateway.schemas import CourseContentIn, CourseMemberIn, ExecutionBackendCreate, Role, UserIn
from gateway.store.accounts import hash_password, verify_password
from gateway.store.catalog_check import check_catalog, errors, read_catalog_file
from gateway.store.db import make_sync_engine
from gateway.store.migrate import ensure_schema
from gateway.store.models import CourseContent, CourseMember, ExecutionBackend, User, new_id


class CatalogError(ValueError):
    pass


def _read(source: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    """The catalog, checked (`catalog_check`): a file with errors is refused whole, every error named."""
    try:
        data = source if isinstance(source, Mapping) else read_catalog_file(Path(source))
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    found = errors(check_catalog(data))
    if found:
        raise CatalogError("\n".join(str(p) for p in found))
    assert isinstance(data, Mapping)
    return data


def _upsert(session: Session, model: type[Any], key: str, values: dict[str, Any]) -> Any:
    row = session.get(model, values["id"]) if values.get("id") else None
    if row is None and values.get(key) is not None:
        row = session.execute(select(model).where(getattr(model, key) == values[key])).scalar_one_or_none()
    if row is None:
        row = model(**{**values, "id": values.get("id") or new_id()})
        session.add(row)
    else:
        for name, value in values.items():
            if name != "id" and getattr(row, name) != value:
                setattr(row, name, value)
    session.flush()
    return row


def load_catalog(source: str | Path | Mapping[str, Any], settings: Settings | None = None) -> dict[str, int]:
    """Apply a catalog to the store; returns how many entries of each kind were loaded."""
    settings = settings or get_settings()
    data = _read(source)
    ensure_schema(settings)
    counts = {"execution_backends": 0, "course_contents": 0, "course_members": 0, "users": 0}
    engine = make_sync_engine(settings)
    try:
        with Session(engine) as session, session.begin():
            slugs: dict[str, str] = {}
            for entry in data.get("execution_backends") or []:
                body = ExecutionBackendCreate.model_validate(entry)
                row = _upsert(session, ExecutionBackend, "slug", body.model_dump())
                slugs[row.slug] = row.id
                counts["execution_backends"] += 1
            for entry in data.get("course_contents") or []:
                entry = dict(entry)
                ref = entry.pop("execution_backend", None)
                if ref is not None:
                    found = (
                        slugs.get(ref)
                        or session.execute(
                            select(ExecutionBackend.id).where(ExecutionBackend.slug == ref)
                        ).scalar_one_or_none()
                    )
                    found = found or (ref if session.get(ExecutionBackend, ref) else None)
                    if found is None:
                        raise CatalogError(f"course content {entry.get('path')}: no execution backend {ref!r}")
                    entry["execution_backend_id"] = found
                _upsert(session, CourseContent, "path", CourseContentIn.model_validate(entry).model_dump())
                counts["course_contents"] += 1
            for entry in data.get("course_members") or []:
                _upsert(session, CourseMember, "id", CourseMemberIn.model_validate(entry).model_dump())
                counts["course_members"] += 1
            for entry in data.get("users") or []:
                body = UserIn.model_validate(entry)
                values = body.model_dump(exclude={"password"})
                existing = session.execute(select(User).where(User.username == body.username)).scalar_one_or_none()
                if existing is None or not verify_password(body.password, existing.password_hash):
                    values["password_hash"] = hash_password(body.password)
                _upsert(session, User, "username", values)
                counts["users"] += 1
    finally:
        engine.dispose()
    return counts


def add_user(
    username: str,
    password: str,
    role: str = Role.STUDENT.value,
    course_member_ids: list[str] | None = None,
    settings: Settings | None = None,
) -> None:
    """Create or update one user (the CLI's `gateway user add`)."""
    load_catalog(
        {
            "users": [
                {"username": username, "password": password, "role": role, "course_member_ids": course_member_ids or []}
            ]
        },
        settings,
    )
