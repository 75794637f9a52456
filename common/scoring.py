"""The row's `result` from a report: `summary.passed / summary.total`, 0.0 when nothing ran."""

from __future__ import annotations

from typing import Any


def _summary_score(report: dict[str, Any]) -> float:
    summary = report.get("summary") or {}
    try:
        total = float(summary.get("total") or 0)
        passed = float(summary.get("passed") or 0)
    except (TypeError, ValueError):
        return 0.0
    if total <= 0:
        return 0.0
    return max(0.0, min(1.0, passed / total))


def score(report: dict[str, Any] | None) -> float:
    """Prefer the work's own scoring (one definition for both engines); fall back to the summary math."""
    if not report:
        return 0.0
    try:
        from backends.work.report import report_score  # type: ignore[attr-defined]
    except ImportError:
        return _summary_score(report)
    try:
        return float(report_score(report))
    except Exception:  # noqa: BLE001 - a malformed report scores by the summary rule
        return _summary_score(report)
