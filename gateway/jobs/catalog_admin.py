"""The admin catalog's CRUD as one service over several tables (course contents, members, users, backends).

Each table is described once (`Table`): its noun for the answers' texts, its order, the guard a change must
pass, and whether rows carry who changed them. The SQL is `gateway.store.catalog_rows`'; the HTTP routes are
built from a `Table` by `gateway.api.routes.crud`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from gateway.jobs.errors import Conflict, NotFound
from gateway.runtime import GatewayState
from gateway.store import catalog_rows as rows
from gateway.store.accounts import Principal, hash_password
from gateway.store.models import CourseContent, CourseMember, ExecutionBackend, User, new_id

LAST_ADMIN = "The last admin account cannot be removed or demoted: create another admin first"
BACKEND_IN_USE = "Execution backend is used by course contents"


@dataclass(frozen=True)
class Table:
    model: type[Any]
    noun: str  # "course content": the answers say "Course content not found"
    order_by: Any
    unique: str = "id or unique key"  # named in the conflict's text
    article: str = "A"
    guard: rows.Guard | None = None
    # The legacy execution backends: who created/changed a row and its version are kept; a null in a patch
    # leaves the field as it is. Catalog writes forget the cached logins (a user or member changed).
    stamped: bool = False
    forgets_logins: bool = True

    def missing(self) -> NotFound:
        return NotFound(f"{self.noun.capitalize()} not found")

    def conflict(self) -> Conflict:
        return Conflict(f"{self.article} {self.noun} with this {self.unique} already exists")


COURSE_CONTENTS = Table(CourseContent, "course content", CourseContent.id)
COURSE_MEMBERS = Table(CourseMember, "course member", CourseMember.id)
USERS = Table(User, "user", User.id, guard=rows.keeps_an_admin)
EXECUTION_BACKENDS = Table(
    ExecutionBackend,
    "execution backend",
    ExecutionBackend.slug,
    unique="id or slug",
    article="An",
    guard=rows.backend_unused,
    stamped=True,
    forgets_logins=False,
)


async def _prepare(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Users store a hash, never the password; the hash is slow, so it runs in a thread."""
    if table.model is User and "password" in values:
        password = values.pop("password")
        if password is not None:
            values["password_hash"] = await run_in_threadpool(hash_password, password)
    return values


async def list_rows(state: GatewayState, table: Table, skip: int, limit: int) -> tuple[int, list[Any]]:
    return await rows.page(state.sessions, table.model, table.order_by, max(0, skip), max(1, limit))


async def get_row(state: GatewayState, table: Table, row_id: str) -> Any:
    row = await rows.get(state.sessions, table.model, row_id)
    if row is None:
        raise table.missing()
    return row


async def create_row(state: GatewayState, table: Table, values: dict[str, Any], principal: Principal) -> Any:
    values = await _prepare(table, values)
    values["id"] = values.get("id") or new_id()
    if table.stamped:
        values["properties"] = values.get("properties") or {}
        values |= {"created_by": principal.user_id, "updated_by": principal.user_id}
    try:
        row = await rows.insert(state.sessions, table.model(**values))
    except rows.RowConflict:
        raise table.conflict() from None
    if table.forgets_logins:
        state.auth.forget()
    return row


async def update_row(
    state: GatewayState, table: Table, row_id: str, values: dict[str, Any], principal: Principal
) -> Any:
    values = await _prepare(table, values)

    def change(row: Any) -> None:
        for name, value in values.items():
            if value is not None or not table.stamped:
                setattr(row, name, value)
        if table.stamped:
            row.version = (row.version or 0) + 1
            row.updated_by = principal.user_id

    try:
        row = await rows.update(state.sessions, table.model, row_id, change, table.guard, values)
    except rows.RowConflict:
        raise table.conflict() from None
    except rows.LastAdmin:
        raise Conflict(LAST_ADMIN) from None
    if row is None:
        raise table.missing()
    if table.forgets_logins:
        state.auth.forget()
    return row


async def delete_row(state: GatewayState, table: Table, row_id: str) -> None:
    try:
        found = await rows.delete(state.sessions, table.model, row_id, table.guard)
    except rows.RowConflict:
        raise table.conflict() from None
    except rows.LastAdmin:
        raise Conflict(LAST_ADMIN) from None
    except rows.RowInUse:
        raise Conflict(BACKEND_IN_USE) from None
    if not found:
        raise table.missing()
    if table.forgets_logins:
        state.auth.forget()


async def current_user(state: GatewayState, principal: Principal) -> User | None:
    """The login's user row (None when it was deleted since the login was cached)."""
    return await rows.get(state.sessions, User, principal.user_id)
