"""Mismatch triage: comparisons clustered by signature, and clusters an admin accepted as intended differences.

A cluster is every comparison with the same signature: its outcome and the set of (test identity, difference
path) it differs on - the values are left out, so one intended difference ("Celery reports the duration in ms")
is one cluster however the numbers vary. The signature is a short hash so it can be named in a URL or on the
command line, and it is stored with each comparison: acceptances refer to it, so its definition never changes.

An acceptance (note, expiry, who, when) takes a cluster's mismatches out of the gate's mismatch rate until it
expires; an expired acceptance counts again, and the scorecard shows both apart from the open clusters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

SIGNATURE_CHARS = 16  # 64 bits of SHA-256: unique across any realistic number of clusters
SIGNATURE = re.compile(rf"^[0-9a-f]{{{SIGNATURE_CHARS}}}$")
# An acceptance must end: an intended difference is re-confirmed at least this often.
MAX_ACCEPTANCE = timedelta(days=365)


class InvalidAcceptance(ValueError):
    """An acceptance without a note, with a malformed signature, or an expiry not in (now, now + 365 days]."""


class TriageAction(StrEnum):
    """The events of triage, in the migration's log beside its stage changes."""

    ACCEPT = "accept"
    UNACCEPT = "unaccept"


class ClusterStatus(StrEnum):
    OPEN = "open"  # never accepted: counts against the gate
    ACCEPTED = "accepted"  # accepted and not expired: left out of the gate's mismatch rate
    EXPIRED = "expired"  # its acceptance lapsed: counts against the gate again


def cluster_key(differences: Iterable[Mapping[str, Any]] | None) -> tuple[tuple[str, str], ...]:
    """The sorted, distinct (test identity or "", path) pairs of a comparison's differences."""
    return tuple(sorted({(str(d.get("test") or ""), str(d.get("path"))) for d in differences or ()}))


def signature_of(outcome: str, differences: Iterable[Mapping[str, Any]] | None) -> str:
    """Stable across processes, orders and versions: SHA-256 over canonical JSON of the outcome and the key."""
    canonical = json.dumps([str(outcome), [list(pair) for pair in cluster_key(differences)]], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:SIGNATURE_CHARS]


@dataclass(frozen=True)
class Acceptance:
    signature: str
    note: str
    expires_at: datetime
    accepted_by: str
    accepted_at: datetime

    def active(self, now: datetime) -> bool:
        return now < self.expires_at

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "signature": self.signature,
            "note": self.note,
            "expires_at": self.expires_at.isoformat(),
            "accepted_by": self.accepted_by,
            "accepted_at": self.accepted_at.isoformat(),
            "active": self.active(now),
        }


def validate(signature: str, note: str, expires_at: datetime, now: datetime) -> None:
    if not SIGNATURE.match(signature):
        raise InvalidAcceptance(f"a signature is {SIGNATURE_CHARS} lowercase hex characters, not {signature!r}")
    if not note.strip():
        raise InvalidAcceptance("an acceptance needs a note: why this difference is intended")
    if expires_at.tzinfo is None:
        raise InvalidAcceptance("the expiry needs a time zone (e.g. 2026-12-31T00:00:00Z)")
    if expires_at <= now:
        raise InvalidAcceptance(f"the expiry {expires_at.isoformat()} is not in the future")
    if expires_at > now + MAX_ACCEPTANCE:
        raise InvalidAcceptance(f"an acceptance lasts at most {MAX_ACCEPTANCE.days} days")


def active_signatures(acceptances: Iterable[Acceptance], now: datetime) -> frozenset[str]:
    """The signatures whose mismatches the gate leaves out at `now`."""
    return frozenset(a.signature for a in acceptances if a.active(now))


def status_of(signature: str, acceptances: Mapping[str, Acceptance], now: datetime) -> ClusterStatus:
    found = acceptances.get(signature)
    if found is None:
        return ClusterStatus.OPEN
    return ClusterStatus.ACCEPTED if found.active(now) else ClusterStatus.EXPIRED
