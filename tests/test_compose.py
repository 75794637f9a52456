"""What can be checked of the compose file and the image without a Docker engine (none runs on our machines).

The file parses (anchors and merge keys resolved), every reference resolves (services, volumes, files), every
command of a gateway-image service exists in the installed entry points with the options it is given, exactly
one process runs Celery beat, Flower has a login, the image's sandbox user is the one the setting names, and
the image installs every system tool the settings it runs with require (bubblewrap for the default sandbox).
What this cannot show (an image that builds, containers that start and talk) is listed in docs/operations.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from common.settings import SandboxIsolation, Settings
from gateway.cli import app

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
OURS = {name: svc for name, svc in SERVICES.items() if svc.get("image") == "ctutor-gateway:latest"}


def test_references_resolve() -> None:
    assert OURS, "no service runs the gateway image"
    for name, svc in SERVICES.items():
        for needed in svc.get("depends_on", {}):
            assert needed in SERVICES, f"{name} depends on unknown {needed}"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in COMPOSE["volumes"], f"{name} mounts undeclared volume {source}"


def test_interpolations_are_well_formed() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for match in re.finditer(r"\$\{([^}]*)\}", text):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?", match.group(1)), match.group(0)


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_gateway_command_exists_with_its_options(name: str) -> None:
    command = OURS[name]["command"]
    if command[0] == "gateway":
        done = CliRunner().invoke(app, [*command[1:], "--help"])
        assert done.exit_code == 0, f"{name}: {command}\n{done.output}"
    else:
        assert command[:3] == ["celery", "-A", "backends.celery.app"], command
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "backends.celery.app", command[3], "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr


def test_one_beat() -> None:
    def runs_beat(svc: dict[str, Any]) -> bool:
        command = svc.get("command", [])
        embedded = command[:3] == ["gateway", "worker", "start"] and "--no-beat" not in command
        return embedded or (command[:1] == ["celery"] and "beat" in command)

    assert [name for name, svc in SERVICES.items() if runs_beat(svc)] == ["celery-beat"]


def test_flower_has_a_login_and_keeps_it_off_the_command_line() -> None:
    flower = SERVICES["flower"]
    login = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_USER:-\w+\}:\$\{FLOWER_PASSWORD:-[^}]+\}", login)
    assert not any("auth" in part for part in flower["command"])


def test_image_sandbox_user_agrees_with_the_setting_and_copies_what_exists() -> None:
    created = re.search(r"useradd [^\n]*?(\w+)\s*$", DOCKERFILE, re.MULTILINE)
    assert created is not None
    assert re.search(rf"SANDBOX_USER={created.group(1)}\b", DOCKERFILE)
    for source in re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.MULTILINE):
        for part in source.split():
            assert (ROOT / part).exists(), f"COPY of missing {part}"
    assert "gateway" in (ROOT / "pyproject.toml").read_text().split("[project.scripts]")[1].split("[")[0]


@pytest.mark.parametrize("example", ["prometheus-alerts.yaml", "keda-scaledobject.yaml"])
def test_doc_examples_parse_and_name_metrics_that_exist(example: str) -> None:
    text = (ROOT / "docs" / "examples" / example).read_text()
    yaml.safe_load(text)
    sources = "".join((ROOT / "gateway" / part / "metrics.py").read_text() for part in ("engines", "api"))
    for name in set(re.findall(r"\b(gateway_[a-z_]+?)(?:_total|_bucket|_count|_sum)?\b", text)):
        assert f'"{name}"' in sources, f"{example} names {name}, which no code exports"


# The system tools the worker runs, by the Debian package that ships each (the image is Debian-based).
DEBIAN_PACKAGE = {"git": "git", "bwrap": "bubblewrap"}
GRADING_COMMANDS = (["gateway", "worker", "start"], ["gateway", "prefect", "serve"])


def _image_settings(svc: dict[str, Any]) -> Settings:
    """The settings a service of the image runs with: the Dockerfile's ENV, then the compose environment."""
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.MULTILINE):
        env.update(re.findall(r"(\w+)=(\S+)", block))
    env.update({k: str(v) for k, v in svc.get("environment", {}).items()})
    fields = {name: env[name.upper()] for name in Settings.model_fields if name.upper() in env}
    return Settings(_env_file=None, **fields)


def _tools_required(settings: Settings) -> set[str]:
    tools = {"git"}  # checkouts of the student's and the reference repository
    if settings.sandbox_isolation is SandboxIsolation.BWRAP:
        tools.add("bwrap")
    return tools


def _apt_packages() -> set[str]:
    installs = re.findall(r"apt-get install ([^\n&]*)", DOCKERFILE)
    assert installs, "the Dockerfile installs no system package"
    return {word for line in installs for word in line.replace("\\", " ").split() if not word.startswith("-")}


@pytest.mark.parametrize("name", sorted(n for n, s in OURS.items() if s["command"][:3] in GRADING_COMMANDS))
def test_the_image_has_the_tools_its_graders_settings_require(name: str) -> None:
    settings = _image_settings(OURS[name])
    assert settings.sandbox_isolation is SandboxIsolation.BWRAP, "the image grades in the default sandbox"
    missing = {DEBIAN_PACKAGE[tool] for tool in _tools_required(settings)} - _apt_packages()
    assert not missing, f"{name} needs {sorted(missing)}, which the Dockerfile does not install"


def test_the_graders_may_create_the_sandboxes_namespaces() -> None:
    """bubblewrap in a container: Docker's default seccomp and AppArmor profiles forbid its namespaces and mounts."""
    graders = {n for n, s in OURS.items() if s["command"][:3] in GRADING_COMMANDS}
    assert graders == {"celery-system-worker", "prefect-runner"}, graders
    for name, svc in OURS.items():
        opts = set(svc.get("security_opt", []))
        if name in graders:
            assert "SYS_ADMIN" in svc.get("cap_add", []), name
            assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= opts, name
        else:
            assert not opts and not svc.get("cap_add"), f"{name} does not grade and needs no relaxed profile"


def test_the_prefect_server_requires_the_auth_string_every_gateway_process_sends() -> None:
    server = SERVICES["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert re.fullmatch(r"\$\{PREFECT_AUTH_STRING:-[^}]+\}", server), server
    for name, svc in OURS.items():
        assert svc["environment"]["PREFECT_API_AUTH_STRING"] == server, name
    # The healthcheck stays unauthenticated: Prefect exempts GET /api/health.
    assert "/api/health" in " ".join(SERVICES["prefect-server"]["healthcheck"]["test"])
