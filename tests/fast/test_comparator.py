"""The comparator on pairs of reports, table-driven: no engine, no database."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.compare.diff import diff_reports
from gateway.compare.experiment import Experiment, LegRun
from gateway.compare.normalise import normalise
from gateway.compare.outcomes import ComparisonOutcome, Side
from gateway.compare.rules import Rules, default_rules
from gateway.legs.states import LegOutcome

pytestmark = pytest.mark.fast


def node(
    name: str, result: str = "PASSED", status: str = "COMPLETED", message: str = "", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "test",
        "status": status,
        "result": result,
        "resultMessage": message,
        "statusMessage": "",
        "timestamp": "2026-11-26T10:00:00+00:00",
        "duration": 0.25,
        "executionDuration": 0.25,
        "summary": {"total": 1, "passed": int(result == "PASSED"), "failed": int(result == "FAILED"), "skipped": 0},
        **extra,
    }


def report(*tests: dict[str, Any], collection: str = "test_calc.py", **root: Any) -> dict[str, Any]:
    passed = sum(t["result"] == "PASSED" for t in tests)
    failed = sum(t["result"] == "FAILED" for t in tests)
    summary = {"total": len(tests), "passed": passed, "failed": failed, "skipped": len(tests) - passed - failed}
    return {
        "name": "week1/ex1",
        "type": "report",
        "status": "COMPLETED",
        "result": "FAILED" if failed else "PASSED",
        "summary": summary,
        "timestamp": "2026-11-26T10:00:00+00:00",
        "environment": {"python": "3.11.9"},
        "properties": {"phases": {"clone": 0.2}, "timeLimit": 10},
        "tests": [{"name": collection, "type": "collection", "summary": summary, "tests": list(tests)}],
        **root,
    }


BASE = report(node("test_add"), node("test_sub", "FAILED", message="assert 1 == 2"))


def changed(change: Any) -> dict[str, Any]:
    value = copy.deepcopy(BASE)
    change(value)
    return value


def _set(path: list[Any], value: Any) -> Any:
    def apply(tree: Any) -> None:
        for key in path[:-1]:
            tree = tree[key]
        tree[path[-1]] = value

    return apply


TEST = ["tests", 0, "tests"]
NAME = '$.tests["test_calc.py"].tests'

# name, shadow report (primary is BASE), rule overrides, expected paths of the differences
CASES: list[tuple[str, Any, dict[str, Any], list[str]]] = [
    ("identical", lambda r: None, {}, []),
    (
        "timestamps, durations, environment, phases ignored",
        lambda r: (
            _set([*TEST, 0, "timestamp"], "2030-01-01T00:00:00Z")(r),
            _set([*TEST, 0, "duration"], 9.5)(r),
            _set(["environment"], {"python": "3.12"})(r),
            _set(["properties", "phases"], {"clone": 3.0})(r),
        ),
        {},
        [],
    ),
    ("test order does not matter", lambda r: r["tests"][0]["tests"].reverse(), {}, []),
    (
        "temp paths, pids and addresses in messages are normalised",
        lambda r: _set([*TEST, 1, "resultMessage"], "assert 1 == 2")(r),
        {},
        [],
    ),
    ("a verdict that differs", _set([*TEST, 0, "result"], "FAILED"), {}, [f'{NAME}["test_add"].result']),
    (
        "a status that differs (timed out on one engine)",
        _set([*TEST, 1, "status"], "TIMEDOUT"),
        {},
        [f'{NAME}["test_sub"].status'],
    ),
    (
        "a message that differs after normalisation",
        _set([*TEST, 1, "resultMessage"], "assert 1 == 3"),
        {},
        [f'{NAME}["test_sub"].resultMessage'],
    ),
    (
        "an ignored path",
        _set([*TEST, 1, "resultMessage"], "assert 1 == 3"),
        {"ignore_paths": ["$.tests[*].tests[*].resultMessage"]},
        [],
    ),
    (
        "a message dropped by an ignore_keys override",
        _set([*TEST, 1, "resultMessage"], "other"),
        {"ignore_keys": ["timestamp", "duration", "executionDuration", "environment", "phases", "resultMessage"]},
        [],
    ),
    ("a missing test (the summary left alone)", lambda r: r["tests"][0]["tests"].pop(0), {}, [f'{NAME}["test_add"]']),
    (
        "counts and score",
        _set(["summary"], {"total": 2, "passed": 2, "failed": 0, "skipped": 0}),
        {},
        ["$.summary.passed", "$.summary.failed", "$.score"],
    ),
    (
        "score within tolerance",
        _set(["summary"], {"total": 3, "passed": 1, "failed": 1, "skipped": 0}),
        {"summary_fields": [], "score_tolerance": 0.2},
        [],
    ),
    (
        "score beyond tolerance",
        _set(["summary"], {"total": 3, "passed": 1, "failed": 1, "skipped": 0}),
        {"summary_fields": [], "score_tolerance": 0.1},
        ["$.score"],
    ),
]


@pytest.mark.parametrize(("name", "change", "overrides", "paths"), CASES, ids=[c[0] for c in CASES])
def test_diff(name: str, change: Any, overrides: dict[str, Any], paths: list[str]) -> None:
    rules = Rules.build(overrides)
    primary = copy.deepcopy(BASE)
    if "normalised" in name:
        primary["tests"][0]["tests"][1]["resultMessage"] = (
            "assert 1 == 2 (pid 4242 at 0x7f3a2b1c9d00, /tmp/run-q1w2/test_calc.py)"
        )
        shadow = changed(
            _set([*TEST, 1, "resultMessage"], "assert 1 == 2 (pid 77 at 0x55d0aa11bb22, /tmp/xyz/test_calc.py)")
        )
    else:
        shadow = changed(change)
    found = diff_reports(normalise(primary, rules), normalise(shadow, rules), rules)
    assert [d.path for d in found] == paths


def test_the_engine_name_in_an_error_key_is_not_a_difference() -> None:
    rules = default_rules()
    a = normalise({"celery_exception": "InfrastructureError", "message": "Git clone failed."}, rules)
    b = normalise({"prefect_exception": "InfrastructureError", "message": "Git clone failed."}, rules)
    assert a == b


def test_a_difference_is_redacted_and_truncated() -> None:
    rules = Rules.build({"max_value_chars": 40})
    output = "token=ghp_abcdefghijklmnopqrstuvwxyz0123 https://bob:hunter2@git.example/x " + "x" * 500
    shadow = changed(_set([*TEST, 1, "resultMessage"], output))
    (difference,) = diff_reports(normalise(BASE, rules), normalise(shadow, rules), rules)
    shown = difference.as_json(rules)["shadow"]
    assert "ghp_" not in shown and "hunter2" not in shown
    assert shown.startswith("token=***") and "more characters]" in shown and len(shown) < 80


def test_bad_rule_overrides_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Rules.build({"ignore_everything": True})
    with pytest.raises(ValueError, match="bad"):
        Rules.build({"replacements": [{"pattern": "(", "replace": ""}]})


def run(report_: dict[str, Any] | None, phase: str = "succeeded", outcome: str | None = None, **values: Any) -> LegRun:
    return LegRun(engine="celery", phase=phase, outcome=outcome or phase, report=report_, **values)


# name, primary, shadow, flaky tests, expected outcome, side
OUTCOMES: list[tuple[str, LegRun, LegRun, set[str], ComparisonOutcome, Side | None]] = [
    ("match", run(BASE), run(copy.deepcopy(BASE)), set(), ComparisonOutcome.MATCH, None),
    (
        "mismatch",
        run(BASE),
        run(changed(_set([*TEST, 0, "result"], "FAILED"))),
        set(),
        ComparisonOutcome.MISMATCH,
        None,
    ),
    (
        "noise: only flaky tests differ",
        run(BASE),
        run(changed(_set([*TEST, 0, "result"], "FAILED"))),
        {"test_calc.py::test_add"},
        ComparisonOutcome.NOISE,
        None,
    ),
    (
        "not noise when a stable test differs too",
        run(BASE),
        run(changed(lambda r: (_set([*TEST, 0, "result"], "FAILED")(r), _set([*TEST, 1, "result"], "PASSED")(r)))),
        {"test_calc.py::test_add"},
        ComparisonOutcome.MISMATCH,
        None,
    ),
    ("shadow crashed", run(BASE), run(None, "crashed"), set(), ComparisonOutcome.INFRA_ERROR, Side.SHADOW),
    (
        "primary failed (clone)",
        run(None, "failed", error="Git clone failed."),
        run(BASE),
        set(),
        ComparisonOutcome.INFRA_ERROR,
        Side.PRIMARY,
    ),
    ("both broken", run(None, "failed"), run(None, "rejected"), set(), ComparisonOutcome.INFRA_ERROR, Side.BOTH),
    (
        "shadow timed out",
        run(BASE),
        run(None, "failed", LegOutcome.TIMED_OUT),
        set(),
        ComparisonOutcome.SHADOW_TIMEOUT,
        None,
    ),
    (
        "shadow timed out with its engine saying nothing runs it",
        run(BASE),
        run(None, "failed", LegOutcome.TIMED_OUT, last_error="run is Late: no runner picked it up"),
        set(),
        ComparisonOutcome.INFRA_ERROR,
        Side.SHADOW,
    ),
    (
        # A Prefect run Late behind a busy runner that still polls, at its deadline: its engine was alive.
        "shadow late behind a busy worker",
        run(BASE),
        run(None, "failed", LegOutcome.LATE),
        set(),
        ComparisonOutcome.LATE,
        Side.SHADOW,
    ),
    (
        "primary broken, shadow late: only the primary is an infra error",
        run(None, "crashed"),
        run(None, "failed", LegOutcome.LATE),
        set(),
        ComparisonOutcome.INFRA_ERROR,
        Side.PRIMARY,
    ),
    (
        "shadow never accepted before its deadline",
        run(BASE),
        run(None, "failed", LegOutcome.TIMED_OUT, dispatch_state="pending", last_error="broker down"),
        set(),
        ComparisonOutcome.INFRA_ERROR,
        Side.SHADOW,
    ),
]


@pytest.mark.parametrize(("name", "primary", "shadow", "flaky", "outcome", "side"), OUTCOMES,
                         ids=[c[0] for c in OUTCOMES])  # fmt: skip
def test_outcome(
    name: str, primary: LegRun, shadow: LegRun, flaky: set[str], outcome: ComparisonOutcome, side: Side | None
) -> None:
    verdict = Experiment(default_rules(), flaky.__contains__).run(primary, shadow)
    assert (verdict.outcome, verdict.side) == (outcome, side)


def test_an_aa_pair_reports_flips_and_is_never_noise() -> None:
    shadow = run(changed(_set([*TEST, 0, "result"], "FAILED")))
    verdict = Experiment(default_rules(), lambda _t: True, aa=True).run(run(BASE), shadow)
    assert verdict.outcome == ComparisonOutcome.MISMATCH
    assert verdict.tests_flipped == {"test_calc.py::test_add"}
    assert verdict.tests_seen == {"test_calc.py::test_add", "test_calc.py::test_sub"}
