"""The catalog file's check (`gateway catalog check`, and `load` before it writes): each problem on one line.

No store: the check reads the file only. The documented example (docs/catalog.md) must check clean, and every
field the loader accepts must be in that document's tables.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.catalog import CatalogError, load_catalog
from gateway.store.catalog_check import SECTIONS, Severity, check_catalog

pytestmark = pytest.mark.fast

DOC = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()


def _example() -> dict[str, Any]:
    block = re.search(r"```yaml\n(.*?)```", DOC, re.DOTALL)
    assert block is not None
    return yaml.safe_load(block.group(1))


def _lines(data: Any) -> list[str]:
    return [str(p) for p in check_catalog(data)]


def test_the_documented_example_is_clean_and_has_every_backend_type() -> None:
    data = _example()
    assert [p for p in check_catalog(data) if p.severity is Severity.ERROR] == []
    assert {b["type"] for b in data["execution_backends"]} == {"celery", "prefect", "prefect_builtin"}


def test_every_field_is_documented() -> None:
    for section in SECTIONS:
        part = DOC.split(f"## `{section.name}`", 1)[1].split("| field |", 1)[1].split("\n\n", 1)[0]
        documented = set(re.findall(r"^\| `([a-z_]+)` \|", part, re.MULTILINE))
        assert documented == section.fields(), f"{section.name}: {documented ^ section.fields()}"


def test_a_misspelt_field_is_named_with_the_known_ones() -> None:
    data = {"course_contents": [{"path": "week1.ex1", "directory": "ex1", "execution_backed": "celery"}]}
    (line, *_notes) = _lines(data)
    assert line.startswith("error: course_contents[0] (week1.ex1): unknown field 'execution_backed' (known: ")
    assert "execution_backend," in line


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"users": [{"username": "a", "password": "p", "role": "root"}]},
         "error: users[0] (a): role: Value error, role must be one of admin, worker, student"),
        ({"execution_backends": [{"type": "celery"}]}, "error: execution_backends[0]: slug: Field required"),
        ({"execution_backends": [{"slug": "a b", "type": "celery"}]},
         "error: execution_backends[0] (a b): slug: Value error, slug must match ^[A-Za-z0-9_-]+$"),
        ({"course_contents": [{"path": "x", "max_submissions": "three"}]},
         "error: course_contents[0] (x): max_submissions: Input should be a valid integer"),
        ({"course_members": {"id": "m1"}}, "error: course_members: a list of entries, not a dict"),
        ({"course_member": []}, "error: file: unknown section 'course_member' (known: execution_backends, "
                                "course_contents, course_members, users)"),
        (["a"], "error: file: a catalog is a mapping, not a list"),
        ({"users": ["alice"]}, "error: users[0]: an entry is a mapping, not a str"),
    ],
)  # fmt: skip
def test_errors_say_where_and_what(data: Any, expected: str) -> None:
    assert expected in _lines(data)


def test_a_name_given_twice_is_an_error_that_points_at_the_first() -> None:
    data = {"execution_backends": [{"slug": "c", "type": "celery"}, {"slug": "c", "type": "prefect"}]}
    assert _lines(data) == ["error: execution_backends[1] (c): slug 'c' again (first: execution_backends[0] (c))"]


def test_notes_load_but_say_what_may_not_be_meant() -> None:
    data = {
        "execution_backends": [
            {"slug": "k", "type": "kubernetes"},
            {"slug": "p", "type": "prefect", "properties": {"deploymnet": "x/y"}},
        ],
        "course_contents": [{"path": "w.e", "directory": "w/e", "execution_backend": "elsewhere"}],
        "course_members": [{"user_id": "u"}],
        "users": [{"username": "a", "password": "p", "course_member_ids": ["m-gone"]}],
    }
    problems = check_catalog(data)
    assert {p.severity for p in problems} == {Severity.NOTE}
    assert [str(p) for p in problems] == [
        "note: execution_backends[0] (k): type 'kubernetes' is no engine here"
        " (known: celery, prefect, prefect_builtin)",
        "note: execution_backends[1] (p): property 'deploymnet' is not read by prefect",
        "note: course_members[0]: no id: every load adds a new member",
        "note: course_contents[0] (w.e): execution_backend 'elsewhere' is not in this file: it must be in the store",
        "note: users[0] (a): course member 'm-gone' is not in this file",
    ]


def test_the_command_exits_1_on_errors_and_0_on_notes(tmp_path: Path) -> None:
    bad, good, broken = tmp_path / "bad.yaml", tmp_path / "good.yaml", tmp_path / "broken.yaml"
    bad.write_text("users:\n  - username: a\n    pasword: p\n")
    good.write_text(yaml.safe_dump(_example()))
    broken.write_text("users: [\n")
    runner = CliRunner()
    done = runner.invoke(app, ["catalog", "check", str(bad)])
    assert done.exit_code == 1
    assert "error: users[0] (a): unknown field 'pasword'" in done.output
    assert "error: users[0] (a): password: Field required" in done.output
    assert f"{bad}: 2 error(s); not loadable" in done.output
    done = runner.invoke(app, ["catalog", "check", str(good)])
    assert done.exit_code == 0 and f"{good}: ok" in done.output, done.output
    done = runner.invoke(app, ["catalog", "check", str(broken)])
    assert done.exit_code == 1 and "not valid YAML" in done.output and "line 2" in done.output, done.output


def test_load_refuses_a_file_with_errors_before_touching_the_store(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("execution_backends:\n  - slug: c\n    type: celery\n    propertys: {}\n")
    with pytest.raises(CatalogError, match=r"unknown field 'propertys'"):
        load_catalog(bad)  # no settings given and none needed: it never gets as far as the store
