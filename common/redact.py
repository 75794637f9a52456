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
