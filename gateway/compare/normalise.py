"""Normalising a test report before it is compared: drop what is noise by nature, rewrite what varies.

Works on the legacy report tree (`name, type, status, result, summary, ..., tests[]`, the same node at every
level) and on the legacy infrastructure-error shape (`{"<engine>_exception": ..., "message": ...}`, whose key
names the engine: it becomes `engine_exception`).
"""

from __future__ import annotations

from typing import Any

from gateway.compare.rules import Rules

ERROR_KEY_SUFFIX = "_exception"
NEUTRAL_ERROR_KEY = "engine_exception"


def normalise_text(text: str, rules: Rules) -> str:
    for pattern, replacement in rules.replacements:
        text = pattern.sub(replacement, text)
    return text.strip()


def normalise(value: Any, rules: Rules) -> Any:
    """A copy of `value` without the ignored keys and with neutral error keys; strings are rewritten as well.

    The diff compares compared fields with `same_text` (raw first, rewritten only when they differ), so on the
    hot path the comparator calls `strip_keys` and leaves the strings alone."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in rules.ignore_keys:
                continue
            if key.endswith(ERROR_KEY_SUFFIX):
                key = NEUTRAL_ERROR_KEY
            out[key] = normalise(item, rules)
        return out
    if isinstance(value, list):
        return [normalise(item, rules) for item in value]
    if isinstance(value, str):
        return normalise_text(value, rules)
    return value


def strip_keys(value: Any, rules: Rules) -> Any:
    """`normalise` without rewriting strings (the cheap part; strings are compared with `same_text`)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in rules.ignore_keys:
                continue
            out[NEUTRAL_ERROR_KEY if key.endswith(ERROR_KEY_SUFFIX) else key] = strip_keys(item, rules)
        return out
    if isinstance(value, list):
        return [strip_keys(item, rules) for item in value]
    return value


def same(a: Any, b: Any, rules: Rules) -> bool:
    """Equal, or two strings equal after the rules' rewriting (run only when the raw strings differ)."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str):
        return normalise_text(a, rules) == normalise_text(b, rules)
    return False
