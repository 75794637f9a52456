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
    """A copy of `value` without the ignored keys, with every string normalised and error keys made neutral."""
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
