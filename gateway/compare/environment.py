"""Environment parity: the two legs' effective environments side by side, and the fields where they differ.

Each report's root names the environment its run had (`backends/work/environment.py`: interpreter and pytest
versions, a digest of the runtime's distributions, the limits, the isolation, the process kind). Grades are
compared with `environment` ignored (rules.yaml); this module compares the environments themselves, so an engine
configured with a lower time limit is named on the first comparison ("celery: time limit 4 s, prefect: 10 s")
rather than discovered from the students it failed. Only fields both reports carry are compared: a foreign
deployment that reports less is not a difference, only less evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Field (dotted) → (label, unit) for the words an operator reads.
LABELS: dict[str, tuple[str, str]] = {
    "python": ("Python", ""),
    "pytest": ("pytest", ""),
    "distributions": ("runtime distributions", ""),
    "isolation": ("isolation", ""),
    "process": ("run process", ""),
    "runner": ("test runner", ""),
    "limits.time_seconds": ("time limit", " s"),
    "limits.cpu_seconds": ("CPU limit", " s"),
    "limits.cpu_tolerance": ("CPU limit's measurement tolerance", ""),
    "limits.wall_seconds": ("wall-clock limit", " s"),
    "limits.run_memory_mb": ("run memory limit", " MB"),
    "limits.memory_mb": ("memory limit", " MB"),
    "limits.processes": ("process limit", ""),
    "limits.file_mb": ("file size limit", " MB"),
}


def flatten(env: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (env or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class EnvDifference:
    field: str
    primary: Any
    shadow: Any

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "primary": self.primary, "shadow": self.shadow}


def environment_of(report: Mapping[str, Any] | None) -> dict[str, Any]:
    env = (report or {}).get("environment")
    return dict(env) if isinstance(env, Mapping) else {}


def differences(primary: Mapping[str, Any] | None, shadow: Mapping[str, Any] | None) -> list[EnvDifference]:
    """The fields both environments carry and that differ, in a stable order."""
    left, right = flatten(primary), flatten(shadow)
    return [EnvDifference(k, left[k], right[k]) for k in sorted(left.keys() & right.keys()) if left[k] != right[k]]


def _value(field: str, value: Any) -> str:
    unit = LABELS.get(field, (field, ""))[1]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value}{unit}"


def describe(found: Iterable[Mapping[str, Any]], primary_engine: str, shadow_engine: str) -> str:
    """ "celery: time limit 4 s, prefect: 10 s; celery: memory limit 256 MB, prefect: 1024 MB" """
    parts = []
    for d in found:
        label = LABELS.get(d["field"], (d["field"], ""))[0]
        parts.append(
            f"{primary_engine}: {label} {_value(d['field'], d['primary'])}, "
            f"{shadow_engine}: {_value(d['field'], d['shadow'])}"
        )
    return "; ".join(parts)


def comparison_environment(primary_report: Any, shadow_report: Any) -> dict[str, Any] | None:
    """What a comparison row keeps: both environments and their differences (None when neither reported one)."""
    left = environment_of(primary_report if isinstance(primary_report, Mapping) else None)
    right = environment_of(shadow_report if isinstance(shadow_report, Mapping) else None)
    if not left and not right:
        return None
    return {"primary": left, "shadow": right, "differences": [d.as_json() for d in differences(left, right)]}
