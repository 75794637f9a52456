"""The comparator's rules: the shipped `rules.yaml`, with an admin's overrides laid over it (key by key).

Rules are data, not code: what to drop, what to compare, how to normalise messages, how much to show. A rule
set is compiled once (`Rules.build`) and is immutable; the compare step builds it once per pass.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SHIPPED = Path(__file__).with_name("rules.yaml")


@functools.cache
def shipped_rules() -> dict[str, Any]:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@dataclass(frozen=True)
class Rules:
    ignore_keys: frozenset[str]
    test_fields: tuple[str, ...]
    root_fields: tuple[str, ...]
    summary_fields: tuple[str, ...]
    ignore_paths: tuple[re.Pattern[str], ...]
    replacements: tuple[tuple[re.Pattern[str], str], ...]
    score_tolerance: float
    max_value_chars: int
    max_differences: int
    redact_patterns: tuple[re.Pattern[str], ...]
    flaky_threshold: float

    @classmethod
    def build(cls, overrides: dict[str, Any] | None = None) -> Rules:
        """The shipped rules with `overrides` replacing whole keys; raises ValueError on a bad rule."""
        data = {**shipped_rules(), **(overrides or {})}
        unknown = set(overrides or {}) - set(shipped_rules())
        if unknown:
            raise ValueError(f"unknown comparison rule(s): {', '.join(sorted(unknown))}")
        try:
            return cls(
                ignore_keys=frozenset(str(k) for k in data["ignore_keys"]),
                test_fields=tuple(str(f) for f in data["test_fields"]),
                root_fields=tuple(str(f) for f in data["root_fields"]),
                summary_fields=tuple(str(f) for f in data["summary_fields"]),
                ignore_paths=tuple(path_pattern(str(p)) for p in data["ignore_paths"]),
                replacements=tuple((re.compile(r["pattern"]), str(r["replace"])) for r in data["replacements"]),
                score_tolerance=float(data["score_tolerance"]),
                max_value_chars=int(data["max_value_chars"]),
                max_differences=int(data["max_differences"]),
                redact_patterns=tuple(re.compile(p) for p in data["redact_patterns"]),
                flaky_threshold=float(data["flaky_threshold"]),
            )
        except (KeyError, TypeError, re.error) as exc:
            raise ValueError(f"bad comparison rules: {exc}") from None


def path_pattern(glob: str) -> re.Pattern[str]:
    """A JSON-path glob: `[*]` is any one index or name (`["test_add"]`), `*` any run of characters."""
    regex = re.escape(glob).replace(re.escape("[*]"), r"\[[^\]]*\]").replace(re.escape("*"), ".*")
    return re.compile(f"^{regex}$")


@functools.cache
def default_rules() -> Rules:
    return Rules.build()
