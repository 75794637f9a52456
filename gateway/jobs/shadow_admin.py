"""Turning shadowing on and off: the admin API's and the CLI's one way to change and read shadow settings.

A setting names its scope by the backend's slug or the course content's id; the values are checked here
(known engine, fractions in 0..1, a positive deadline), so neither caller repeats the rules.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backends.registry import UnknownEngineError, canonical_engine
from gateway.compare.rules import Rules
from gateway.jobs.errors import BadJobRequest, NotFound
from gateway.store import lookup
from gateway.store.models import CompareRules, ExecutionBackend, ShadowSetting, ShadowSkip, utcnow
from gateway.store.shadow_settings import ShadowScope, list_settings, put_setting


def check_values(values: dict[str, Any]) -> dict[str, Any]:
    checked = {k: v for k, v in values.items() if v is not None}
    if "engine" in checked:
        try:
            checked["engine"] = canonical_engine(str(checked["engine"]))
        except UnknownEngineError:
            raise BadJobRequest(f"unknown engine: {checked['engine']}") from None
    for name in ("fraction", "aa_fraction"):
        if name in checked and not 0.0 <= float(checked[name]) <= 1.0:
            raise BadJobRequest(f"{name} must be between 0 and 1")
    if "max_in_flight" in checked and int(checked["max_in_flight"]) < 0:
        raise BadJobRequest("max_in_flight must be 0 or more")
    if "deadline_seconds" in checked and int(checked["deadline_seconds"]) <= 0:
        raise BadJobRequest("deadline_seconds must be positive")
    if "properties" in checked and not isinstance(checked["properties"], dict):
        raise BadJobRequest("properties must be an object")
    return checked


async def scope_of(session: AsyncSession, backend: str | None, content: str | None) -> tuple[ShadowScope, str]:
    """(scope, id) from a backend slug (or id) or a course content id (or path); exactly one must be given."""
    if bool(backend) == bool(content):
        raise BadJobRequest("give exactly one of a backend (slug) or a course content (id)")
    if backend:
        found = await lookup.backend_id(session, backend)
        if found is None:
            raise NotFound(f"Execution backend not found: {backend}")
        return ShadowScope.BACKEND, found
    assert content is not None
    found = await lookup.content_id(session, content)
    if found is None:
        raise NotFound(f"Course content not found: {content}")
    return ShadowScope.CONTENT, found


async def set_shadow(
    sessions: async_sessionmaker[AsyncSession],
    *,
    backend: str | None,
    content: str | None,
    values: dict[str, Any],
    user_id: str | None,
) -> dict[str, Any]:
    checked = check_values(values)
    async with sessions() as session, session.begin():
        scope, scope_id = await scope_of(session, backend, content)
        if checked.get("enabled", True) and checked.get("fraction", 0) > 0 and "engine" not in checked:
            existing = (
                await session.execute(
                    select(ShadowSetting.engine).where(ShadowSetting.scope == scope, ShadowSetting.scope_id == scope_id)
                )
            ).scalar()
            if existing is None:
                raise BadJobRequest("a shadow fraction needs an engine (the other engine)")
        row = await put_setting(session, scope, scope_id, checked, user_id)
        return setting_json(row)


async def delete_shadow(
    sessions: async_sessionmaker[AsyncSession], *, backend: str | None, content: str | None
) -> None:
    async with sessions() as session, session.begin():
        scope, scope_id = await scope_of(session, backend, content)
        row = (
            await session.execute(
                select(ShadowSetting).where(ShadowSetting.scope == scope, ShadowSetting.scope_id == scope_id)
            )
        ).scalar_one_or_none()
        if row is None:
            raise NotFound("No shadow setting for this scope")
        await session.delete(row)


def setting_json(row: ShadowSetting) -> dict[str, Any]:
    return {
        "id": row.id,
        "scope": row.scope,
        "scope_id": row.scope_id,
        "enabled": row.enabled,
        "engine": row.engine,
        "fraction": row.fraction,
        "max_in_flight": row.max_in_flight,
        "deadline_seconds": row.deadline_seconds,
        "aa_fraction": row.aa_fraction,
        "properties": row.properties or {},
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
        "updated_by": row.updated_by,
    }


async def show_shadow(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    """Every setting, with the backend slugs beside their ids, and the skip counts so far."""
    async with sessions() as session:
        settings = await list_settings(session)
        slugs = {
            i: slug for i, slug in (await session.execute(select(ExecutionBackend.id, ExecutionBackend.slug))).all()
        }
        skips = (await session.execute(select(ShadowSkip))).scalars().all()
    return {
        "settings": [
            {**setting_json(s), "backend_slug": slugs.get(s.scope_id) if s.scope == ShadowScope.BACKEND else None}
            for s in settings
        ],
        "skipped": [
            {
                "execution_backend_id": s.execution_backend_id,
                "course_content_id": s.course_content_id,
                "reason": s.reason,
                "count": s.count,
            }
            for s in skips
        ],
    }


async def get_compare_rules(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    async with sessions() as session:
        row = await session.get(CompareRules, "default")
    return dict(row.rules) if row is not None else {}


async def put_compare_rules(
    sessions: async_sessionmaker[AsyncSession], overrides: dict[str, Any], user_id: str | None
) -> dict[str, Any]:
    """Replace the admin's overrides (checked by building them over the shipped rules first)."""
    try:
        Rules.build(overrides)
    except ValueError as exc:
        raise BadJobRequest(str(exc)) from None
    async with sessions() as session, session.begin():
        row = await session.get(CompareRules, "default")
        if row is None:
            session.add(CompareRules(id="default", rules=overrides, updated_by=user_id, updated_at=utcnow()))
        else:
            row.rules, row.updated_by, row.updated_at = overrides, user_id, utcnow()
    return overrides
