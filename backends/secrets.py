"""The secret store: git credentials resolved by NAME on the worker, never carried in job parameters.

A job's `Repository.credential` names a secret; the worker looks it up here, from the environment variable
`{settings.secret_env_prefix}<NAME>` first, then from `settings.secrets_file` (a YAML or JSON map). So a secret
never lands in `celery_taskmeta.kwargs` or Prefect parameters: only its name does.

A value is either a token string (`"glpat-..."`), `"user:token"`, or in the file a map
`{username: ..., password: ...}` (`token` is accepted for `password`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.settings import Settings, get_settings

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


class SecretError(LookupError):
    """A credential name that is malformed or not in the store (the message never holds a secret value)."""


@dataclass(frozen=True)
class Credential:
    """A username and a secret; `repr` hides the secret so it never reaches a log by accident."""

    username: str | None
    password: str = field(repr=False)
    hosts: tuple[str, ...] = ()  # hosts the store binds it to, besides those the job names (`credential_hosts`)


def _from_value(value: object, name: str) -> Credential:
    if isinstance(value, str):
        user, sep, secret = value.partition(":")
        if sep and user and secret and "/" not in user:
            return Credential(user, secret)
        return Credential(None, value)
    if isinstance(value, dict):
        secret = value.get("password", value.get("token"))
        if isinstance(secret, str) and secret:
            user = value.get("username", value.get("user"))
            hosts = value.get("hosts") or ()
            hosts = (hosts,) if isinstance(hosts, str) else tuple(str(h) for h in hosts)
            return Credential(str(user) if user else None, secret, hosts)
    raise SecretError(f"secret {name!r} has an unusable shape (want a string or {{username, password, hosts}})")


def _load_file(path: Path) -> dict[str, object]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SecretError(f"secrets file {path} is not a map of name to secret")
    return {str(k): v for k, v in data.items()}


def resolve_credential(name: str, settings: Settings | None = None) -> Credential:
    """The credential stored under `name`; raises `SecretError` when the name is malformed or unknown."""
    settings = settings or get_settings()
    if not _NAME.match(name):
        raise SecretError("credential name must match [A-Za-z0-9_.-]{1,100}")
    env_value = os.environ.get(f"{settings.secret_env_prefix}{name}")
    if env_value is None:
        env_value = os.environ.get(f"{settings.secret_env_prefix}{name.upper().replace('-', '_').replace('.', '_')}")
    if env_value:
        return _from_value(env_value, name)
    if settings.secrets_file is not None:
        path = settings.secrets_file.expanduser()
        if not path.is_file():
            raise SecretError(f"secrets file {path} does not exist")
        store = _load_file(path)
        if name in store:
            return _from_value(store[name], name)
    raise SecretError(f"no secret named {name!r} in the secret store")
