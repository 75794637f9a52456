"""The demo catalog `gateway up` loads: the bundled example assignment on both engines, a student and an admin.

Why a module of its own: `gateway up` must leave a first-time user one copy-paste away from a finished job on
either engine, and restarting it must change nothing (same ids, same passwords, same commits). Everything here
is therefore deterministic or remembered under the data folder:

- the example repositories come from `materialize_example` (fixed SHAs, reused when present);
- the passwords are generated once and kept in `<data>/demo-credentials.json` (mode 0600);
- the catalog is upserted by id/slug/username through `load_catalog`, which is idempotent.

Both course contents test the same directory (`week1/ex1`: the example only has that one), so a submit names
its content by `course_content_path`; `directory` alone would be ambiguous between the two engines.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.examples import ExampleRepos, materialize_example
from common.engines import Engine
from common.legacy import DEFAULT_CONTENT_TYPE
from common.settings import Settings
from gateway.schemas import Role

STUDENT = "demo-student"
ADMIN = "demo-admin"
MEMBER_ID = "demo-member"
PREFECT_DEPLOYMENT = "test-assignment/system"


@dataclass(frozen=True)
class DemoContent:
    """One course content of the demo and the engine its backend runs on."""

    engine: Engine
    content_id: str
    path: str
    backend_slug: str


CONTENTS = (
    DemoContent(Engine.CELERY, "demo-week1-ex1-celery", "week1.ex1", "demo-celery"),
    DemoContent(Engine.PREFECT, "demo-week1-ex1-prefect", "week1.ex1_prefect", "demo-prefect"),
)


@dataclass(frozen=True)
class DemoCredentials:
    student_password: str
    admin_password: str


@dataclass(frozen=True)
class Demo:
    """What was loaded: enough to print (and for a test to run) the copy-paste requests."""

    repos: ExampleRepos
    credentials: DemoCredentials

    @property
    def student_auth(self) -> tuple[str, str]:
        return (STUDENT, self.credentials.student_password)

    @property
    def admin_auth(self) -> tuple[str, str]:
        return (ADMIN, self.credentials.admin_password)

    def submit_body(self, content: DemoContent) -> dict[str, Any]:
        """The legacy `TestCreate` body for the passing student's commit on `content`."""
        return {
            "course_content_path": content.path,
            "directory": self.repos.path,
            "version_identifier": self.repos.passing_commit,
        }


def demo_credentials(data_dir: Path) -> DemoCredentials:
    """The demo passwords: made once per data folder, then read back (so restarts keep working logins)."""
    path = data_dir / "demo-credentials.json"
    if path.exists():
        stored = json.loads(path.read_text())
        return DemoCredentials(stored["student_password"], stored["admin_password"])
    creds = DemoCredentials(secrets.token_urlsafe(12), secrets.token_urlsafe(12))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"student_password": creds.student_password, "admin_password": creds.admin_password}, out)
    return creds


def demo_catalog(repos: ExampleRepos, creds: DemoCredentials) -> dict[str, Any]:
    """The catalog in `load_catalog`'s format: one backend per engine, one content on each, one student."""
    return {
        "execution_backends": [
            {"slug": "demo-celery", "type": "celery", "properties": {}},
            {"slug": "demo-prefect", "type": "prefect", "properties": {"deployment": PREFECT_DEPLOYMENT}},
        ],
        "course_contents": [
            {
                "id": content.content_id,
                "path": content.path,
                "directory": repos.path,
                "execution_backend": content.backend_slug,
                "course_content_type_id": DEFAULT_CONTENT_TYPE,  # the legacy result models require one
                "reference_url": repos.reference_url,
                "reference_commit": repos.reference_commit,
            }
            for content in CONTENTS
        ],
        "course_members": [{"id": MEMBER_ID, "user_id": STUDENT, "repository_url": repos.passing_url}],
        "users": [
            {"username": ADMIN, "password": creds.admin_password, "role": Role.ADMIN},
            {
                "username": STUDENT,
                "password": creds.student_password,
                "role": Role.STUDENT,
                "course_member_ids": [MEMBER_ID],
            },
        ],
    }


def load_demo(settings: Settings) -> Demo:
    """Materialize the example under `<data>/example` and upsert the demo catalog (idempotent)."""
    from gateway.store.catalog import load_catalog

    repos = materialize_example(settings.data_dir / "example")
    creds = demo_credentials(settings.data_dir)
    load_catalog(demo_catalog(repos, creds), settings)
    return Demo(repos, creds)


def curl_lines(demo: Demo, base_url: str, content: DemoContent) -> list[str]:
    """Copy-paste shell lines: submit (keeping the result id in a variable), poll the status, read the result.

    Plain `curl` and `python3` (for the id) only, so they work on any machine with a shell.
    """
    var = f"{content.engine.upper()}_ID"
    user = shlex.quote(f"{STUDENT}:{demo.credentials.student_password}")
    body = shlex.quote(json.dumps(demo.submit_body(content), separators=(",", ":")))
    # Shows the whole answer (on stderr) and keeps only the id; an error answer shows its `detail` instead.
    pick_id = shlex.quote(
        'import json,sys; r=json.load(sys.stdin); print(json.dumps(r), file=sys.stderr); print(r.get("id", ""))'
    )
    submit = f"curl -s -u {user} -H 'Content-Type: application/json' -d {body} {base_url}/api/tests"
    return [
        f"{var}=$({submit} | python3 -c {pick_id})",
        f"curl -s -w '\\n' -u {user} {base_url}/api/results/${var}/status",
        f"curl -s -w '\\n' -u {user} {base_url}/api/results/${var}",
    ]
