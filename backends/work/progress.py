"""Progress reporting from the work to whichever engine runs it.

The work calls a plain callback; each engine wires it to its own mechanism (Celery `update_state`, a Prefect
artifact or label). Stages are fixed names so both engines' progress reads the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    percentage: int
    stage: str  # "started", "cloned", "collected", "running", "done"
    metadata: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(_event: ProgressEvent) -> None:
    """The default callback: progress goes nowhere."""
