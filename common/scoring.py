"""The score formula, once for both sides: the row's `result` is `summary.passed / summary.total`.

0.0 when nothing ran or the summary is malformed; clamped to [0, 1] so a malformed report can never score more
than a full pass. The work (`backends.work.report`) and the gateway (writing the row) both call `score`.
"""

from __future__ import annotations

from typing import Any


def score(report: dict[str, Any] | None) -> float:
    summary = (report or {}).get("summary") or {}
    if not isinstance(summary, dict):
        return 0.0
    try:
        total = float(summary.get("total") or 0)
        passed = float(summary.get("passed") or 0)
    except (TypeError, ValueError):
        return 0.0
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, passed / total))
