"""A git credential is bound to the host(s) it was registered for, and is sent nowhere else.

The rule both sides apply (the gateway when it builds a job, the worker before git runs): a credential may go
with a URL only when the URL is `https` and its host is one of the credential's hosts. Plain `http` never
carries one (it would cross the network in clear), nor does any other host (a student's own server), a local
path, or `ssh` (ssh authenticates with the operator's keys, not with a stored secret). A credential's hosts
are the host of the repository URL it was registered with (a course member's `repository_url`, a content's
`reference_url`), carried in the job as `Repository.credential_hosts`, and any `hosts` the secret store's
entry lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

CARRYING_SCHEMES = frozenset({"https"})


def host_of(url: str | None) -> str | None:
    """The lower-cased host of a `scheme://` URL; None for a local path, an scp-like ssh address or garbage."""
    if not url or "://" not in url:
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.lower().rstrip(".") if host else None


def registered_hosts(registered_url: str | None) -> list[str]:
    """The hosts a credential registered with `registered_url` is bound to (its host, when it has one)."""
    host = host_of(registered_url)
    return [host] if host else []


def may_carry(url: str, hosts: Iterable[str]) -> bool:
    """Whether a credential bound to `hosts` may be sent with `url`."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    host = host_of(url)
    return scheme in CARRYING_SCHEMES and host is not None and host in {h.lower().rstrip(".") for h in hosts}
