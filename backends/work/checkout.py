"""Fetch one repository at its exact commit into a fresh directory, with git locked down.

Every value from the job is validated first (`gitsafe`); git then runs with: `GIT_ALLOW_PROTOCOL` set to the
allowed schemes, no system or global config (no `url.insteadOf`, credential helpers or hooks from the host),
hooks disabled, no terminal prompt, and `--` / `--end-of-options` before every job-supplied argument.
A credential is resolved by name from the secret store and handed to git through `GIT_ASKPASS` (a tiny script
reading git's own environment), never on a command line, never in the job, never in a log; and only when the
URL is https to a host the credential is bound to (`common.credential_binding`): whatever the job says, git
gets no credential for another host, for plain http or for a path.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backends.secrets import Credential, SecretError, resolve_credential
from backends.work.errors import BadJobError, InfrastructureError
from backends.work.gitsafe import SafeUrl, git_protocols, validate_commit, validate_path, validate_url
from common.credential_binding import may_carry
from common.legacy import Repository
from common.redact import redact_text
from common.settings import Settings

log = logging.getLogger(__name__)

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_GIT_TIMEOUT = 300

_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$GATEWAY_GIT_USERNAME" ;;
  *) printf '%s\\n' "$GATEWAY_GIT_PASSWORD" ;;
esac
"""


@dataclass(frozen=True)
class CheckoutPlan:
    """A repository, validated: safe to hand to git."""

    role: str  # "student" or "reference": used in messages only
    url: SafeUrl
    commit: str
    path: str
    credential: str | None
    credential_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checkout:
    """A checked-out tree: `root` is the work tree, `commit` the full SHA that was checked out."""

    root: Path
    commit: str
    path: str

    @property
    def assignment_dir(self) -> Path:
        return self.root / self.path


def plan_checkout(repo: Repository, role: str, settings: Settings) -> CheckoutPlan:
    """Validate one repository of a job; raises `BadJobError` before anything runs. Warns about a job token."""
    if repo.token:
        # The token's value is never logged: only the fact that one was given.
        log.warning("ignoring a token given inside the job for the %s repository: credentials come from the "
                    "secret store by name", role)  # fmt: skip
    url = validate_url(repo.url, settings.allowed_git_schemes)
    if url.had_password:
        log.warning("ignoring a password embedded in the %s repository URL: credentials come from the secret "
                    "store by name", role)  # fmt: skip
    if url.kind == "local":
        url = SafeUrl(str(Path(url.url).expanduser().resolve()), "local")
    commit = validate_commit(repo.commit or repo.branch or "main", "commit" if repo.commit else "branch")
    hosts = tuple(repo.credential_hosts or ())
    return CheckoutPlan(role, url, commit, validate_path(repo.path), repo.credential, hosts)


def _git_env(settings: Settings, home: Path, cred: Credential | None, askpass: Path | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C",
        "LC_ALL": "C",
        "GIT_ALLOW_PROTOCOL": git_protocols(settings.allowed_git_schemes),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "GCM_INTERACTIVE": "never",
    }
    if settings.git_ssl_ca_file is not None:
        env["GIT_SSL_CAINFO"] = str(settings.git_ssl_ca_file)
    # ssh needs the agent or the operator's keys: the agent socket is not a secret value.
    if "SSH_AUTH_SOCK" in os.environ:
        env["SSH_AUTH_SOCK"] = os.environ["SSH_AUTH_SOCK"]
    if cred is not None and askpass is not None:
        env["GIT_ASKPASS"] = str(askpass)
        env["GATEWAY_GIT_USERNAME"] = cred.username or "oauth2"
        env["GATEWAY_GIT_PASSWORD"] = cred.password
    return env


def _git(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = ["git", "-c", "core.hooksPath=/dev/null", "-c", "protocol.version=2", "-c", "core.fsmonitor=false"]
    return subprocess.run(
        base + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=_GIT_TIMEOUT, check=False
    )


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return redact_text(lines[-1]) if lines else "no output"


@contextmanager
def git_session(settings: Settings, cred: Credential | None) -> Iterator[dict[str, str]]:
    """The environment for git calls: a private HOME (with the askpass helper when there is a credential)."""
    with tempfile.TemporaryDirectory(prefix="gateway-git-") as private:
        home = Path(private)
        askpass = None
        if cred is not None:
            askpass = home / "askpass.sh"
            askpass.write_text(_ASKPASS)
            askpass.chmod(stat.S_IRWXU)
        yield _git_env(settings, home, cred, askpass)


def run_git(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run git with hooks off; callers put `--` before every job-supplied argument."""
    return _git(args, cwd, env)


def checkout(plan: CheckoutPlan, dest: Path, settings: Settings, shallow: bool = True) -> Checkout:
    """Fetch `plan` into the empty dir `dest` and check out its exact commit; `InfrastructureError` on failure.

    `shallow=False` fetches the commit's whole history (needed to push it somewhere else)."""
    cred: Credential | None = None
    if plan.credential:
        try:
            cred = resolve_credential(plan.credential, settings)
        except SecretError as exc:
            raise InfrastructureError(f"Credential for the {plan.role} repository not available: {exc}") from None
        if not may_carry(plan.url.url, (*plan.credential_hosts, *cred.hosts)):
            log.warning("not sending credential %r with the %s repository: the URL is not https to a host it is "
                        "bound to", plan.credential, plan.role)  # fmt: skip
            cred = None
    dest.mkdir(parents=True, exist_ok=False)
    with git_session(settings, cred) as env:
        sha = _fetch(plan, dest, env, shallow)
    return Checkout(dest, sha, plan.path)


def _fetch(plan: CheckoutPlan, dest: Path, env: dict[str, str], shallow: bool = True) -> str:
    failed = f"Git clone of {plan.role} repository failed"
    try:
        init = _git(["init", "-q", "--", str(dest)], dest.parent, env)
        if init.returncode != 0:
            raise InfrastructureError(f"{failed}: git init: {last_line(init.stderr)}")
        fetched_exact = False
        if _FULL_SHA.match(plan.commit):
            # Servers with protocol v2 (and GitHub/GitLab) serve a reachable commit by SHA: one shallow fetch.
            depth = ["--depth=1"] if shallow else []
            one = _git(["fetch", "-q", *depth, "--no-tags", "--", plan.url.url, plan.commit], dest, env)
            fetched_exact = one.returncode == 0
        if not fetched_exact:
            refspecs = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
            full = _git(["fetch", "-q", "--no-tags", "--", plan.url.url, *refspecs], dest, env)
            if full.returncode != 0:
                raise InfrastructureError(f"{failed}: {last_line(full.stderr)}")
        target = plan.commit
        if not _FULL_SHA.match(target) and not re.match(r"^[0-9a-f]{7,39}$", target):
            target = f"refs/remotes/origin/{target}"  # a branch name; tags resolve through their own refs
        rev = _git(["rev-parse", "-q", "--verify", "--end-of-options", f"{target}^{{commit}}"], dest, env)
        if rev.returncode != 0 and target.startswith("refs/remotes/origin/"):
            rev = _git(["rev-parse", "-q", "--verify", "--end-of-options", f"refs/tags/{plan.commit}^{{commit}}"],
                       dest, env)  # fmt: skip
        if rev.returncode != 0:
            raise InfrastructureError(f"Commit {plan.commit} not found in the {plan.role} repository")
        sha = rev.stdout.strip()
        co = _git(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", sha], dest, env)
        if co.returncode != 0:
            raise InfrastructureError(f"{failed}: checkout: {last_line(co.stderr)}")
        return sha
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"{failed}: git timed out after {_GIT_TIMEOUT}s") from None
    except FileNotFoundError:
        raise InfrastructureError("git is not installed on this worker") from None


__all__ = [
    "BadJobError",
    "Checkout",
    "CheckoutPlan",
    "checkout",
    "git_session",
    "last_line",
    "plan_checkout",
    "run_git",
]
