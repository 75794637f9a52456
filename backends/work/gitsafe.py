"""Validation of everything from a job that reaches git's command line, done BEFORE git runs.

Git reads `ext::<cmd>` as "run this command", `fd::` as raw file descriptors, and any argument that starts with
`-` as an option (`--upload-pack=...`). A job comes from outside, so each URL, ref, commit and path is checked
here against a small allow-list; a refused value raises `BadJobError` and no process is started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit, urlunsplit

from backends.work.errors import BadJobError
from common.redact import redact_url

_HEX_SHA = re.compile(r"^[0-9a-fA-F]{7,40}$")
_SAFE_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./+-]{0,254}$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"^(?:[^@/:]+@)?[^/:]+:")
# Protocol names as GIT_ALLOW_PROTOCOL spells them; "local" (a plain path) is git's "file" transport.
_GIT_PROTOCOL = {"https": "https", "http": "http", "ssh": "ssh", "file": "file", "local": "file", "git": "git"}


@dataclass(frozen=True)
class SafeUrl:
    """A URL git may be given: `url` without any embedded password, `kind` is its scheme (or "local")."""

    url: str
    kind: str
    had_password: bool = False


def _refuse(what: str, value: str, why: str) -> BadJobError:
    return BadJobError(f"refused {what} {redact_url(value)!r}: {why}")


def _no_control(what: str, value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _refuse(what, value.encode("unicode_escape").decode(), "contains control characters")


def validate_url(url: str, allowed: list[str]) -> SafeUrl:
    """Classify `url` the way git would and refuse transports, options and schemes outside `allowed`."""
    if not isinstance(url, str) or not url.strip():
        raise BadJobError("refused repository URL: empty")
    _no_control("repository URL", url)
    if url.startswith("-"):
        raise _refuse("repository URL", url, "starts with '-' (git would read it as an option)")
    if _TRANSPORT_HELPER.match(url):
        raise _refuse("repository URL", url, "remote-helper transports such as ext:: and fd:: are never allowed")
    allowed_set = {a.lower() for a in allowed}
    scheme_match = _SCHEME.match(url)
    if scheme_match:
        kind = scheme_match.group(1).lower()
        if kind not in allowed_set or kind == "local":
            raise _refuse("repository URL", url, f"scheme {kind!r} is not in allowed_git_schemes")
        parts = urlsplit(url)
        host = parts.hostname or ""
        if host.startswith("-") or (parts.username or "").startswith("-"):
            raise _refuse("repository URL", url, "host or user starts with '-'")
        if kind != "file" and not host:
            raise _refuse("repository URL", url, "no host")
        had_password = parts.password is not None
        if had_password:
            netloc = (parts.username or "") + "@" + host + (f":{parts.port}" if parts.port else "")
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        return SafeUrl(url, kind, had_password)
    if _SCP_LIKE.match(url):
        if "ssh" not in allowed_set:
            raise _refuse("repository URL", url, "scp-like ssh address but 'ssh' is not in allowed_git_schemes")
        host = url.split(":", 1)[0].rpartition("@")[2]
        if host.startswith("-"):
            raise _refuse("repository URL", url, "host starts with '-'")
        return SafeUrl(url, "ssh")
    if "local" not in allowed_set:
        raise _refuse("repository URL", url, "local paths are not in allowed_git_schemes")
    return SafeUrl(url, "local")


def validate_commit(value: str, what: str = "commit") -> str:
    """A hex SHA (7-40 digits) or a plain ref name: nothing git could read as an option or a revision expression."""
    if not isinstance(value, str) or not value:
        raise BadJobError(f"refused {what}: empty")
    _no_control(what, value)
    if value.startswith("-"):
        raise _refuse(what, value, "starts with '-' (git would read it as an option)")
    if _HEX_SHA.match(value):
        return value.lower()
    if (
        not _SAFE_REF.match(value)
        or ".." in value
        or "//" in value
        or value.endswith((".lock", "/", "."))
        or "/." in value
    ):
        raise _refuse(what, value, "not a hex SHA (7-40 digits) or a plain ref name")
    return value


def validate_path(value: str | None) -> str:
    """The assignment directory: relative, inside the repository, no `..`, nothing option-like."""
    if value is None or value.strip() in ("", "."):
        return "."
    _no_control("path", value)
    if value.startswith("-"):
        raise _refuse("path", value, "starts with '-'")
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts or "\\" in value:
        raise _refuse("path", value, "must be a relative path inside the repository")
    return str(pure)


def git_protocols(allowed: list[str]) -> str:
    """The `GIT_ALLOW_PROTOCOL` value for the allowed schemes (git refuses every other transport itself too)."""
    names = sorted({_GIT_PROTOCOL[a.lower()] for a in allowed if a.lower() in _GIT_PROTOCOL})
    return ":".join(names)
