"""The API answers as its OpenAPI spec says, for every operation: schemathesis over the whole spec (issue 24).

Run as an admin and as a student against a real gateway process (the embedded store, no engine needed): no
server error, every answer's status and body as declared (a 422 is FastAPI's `HTTPValidationError`, a list),
405 for a method a path does not declare. The example count is kept small (and the seed fixed) so the run takes
well under a minute; the command it runs is printed, to run it by hand with more examples.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store.catalog import load_catalog
from tests.service.server import GatewayServer, running_server
from tests.support.celery_worker import settings_from_env

PASSWORD = "fuzz-pw-1"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Few examples per operation: the point is every operation and every declared answer, not depth.
MAX_EXAMPLES = 3
SEED = 24


def _catalog() -> dict[str, Any]:
    return {
        "execution_backends": [{"slug": "celery-main", "type": "celery", "properties": {}}],
        "course_contents": [
            {
                "id": "cc-1",
                "path": "c.ex1",
                "directory": "c/ex1",
                "execution_backend": "celery-main",
                "reference_url": "https://git.example.org/ref.git",
                "reference_commit": "a" * 40,
            }  # fmt: skip
        ],
        "course_members": [{"id": "m-alice", "user_id": "u-alice", "repository_url": "https://git.example.org/a.git"}],
        "users": [
            {"username": "admin", "password": PASSWORD, "role": "admin"},
            {"username": "alice", "password": PASSWORD, "role": "student", "course_member_ids": ["m-alice"]},
        ],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    data = tmp_path_factory.mktemp("openapi")
    load_catalog(_catalog(), settings_from_env({"GATEWAY_DATA_DIR": str(data)}))
    with running_server({}, data) as running:
        yield running


def schemathesis_command(url: str, user: str) -> list[str]:
    return [
        str(SCHEMATHESIS), "run", f"{url}/openapi.json", f"--auth={user}:{PASSWORD}",
        "--checks=not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,unsupported_method",
        f"--max-examples={MAX_EXAMPLES}", f"--seed={SEED}", "--generation-deterministic",
        "--phases=examples,coverage,fuzzing", "--no-color", "--workers=1",
        "--request-timeout=20", "--continue-on-failure", "--warnings=off",
    ]  # fmt: skip


def test_every_operation_answers_as_the_spec_declares_to_an_admin_and_a_student(
    server: GatewayServer, tmp_path: Path
) -> None:
    """Both roles at once (two schemathesis processes): each must end with no failure of any check."""
    runs = {}
    for user in ("admin", "alice"):
        cmd = schemathesis_command(server.url, user)
        print("running:", " ".join(cmd))
        out = tmp_path / f"{user}.out"
        with open(out, "wb") as sink:
            runs[user] = (subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path), out)
    failed = {}
    for user, (process, out) in runs.items():
        code = process.wait(timeout=600)
        text = out.read_text(errors="replace")
        print(f"--- {user}: exit {code}\n{text[-3000:]}")
        if code != 0:
            failed[user] = text[-6000:]
    assert not failed, failed
