"""The CLI's shared table cells: one duration format for the cutover's time in stage and a worker's uptime."""

from __future__ import annotations

import pytest

from gateway.cli import output

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("seconds", "keep_seconds", "shown"),
    [
        (None, False, "-"),
        (None, True, "-"),
        (0, False, "0m00s"),
        (245.9, False, "4m05s"),
        (245.9, True, "4m05s"),
        (3725, False, "1h02m"),  # past the hour the cutover drops the seconds
        (3725, True, "1h02m05s"),  # a worker's uptime keeps them
    ],
)
def test_duration(seconds: float | None, keep_seconds: bool, shown: str) -> None:
    assert output.duration(seconds, keep_seconds=keep_seconds) == shown
