"""Sticky buckets: a member's place in a canary, the same in every process, on every machine, after restarts.

Python's `hash()` is salted per process (PYTHONHASHSEED), so it cannot be used: a member would change sides on
every restart. SHA-256 over an unambiguous encoding of (salt, course content, member) is stable everywhere.
A member is in a canary of p percent when its bucket is below p × 100, so widening p only ever adds members.
"""

from __future__ import annotations

import hashlib

from gateway.cutover.stages import BUCKETS


def bucket(salt: str, course_content_id: str, course_member_id: str) -> int:
    """0 .. BUCKETS-1. The parts are length-prefixed so ("a", "bc") and ("ab", "c") never collide by design."""
    digest = hashlib.sha256()
    for part in (salt, course_content_id, course_member_id):
        raw = part.encode()
        digest.update(len(raw).to_bytes(4, "big"))
        digest.update(raw)
    return int.from_bytes(digest.digest()[:8], "big") % BUCKETS


def threshold(percentage: float) -> int:
    """How many buckets a percentage covers (0.01 % resolution)."""
    return max(0, min(BUCKETS, round(percentage * BUCKETS / 100)))


def in_canary(bucket_number: int, percentage: float) -> bool:
    return bucket_number < threshold(percentage)
