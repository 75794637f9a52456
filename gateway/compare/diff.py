"""The difference of two normalised reports: per test identity (order-insensitive), the summary, the score.

Each difference is a JSON path with both values, e.g. `$.tests["test_calc.py"].tests["test_add"].result`,
`$.summary.passed`, `$.score`. Values are redacted (no secret) and truncated (no more than the rules allow of
a student's output) when they are recorded, never before they are compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.redact import redact_text
from common.scoring import score
from gateway.compare.rules import Rules

MISSING = "<missing>"


@dataclass(frozen=True)
class Difference:
    path: str
    primary: Any
    shadow: Any
    # The test's identity ("collection::test") when the difference is about one test, else None.
    test: str | None = None

    def as_json(self, rules: Rules) -> dict[str, Any]:
        found: dict[str, Any] = {"path": self.path, "primary": shown(self.primary, rules)}
        found["shadow"] = shown(self.shadow, rules)
        if self.test is not None:
            found["test"] = self.test
        return found


def shown(value: Any, rules: Rules) -> Any:
    """A value as a difference shows it: secrets replaced, long text cut to `max_value_chars`."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = redact_text(text)
    for pattern in rules.redact_patterns:
        text = pattern.sub(_redacted, text)
    if len(text) > rules.max_value_chars:
        text = f"{text[: rules.max_value_chars]}… [{len(text) - rules.max_value_chars} more characters]"
    return text


def _redacted(match: Any) -> str:
    """Keep a `name=` prefix (the first two groups) so a reader sees what was hidden."""
    if match.re.groups >= 2:
        return f"{match.group(1)}{match.group(2)}***"
    return "***"


def tests_by_identity(report: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """`collection::test` → (collection name, test name, node); a duplicate name keeps a `#n` suffix."""
    found: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for collection in report.get("tests") or []:
        if not isinstance(collection, dict):
            continue
        cname = str(collection.get("name", ""))
        for test in collection.get("tests") or []:
            if not isinstance(test, dict):
                continue
            tname = str(test.get("name", ""))
            key = f"{cname}::{tname}"
            n = 1
            while key in found:
                n += 1
                key = f"{cname}::{tname}#{n}"
            found[key] = (cname, tname, test)
    return found


def _test_path(cname: str, tname: str) -> str:
    return f"$.tests[{json.dumps(cname)}].tests[{json.dumps(tname)}]"


def verdict(node: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return None if node is None else (node.get("status"), node.get("result"))


def diff_reports(primary: dict[str, Any], shadow: dict[str, Any], rules: Rules) -> list[Difference]:
    """Both reports already normalised. Tests first (sorted by identity), then root fields, summary, score."""
    found: list[Difference] = []
    left, right = tests_by_identity(primary), tests_by_identity(shadow)
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        cname, tname = (a or b)[:2]  # type: ignore[index]
        path = _test_path(cname, tname)
        if a is None or b is None:
            found.append(Difference(path, _presence(a), _presence(b), test=key))
            continue
        for name in rules.test_fields:
            if name in rules.ignore_keys:
                continue
            x, y = a[2].get(name), b[2].get(name)
            if x != y:
                found.append(Difference(f"{path}.{name}", x, y, test=key))
    for name in rules.root_fields:
        if primary.get(name) != shadow.get(name):
            found.append(Difference(f"$.{name}", primary.get(name), shadow.get(name)))
    sa, sb = primary.get("summary") or {}, shadow.get("summary") or {}
    for name in rules.summary_fields:
        if sa.get(name) != sb.get(name):
            found.append(Difference(f"$.summary.{name}", sa.get(name), sb.get(name)))
    score_a, score_b = score(primary), score(shadow)
    if abs(score_a - score_b) > rules.score_tolerance:
        found.append(Difference("$.score", score_a, score_b))
    return [d for d in found if not _ignored(d.path, rules)]


def _presence(test: tuple[str, str, dict[str, Any]] | None) -> Any:
    return MISSING if test is None else {"status": test[2].get("status"), "result": test[2].get("result")}


def _ignored(path: str, rules: Rules) -> bool:
    return any(pattern.match(path) for pattern in rules.ignore_paths)


def flips(primary: dict[str, Any], shadow: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(every test seen in either report, the tests whose verdict differs): the A/A flake evidence."""
    left, right = tests_by_identity(primary), tests_by_identity(shadow)
    seen = set(left) | set(right)
    flipped = {
        key
        for key in seen
        if verdict(left[key][2] if key in left else None) != verdict(right[key][2] if key in right else None)
    }
    return seen, flipped
