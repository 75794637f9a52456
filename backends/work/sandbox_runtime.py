"""What a sandboxed run executes: an interpreter it can read and a runtime dir with pytest and nothing else.

Made once per worker process, not per job. The runtime dir is a copy of the distributions pytest needs
(pytest, pluggy, iniconfig, packaging, pygments: found from pytest's own requirements) into
`<sandbox base>/gateway-runtime-<hash>/site`, root-owned and read-only to runs. Runs import pytest from there
and never see the worker's virtualenv, so none of its pytest plugins (anyio, pytest-timeout, ...) load into a
student's run, and the venv may live where the sandbox user cannot read. The interpreter is the first of
`settings.sandbox_python`, this one's base interpreter, `/usr/bin/pythonX.Y`, `/usr/local/bin/pythonX.Y` that
actually starts inside the sandbox (`probe`), so a base interpreter under `/root` is skipped, not half-used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

_ROOTS = ("pytest",)


@dataclass(frozen=True)
class Runtime:
    """An interpreter (absolute path) and the read-only dir holding pytest and its dependencies."""

    python: str
    site: Path


def _distributions() -> list[metadata.Distribution]:
    """pytest and everything it requires on this platform, each once."""
    env = default_environment()
    seen: dict[str, metadata.Distribution] = {}
    todo = list(_ROOTS)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        dist = metadata.distribution(name)
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def distribution_versions() -> list[tuple[str, str]]:
    """(name, version) of every distribution a run can import, sorted by name (the report's environment)."""
    return sorted((d.metadata["Name"].lower(), d.version) for d in _distributions())


def _copy_distribution(dist: metadata.Distribution, site: Path) -> None:
    for entry in dist.files or []:
        rel = Path(str(entry))
        if rel.is_absolute() or ".." in rel.parts or "__pycache__" in rel.parts or rel.suffix == ".pyc":
            continue
        src = Path(str(dist.locate_file(entry)))
        if not src.is_file():
            continue
        dst = site / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def build_site(base: Path) -> Path:
    """The runtime dir under `base`, made on first use (atomically: concurrent workers race harmlessly)."""
    dists = sorted(_distributions(), key=lambda d: d.metadata["Name"].lower())
    tag = ";".join(f"{d.metadata['Name']}={d.version}" for d in dists) + f";py{sys.version_info[:2]}"
    final = base / f"gateway-runtime-{hashlib.sha256(tag.encode()).hexdigest()[:12]}"
    if (final / "site").is_dir():
        return final / "site"
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gateway-runtime-", dir=base))
    for dist in dists:
        _copy_distribution(dist, staging / "site")
    for dirpath, _dirnames, filenames in os.walk(staging):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    try:
        staging.rename(final)
    except OSError:  # another worker made it first
        shutil.rmtree(staging, ignore_errors=True)
    return final / "site"


def interpreter_candidates(configured: str | None) -> list[str]:
    """Interpreters to try, best first; all of this one's major.minor (pytest's copy is version-agnostic)."""
    if configured:
        return [configured]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = [os.path.realpath(getattr(sys, "_base_executable", sys.executable))]
    for name in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if os.path.isfile(name) and os.path.realpath(name) not in found:
            found.append(os.path.realpath(name))
    return found


def interpreter_prefix(python: str) -> Path:
    """The tree an interpreter needs (its `bin/..`); mounted read-only into the sandbox."""
    return Path(python).resolve().parent.parent
