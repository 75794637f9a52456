"""One factory for the catalog's CRUD routes (list, create, read, patch, delete), admin only.

The admin catalog (course contents, members, users) and the legacy `/execution-backends` follow the same
pattern; what differs per table (texts, order, guards, stamps) is the service's `catalog_admin.Table`.
"""

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel

from gateway.api.deps import Admin, State
from gateway.jobs import catalog_admin as service


def crud(
    router: APIRouter,
    path: str,
    table: service.Table,
    create: type[BaseModel],
    patch: type[BaseModel],
    get: type[BaseModel],
    name: str,
) -> None:
    """Adds the five routes at `path` and `path/{item_id}` to `router` (`name`: the operations' suffix)."""

    @router.get(path, response_model=list[get], name=f"list_{name}")  # type: ignore[valid-type]
    async def list_items(state: State, principal: Admin, response: Response, skip: int = 0, limit: int = 100) -> Any:
        total, rows = await service.list_rows(state, table, skip, limit)
        response.headers["X-Total-Count"] = str(total)
        return rows

    @router.post(path, response_model=get, name=f"create_{name}")
    async def create_item(body: create, state: State, principal: Admin) -> Any:  # type: ignore[valid-type]
        return await service.create_row(state, table, body.model_dump(), principal)  # type: ignore[attr-defined]

    @router.get(f"{path}/{{item_id}}", response_model=get, name=f"get_{name}")
    async def get_item(item_id: str, state: State, principal: Admin) -> Any:
        return await service.get_row(state, table, item_id)

    @router.patch(f"{path}/{{item_id}}", response_model=get, name=f"update_{name}")
    async def update_item(item_id: str, body: patch, state: State, principal: Admin) -> Any:  # type: ignore[valid-type]
        values = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
        return await service.update_row(state, table, item_id, values, principal)

    @router.delete(f"{path}/{{item_id}}", name=f"delete_{name}")
    async def delete_item(item_id: str, state: State, principal: Admin) -> dict[str, str]:
        await service.delete_row(state, table, item_id)
        return {"id": item_id, "status": "deleted"}
