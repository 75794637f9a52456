"""`gateway catalog check FILE`: what is wrong with a catalog file, each problem on one line, before loading it.

The loader's models ignore keys they do not know (the API's bodies must), so a misspelt key in a YAML file
(`execution_backed:`) would load silently as "no backend". The check names every such key, every value the
models refuse, every entry named twice, every reference to a backend or member the file does not define, and
every backend type the registry does not know. Pure: it reads the file, never the store, so a reference to a
backend that only the store holds is a *note*, not an error. `gateway catalog load` refuses a file with errors.
The format, field by field, is docs/catalog.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from backends.registry import ENGINE_ALIASES, canonical_engine
from gateway.schemas import CourseContentIn, CourseMemberIn, ExecutionBackendCreate, UserIn


class Severity(StrEnum):
    ERROR = "error"  # the file must not be loaded
    NOTE = "note"  # loads, but may not be what was meant


@dataclass(frozen=True)
class Problem:
    severity: Severity
    where: str  # e.g. `course_contents[2] (week1.ex1)`
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass(frozen=True)
class Section:
    """One list of the file: its model, the key that names an entry, and the fields a file may set."""

    name: str
    model: type[BaseModel]
    natural_key: str
    extra_fields: frozenset[str] = frozenset()  # accepted by the loader beside the model's own fields

    def fields(self) -> set[str]:
        return set(self.model.model_fields) | self.extra_fields


SECTIONS = (
    Section("execution_backends", ExecutionBackendCreate, "slug"),
    # A content names its backend by slug or id (`execution_backend`); the loader resolves it to the id column.
    Section("course_contents", CourseContentIn, "path", frozenset({"execution_backend"})),
    Section("course_members", CourseMemberIn, "id"),
    Section("users", UserIn, "username"),
)  # fmt: skip

# The properties each engine reads (docs/catalog.md); others are passed through and never read.
READ_PROPERTIES = {"prefect": {"deployment", "submission_deployment"}, "celery": set()}


def read_catalog_file(path: Path) -> Any:
    """The file's YAML, or a `ValueError` that names the line of a syntax error."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def _label(section: Section, index: int, entry: Mapping[str, Any]) -> str:
    key = entry.get(section.natural_key) or entry.get("id")
    return f"{section.name}[{index}]" + (f" ({key})" if key else "")


def _model_problems(section: Section, where: str, entry: Mapping[str, Any]) -> list[Problem]:
    problems = [
        Problem(Severity.ERROR, where, f"unknown field {name!r} (known: {', '.join(sorted(section.fields()))})")
        for name in entry
        if name not in section.fields()
    ]
    try:
        section.model.model_validate({k: v for k, v in entry.items() if k not in section.extra_fields})
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "entry"
            problems.append(Problem(Severity.ERROR, where, f"{field}: {error['msg']}"))
    return problems


def check_catalog(data: Any) -> list[Problem]:
    """Every problem of a parsed catalog, in file order (errors and notes)."""
    if data is None:
        return [Problem(Severity.ERROR, "file", "empty: a catalog is a mapping with lists of entries")]
    if not isinstance(data, Mapping):
        return [Problem(Severity.ERROR, "file", f"a catalog is a mapping, not a {type(data).__name__}")]
    known = [s.name for s in SECTIONS]
    problems = [
        Problem(Severity.ERROR, "file", f"unknown section {name!r} (known: {', '.join(known)})")
        for name in data
        if name not in known
    ]
    names: dict[str, dict[str, str]] = {s.name: {} for s in SECTIONS}  # section → natural key → where
    backend_types: dict[str, str] = {}
    for section in SECTIONS:
        entries = data.get(section.name)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.append(Problem(Severity.ERROR, section.name, f"a list of entries, not a {type(entries).__name__}"))
            continue
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                where = f"{section.name}[{index}]"
                problems.append(Problem(Severity.ERROR, where, f"an entry is a mapping, not a {type(entry).__name__}"))
                continue
            where = _label(section, index, entry)
            problems += _model_problems(section, where, entry)
            key = entry.get(section.natural_key)
            if isinstance(key, str):
                if key in names[section.name]:
                    first = names[section.name][key]
                    problems.append(
                        Problem(Severity.ERROR, where, f"{section.natural_key} {key!r} again (first: {first})")
                    )
                names[section.name][key] = where
            problems += _entry_problems(section.name, where, entry, backend_types)
    problems += _reference_problems(data, names)
    return problems


def _entry_problems(section: str, where: str, entry: Mapping[str, Any], backend_types: dict[str, str]) -> list[Problem]:
    problems: list[Problem] = []
    if section == "execution_backends":
        kind = entry.get("type")
        if isinstance(kind, str):
            if kind not in ENGINE_ALIASES:
                # Stored as the legacy API stores it; a submit to its contents answers that the type is unsupported.
                types = ", ".join(ENGINE_ALIASES)
                problems.append(Problem(Severity.NOTE, where, f"type {kind!r} is no engine here (known: {types})"))
            else:
                engine = canonical_engine(kind)
                if isinstance(slug := entry.get("slug"), str):
                    backend_types[slug] = engine
                properties = entry.get("properties") or {}
                if isinstance(properties, Mapping):
                    for name in properties:
                        if name not in READ_PROPERTIES[engine]:
                            problems.append(Problem(Severity.NOTE, where, f"property {name!r} is not read by {engine}"))
    elif section == "course_members" and not entry.get("id"):
        problems.append(Problem(Severity.NOTE, where, "no id: every load adds a new member"))
    elif section == "course_contents" and _unrouted_assignment(entry):
        problems.append(Problem(Severity.NOTE, where, "no execution_backend: submits to it answer 400"))
    return problems


def _unrouted_assignment(entry: Mapping[str, Any]) -> bool:
    assignment = entry.get("kind", "assignment") == "assignment"
    return assignment and not entry.get("execution_backend") and not entry.get("execution_backend_id")


def _reference_problems(data: Mapping[str, Any], names: dict[str, dict[str, str]]) -> list[Problem]:
    problems: list[Problem] = []
    for index, entry in enumerate(data.get("course_contents") or []):
        ref = entry.get("execution_backend") if isinstance(entry, Mapping) else None
        if isinstance(ref, str) and ref not in names["execution_backends"]:
            where = _label(SECTIONS[1], index, entry)
            problems.append(
                Problem(Severity.NOTE, where, f"execution_backend {ref!r} is not in this file: it must be in the store")
            )
    for index, entry in enumerate(data.get("users") or []):
        members = entry.get("course_member_ids") if isinstance(entry, Mapping) else None
        for member in members if isinstance(members, list) else []:
            if member not in names["course_members"]:
                where = _label(SECTIONS[3], index, entry)
                problems.append(Problem(Severity.NOTE, where, f"course member {member!r} is not in this file"))
    return problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity is Severity.ERROR]
