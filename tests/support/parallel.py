"""The suite on several pytest processes (pytest-xdist, `-n N --dist loadfile`): which tests share one, in what order.

Why units: most modules start their engines once per module (module-scoped stacks, workers, servers) and
tests/prefect once per session (one Prefect server and runner); xdist's plain `load` hands single tests to any
process, so each stack would be started in every process that got one of its tests. With `--dist loadfile` a
file runs whole on one process; the scheduler here also keeps each folder of `SESSION_SHARED` whole, so its
session engines start once too. Processes share nothing else: each has its own PostgreSQL database, Redis
database (`tests/conftest.py` locks one per session), temp folders, free ports and sandbox uids.

Why an order: a process takes the next unit when it is done with one, so the run ends with whatever unit was
taken last; a long unit taken last leaves the other processes idle. Units that start engines (a test marked
`slow`) go first, the engine-free layer (`fast`) last, the rest between, each class in collection order.
(xdist's own `--dist loadgroup` would do the grouping with marks, but it rewrites a node id field that pytest 9
no longer reads, so its groups are silently ignored there.)
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import pytest

# Folders whose tests share session-scoped engines (see their conftest.py): one unit each.
SESSION_SHARED = ("tests/prefect/",)


class Cost(IntEnum):
    """When a unit is handed out: the lower, the sooner."""

    ENGINES = 0  # a test in it is marked `slow`: it starts engines
    PLAIN = 1  # unmarked: sandboxes, single servers, real git repositories
    FAST = 2  # every test in it is marked `fast`: the engine-free layer


def unit_of(nodeid: str) -> str:
    """The unit a test runs in: its `SESSION_SHARED` folder, else its file."""
    for folder in SESSION_SHARED:
        if nodeid.startswith(folder):
            return folder
    return nodeid.split("::", 1)[0]


def cost_of(item: pytest.Item) -> Cost:
    if item.get_closest_marker("slow") is not None:
        return Cost.ENGINES
    if item.get_closest_marker("fast") is not None:
        return Cost.FAST
    return Cost.PLAIN


def in_a_worker(config: pytest.Config) -> bool:
    """True in an xdist worker process (xdist gives those a `workerinput`)."""
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a worker: sort the units by cost (stable; the scheduler hands units out in this collection order).
    Every worker sorts the same collection the same way, as xdist requires."""
    if not in_a_worker(config):
        return
    cost: dict[str, Cost] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        unit = unit_of(item.nodeid)
        cost[unit] = min(cost.get(unit, Cost.FAST), cost_of(item))
        first.setdefault(unit, index)
    items.sort(key=lambda item: (cost[unit_of(item.nodeid)], first[unit_of(item.nodeid)]))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: the suite also runs with `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For `--dist loadfile`: xdist's file scheduler with the `SESSION_SHARED` folders as one unit, handing units
    out in collection order (xdist's default puts the units with the most tests first, which says nothing about
    how long they take)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class UnitScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False
    return UnitScheduling(config, log)
