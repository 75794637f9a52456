"""Flower in `gateway up`: Celery's own dashboard on the same broker, behind HTTP basic auth.

The login is `flower` with a password made once per data folder (`<data>/flower-credentials.json`, mode 0600),
or `FLOWER_BASIC_AUTH` (`user:password`) when set. The secret reaches Flower through its environment
(`FLOWER_BASIC_AUTH`), never its command line, which any local user can read in `ps`.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass

import httpx

from common.settings import Settings
from gateway.devstack.supervisor import ServiceSpec

USER = "flower"
DEFAULT_PORT = 5555


@dataclass(frozen=True)
class FlowerLogin:
    user: str
    password: str

    @property
    def basic_auth(self) -> str:
        return f"{self.user}:{self.password}"


def flower_login(settings: Settings) -> FlowerLogin:
    if settings.flower_basic_auth is not None:
        user, _, password = settings.flower_basic_auth.get_secret_value().partition(":")
        return FlowerLogin(user, password)
    path = settings.data_dir / "flower-credentials.json"
    if path.exists():
        return FlowerLogin(USER, json.loads(path.read_text())["password"])
    login = FlowerLogin(USER, secrets.token_urlsafe(12))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"user": login.user, "password": login.password}, out)
    return login


def flower_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - only for display
    return f"http://{shown}:{port}"


def flower_spec(host: str, port: int, login: FlowerLogin) -> ServiceSpec:
    """`celery flower` with this interpreter, on the app the worker runs (so the same broker and queues)."""
    argv = [sys.executable, "-m", "celery", "-A", "backends.celery.app", "flower"]
    argv += [f"--address={host}", f"--port={port}", "--purge_offline_workers=60"]
    url = flower_url(host, port)
    return ServiceSpec(
        "flower",
        argv,
        lambda: httpx.get(f"{url}/healthcheck", timeout=2.0).status_code == 200,
        env={"FLOWER_BASIC_AUTH": login.basic_auth, "FLOWER_UNAUTHENTICATED_API": "false"},
        start_timeout=90,
    )
