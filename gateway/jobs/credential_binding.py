"""Where a submitted job's repositories may point, and which of them take a credential (issue 23, part 5).

The rule itself is `common.credential_binding` (the worker applies it again before git runs). Here: a student
may name in `provider_url` only an `https` or `ssh` host that is a configured provider
(`GATEWAY_STUDENT_PROVIDERS`) or the host of their own registered repository; anything else is a 400 at
submit. An empty list of providers no longer means "any host". A job's repository gets its credential only
when `may_carry` says so, with the hosts it is bound to.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from common.credential_binding import host_of, may_carry, registered_hosts
from common.legacy import Repository
from common.redact import strip_credentials
from gateway.jobs.errors import BadJobRequest

STUDENT_SCHEMES = ("https", "ssh")


def check_student_provider(provider_url: str | None, providers: list[str], registered_url: str | None) -> None:
    """Refuse (400) a student's `provider_url` whose scheme is not https/ssh or whose host is not allowed."""
    if not provider_url:
        return
    if urlsplit(provider_url).scheme.lower() not in STUDENT_SCHEMES:
        raise BadJobRequest("provider_url must be an https or ssh repository provider URL")
    allowed = {h.lower().rstrip(".") for h in providers} | set(registered_hosts(registered_url))
    if host_of(provider_url) not in allowed:
        raise BadJobRequest("provider_url is not one of the configured repository providers")


def bound(repo: Repository, credential: str | None, registered_url: str | None) -> Repository:
    """`repo` with `credential` and the hosts it is bound to, or with no credential when it may not go there.

    The registered repository itself, when it is a path on the worker (no host), keeps the credential's name
    (the legacy flow reads it as `token`); the worker sends no secret to a path."""
    hosts = registered_hosts(registered_url)
    if credential and may_carry(repo.url, hosts):
        return repo.model_copy(update={"credential": credential, "credential_hosts": hosts})
    if credential and host_of(repo.url) is None and registered_url and repo.url == strip_credentials(registered_url):
        return repo.model_copy(update={"credential": credential, "credential_hosts": []})
    return repo.model_copy(update={"credential": None, "credential_hosts": None})
