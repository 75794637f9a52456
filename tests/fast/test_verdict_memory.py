"""The verdict of a run that passed its memory limit: the limit, never tampering, whatever the kill cut.

Synthetic channels (as the verdict plugin streams them) and the worker's channel reader on a real pipe: the real
runs, with a real memory cgroup and an honest run beside, are in tests/work/test_run_memory_cgroup.py.
"""

from __future__ import annotations

import hmac
import json
import os

import pytest

from backends.work.sandbox import RunOutcome, _ChannelReader
from backends.work.verdict import decide

pytestmark = pytest.mark.fast

FILES = ["test_a.py"]
KEY = b"m" * 32
LIMIT = "memory limit of the run (512 MiB) exceeded"


def _signed(seq: int, event: dict[str, object]) -> bytes:
    body = json.dumps(event).encode()
    return hmac.digest(KEY, str(seq).encode() + b":" + body, "sha256").hex().encode() + b" " + body


def _events(finished: int, end: bool = False) -> list[dict[str, object]]:
    events: list[dict[str, object]] = [
        {"event": "start"},
        {"event": "collected", "nodeids": ["test_a.py::test_1", "test_a.py::test_2"]},
    ]
    for n in range(1, finished + 1):
        events.append({"event": "test", "nodeid": f"test_a.py::test_{n}", "when": "call", "outcome": "passed",
                       "message": "", "details": "", "duration": 0.1})  # fmt: skip
    if end:
        events.append({"event": "end", "exitstatus": 0})
    return events


def _outcome(lines: list[bytes], returncode: int = 137) -> RunOutcome:
    return RunOutcome(returncode=returncode, signal=9, timed_out=False, stdout="", stderr="", junit_xml=None,
                      channel=lines, channel_key=KEY, memory_limit=512 << 20, memory_exceeded=True)  # fmt: skip


def _read_through_pipe(data: bytes, killed: bool) -> list[bytes]:
    """What the worker's reader keeps of `data` written on a real pipe whose writer then vanished."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
        os.close(write_fd)
        reader = _ChannelReader(read_fd, None, KEY)
        reader.drain(float("inf"), killed=killed)
        return reader.lines
    finally:
        os.close(read_fd)


def test_a_run_stopped_during_a_test_is_the_memory_limit_and_keeps_finished_verdicts() -> None:
    outcomes, run = decide(_outcome([_signed(n, e) for n, e in enumerate(_events(1))]), FILES, 10)
    assert run.status == "CRASHED" and LIMIT in (run.status_message or "")
    assert [(o.status, o.result) for o in outcomes] == [("COMPLETED", "PASSED"), ("CRASHED", "FAILED")]


def test_an_oom_kill_after_the_session_reported_its_end_is_still_the_memory_limit() -> None:
    _outcomes, run = decide(_outcome([_signed(n, e) for n, e in enumerate(_events(2, end=True))], 0), FILES, 10)
    assert run.status == "CRASHED" and LIMIT in (run.status_message or "")


def test_a_line_the_kill_cut_is_dropped_not_read_as_tampering() -> None:
    whole = b"".join(_signed(n, e) + b"\n" for n, e in enumerate(_events(1)))
    cut = _signed(3, {"event": "test", "nodeid": "test_a.py::test_2", "when": "setup", "outcome": "passed"})[:40]
    _, run = decide(_outcome(_read_through_pipe(whole + cut, killed=True)), FILES, 10)
    assert run.status == "CRASHED" and LIMIT in (run.status_message or "")
    # the same bytes from a writer the kernel did not kill for memory: an unterminated line is not the runner's
    _, run = decide(_outcome(_read_through_pipe(whole + cut, killed=False)), FILES, 10)
    assert "tampering" in (run.status_message or "").lower()
