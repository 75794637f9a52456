"""Read a flow run's persisted JSON result from the storage key in its final state (no Prefect import).

A completed run whose flow persisted its result carries `state.data = {"storage_key": ..., "serializer":
{"type": "json"}, "storage_block_id": ...}`. The shipped flows write local files (key = absolute path); the
gateway reads the same path, or the same file name under its own `prefect-results` folder when the volume is
mounted elsewhere, never a file outside that folder. Anything else (no data, data inlined in the state, pickle,
a remote storage block) is reported as unreadable, with why: it is not a report the work wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ResultUnavailable(Exception):
    """The run finished but its result cannot be read here; the message says why."""


def _candidates(storage_key: str, results_dir: Path) -> list[Path]:
    """Only files inside the results folder: a state naming any other path is not pointing at a stored result."""
    key = Path(storage_key)
    inside = results_dir.resolve()
    paths = [key if key.is_absolute() else results_dir / key, results_dir / key.name]
    return [p for p in paths if p.resolve().is_relative_to(inside)]


def _unwrap(value: Any) -> Any:
    """Prefect may store a full result record (`{"metadata": ..., "result": "<serialized>"}`) or the bare value."""
    if isinstance(value, dict) and set(value) == {"metadata", "result"} and isinstance(value["metadata"], dict):
        inner = value["result"]
        if isinstance(inner, str | bytes):
            try:
                return json.loads(inner)
            except ValueError:
                return inner
        return inner
    return value


def read_persisted_result(state_data: Any, results_dir: Path) -> Any:
    """The value a flow returned, from `state.data` of its final state."""
    if state_data is None:
        raise ResultUnavailable(
            "the flow run did not persist a result (persist_result is off for this deployment); "
            "such a flow reports through PATCH /api/results/{id} instead"
        )
    if not isinstance(state_data, dict) or "storage_key" not in state_data:
        # Data inlined in the state is whatever the last `set_state` call carried, and anyone who can reach the
        # Prefect API can send one: only a result the flow stored is a report the work wrote.
        raise ResultUnavailable("the flow run's final state carries no stored result, only inline data")
    serializer = (state_data.get("serializer") or {}).get("type")
    if serializer not in (None, "json"):
        raise ResultUnavailable(f"the flow persisted its result with the {serializer!r} serializer, not JSON")
    if state_data.get("storage_block_id"):
        raise ResultUnavailable(
            f"the result is in storage block {state_data['storage_block_id']}, which the gateway cannot read"
        )
    storage_key = str(state_data["storage_key"])
    for path in _candidates(storage_key, results_dir):
        if path.is_file():
            try:
                return _unwrap(json.loads(path.read_text()))
            except ValueError as exc:
                raise ResultUnavailable(f"the persisted result {path.name} is not valid JSON") from exc
    raise ResultUnavailable(f"the persisted result {Path(storage_key).name} is not in {results_dir}")
