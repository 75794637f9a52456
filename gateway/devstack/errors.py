"""The one error `gateway up` shows as a single line."""

from __future__ import annotations


class UpError(RuntimeError):
    """A reason `gateway up` cannot start, worded as the one line the user sees."""
