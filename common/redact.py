"""Show URLs without their secrets: every place that prints or logs a URL goes through here."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]*)@")


def redact_url(url: str | None) -> str:
    """`redis://:s3cret@host:6379/0` → `redis://:***@host:6379/0`; a URL without a password is unchanged."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact every `scheme://user:password@` found inside free text (error messages, log lines)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


# ------------------------------------------------------------------------------------------- secrets at rest
# Keys whose value is a secret wherever they appear in job parameters or task kwargs: `token`, `Token`,
# `access_token`, `password`, `client_secret`, `api_key`, `private_key`, `authorization`... A `credential` is the
# *name* of a secret (resolved on the worker) and is not one.
SECRET_KEY = re.compile(
    r"(?i)(?:^|[_\-.])(?:token|password|passwd|pwd|secret|api[_\-]?key|private[_\-]?key|authorization)$"
)
MASK = "***"
_WEB_SCHEMES = ("http", "https")


def is_secret_key(name: object) -> bool:
    return isinstance(name, str) and SECRET_KEY.search(name) is not None


def strip_credentials(url: str) -> str:
    """The URL without what authenticates: `https://user:tok@host/x` → `https://host/x`.

    Web URLs lose the whole user part (a token is often sent as the user name alone); other schemes keep the
    user (`ssh://git@host` names an account, not a secret) and lose the password. Credentials are resolved by
    name on the worker instead (`backends.secrets`).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return strip_credentials_in_text(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username
    if parts.scheme.lower() not in _WEB_SCHEMES and user:
        host = f"{user}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


_ANY_USERINFO = re.compile(r"(?P<scheme>(?P<name>[a-zA-Z][a-zA-Z0-9+.\-]*)://)(?P<user>[^:@/\s]*)(?::[^@/\s]*)?@")


def _strip_match(match: re.Match[str]) -> str:
    if match["name"].lower() in _WEB_SCHEMES or not match["user"]:
        return match["scheme"]
    return f"{match['scheme']}{match['user']}@"


def strip_credentials_in_text(text: str) -> str:
    """`strip_credentials` for every URL inside free text (stored values and messages, not just logs)."""
    return _ANY_USERINFO.sub(_strip_match, text)


def find_secret_key(value: object, path: str = "") -> str | None:
    """The path of the first secret-looking key with a non-empty value inside `value`, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if is_secret_key(key) and item not in (None, "", {}, []):
                return where
            found = find_secret_key(item, where)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_secret_key(item, f"{path}[{index}]")
            if found:
                return found
    return None


def scrub(value: object) -> object:
    """A copy fit to store: secret-looking keys masked, credentials stripped from URLs in every string."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else scrub(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, str) and "://" in value:
        return strip_credentials_in_text(value)
    return value
