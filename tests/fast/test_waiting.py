"""The suites' one wait (`tests/support/waiting.py`): a slow answer is "not yet", anything else fails at once.

Scripted answers, in the order a loaded machine gives them: a read timeout, a refused connection, a 503, then
the answer. No clock is involved but the deadline, which a zero timeout reaches after one look.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.waiting import is_slow_answer, wait_until

pytestmark = pytest.mark.fast

REQUEST = httpx.Request("GET", "http://127.0.0.1:1/health")


def _status(code: int) -> httpx.HTTPStatusError:
    return httpx.HTTPStatusError(f"{code}", request=REQUEST, response=httpx.Response(code, request=REQUEST))


def _script(*answers: object) -> Callable[[], object]:
    it: Iterator[object] = iter(answers)

    def check() -> object:
        answer = next(it)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return check


def test_slow_answers_are_not_yet() -> None:
    check = _script(
        httpx.ReadTimeout("slow", request=REQUEST),
        httpx.ConnectError("refused", request=REQUEST),
        httpx.RemoteProtocolError("reset", request=REQUEST),
        _status(503),
        None,
        "ready",
    )
    assert wait_until(check, "the server", timeout=3600, interval=0) == "ready"


@pytest.mark.parametrize("wrong", [_status(404), AssertionError("bad body"), ValueError("bad json")])
def test_a_wrong_answer_fails_at_once(wrong: BaseException) -> None:
    with pytest.raises(type(wrong)):
        wait_until(_script(wrong, "ready"), "the server", timeout=3600, interval=0)


def test_the_deadline_says_what_was_last_seen() -> None:
    with pytest.raises(AssertionError, match="waiting for the server; last: ReadTimeout"):
        wait_until(_script(httpx.ReadTimeout("slow", request=REQUEST)), "the server", timeout=0, interval=0)


def test_which_errors_are_slow() -> None:
    assert is_slow_answer(httpx.PoolTimeout("pool", request=REQUEST))
    assert is_slow_answer(_status(500)) and not is_slow_answer(_status(401))
    assert not is_slow_answer(ValueError())
