"""A short-lived in-process cache of the catalog rows the submit path reads on every request.

Course contents (with their execution backend) and course members change rarely and are read on every
`POST /api/tests`; a database round trip for each is most of a submit's cost. Only *found* rows are cached
(a row created a moment ago is never hidden by a cached "not found"), entries live `ttl` seconds, and every
flush in this process that touches a catalog table clears all caches at once, so the admin API's writes take
effect immediately. Writes from another process (`gateway catalog load`, a second API) show after at most
`ttl` seconds (`GATEWAY_CATALOG_CACHE_SECONDS`; 0 turns the cache off).

Cached objects are detached ORM instances and are treated as read-only.
"""

from __future__ import annotations

import weakref
from typing import Any

from cachetools import TTLCache
from sqlalchemy import event
from sqlalchemy.orm import Session

from gateway.store.models import CourseContent, CourseMember, CutoverMigration, ExecutionBackend, ShadowSetting

# Shadow settings and cutover migrations are read on the submit path like the catalog, and cached with it.
CATALOG_MODELS = (CourseContent, CourseMember, ExecutionBackend, ShadowSetting, CutoverMigration)
CATALOG_TABLES = frozenset(model.__tablename__ for model in CATALOG_MODELS)
_MAX_ENTRIES = 50_000

_caches: weakref.WeakSet[CatalogCache] = weakref.WeakSet()


class CatalogCache:
    """Found catalog rows by key for `ttl` seconds; when full, the least recently used entry goes."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        # ttl 0 (the cache off) stores nothing (`put`); TTLCache itself wants a positive ttl.
        self._entries: TTLCache[tuple[str, ...], Any] = TTLCache(maxsize=_MAX_ENTRIES, ttl=ttl if ttl > 0 else 1)
        _caches.add(self)

    def get(self, key: tuple[str, ...]) -> Any | None:
        return self._entries.get(key)

    def put(self, key: tuple[str, ...], value: Any) -> None:
        if self.ttl <= 0 or value is None:
            return
        self._entries[key] = value

    def clear(self) -> None:
        self._entries.clear()


def invalidate_all() -> None:
    """Forget every cached catalog row in this process (cheap; over-invalidation only costs a few queries)."""
    for cache in list(_caches):
        cache.clear()


def _touches_catalog(session: Session) -> bool:
    groups = (session.new, session.dirty, session.deleted)
    return any(isinstance(obj, CATALOG_MODELS) for group in groups for obj in group)


@event.listens_for(Session, "before_flush")
def _on_flush(session: Session, _context: Any, _instances: Any) -> None:
    if _touches_catalog(session):
        invalidate_all()


@event.listens_for(Session, "after_commit")
def _on_commit(session: Session) -> None:
    # Again after the commit: a concurrent request may have re-cached the old row between flush and commit.
    if session.info.pop("touched_catalog", False):
        invalidate_all()


@event.listens_for(Session, "after_flush")
def _remember(session: Session, _context: Any) -> None:
    if _touches_catalog(session):
        session.info["touched_catalog"] = True


@event.listens_for(Session, "do_orm_execute")
def _on_bulk(state: Any) -> None:
    """`update(CourseContent)...` / `delete(...)` statements bypass the flush; catch them by their table."""
    if state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in CATALOG_TABLES:
            invalidate_all()
            state.session.info["touched_catalog"] = True
