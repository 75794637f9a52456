"""The Prefect adapter repeats a request the server answers busy (429/5xx gateway codes), then lets it stand.

A fault the fast layer cannot cause with a real server on demand (a busy SQLite-backed Prefect), so the server
here is an `httpx.MockTransport` that answers from a script.
"""

from __future__ import annotations

import httpx
import pytest

from backends.interface import EngineUnavailable
from backends.prefect.adapter import PrefectAdapter
from common.settings import Settings

pytestmark = pytest.mark.fast


def _adapter(answers: list[int]) -> tuple[PrefectAdapter, list[str]]:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(answers.pop(0) if answers else 200, json={})

    settings = Settings(prefect_api_url="http://prefect.invalid/api")
    return PrefectAdapter(settings, transport=httpx.MockTransport(answer)), seen


def test_a_busy_answer_is_asked_again_until_it_is_not() -> None:
    adapter, seen = _adapter([503, 429])
    try:
        assert adapter._request("GET", "health").status_code == 200
    finally:
        adapter.close()
    assert len(seen) == 3


def test_a_server_busy_six_times_is_unavailable() -> None:
    adapter, seen = _adapter([503] * 6)
    try:
        with pytest.raises(EngineUnavailable, match="503"):
            adapter._request("GET", "health")
    finally:
        adapter.close()
    assert len(seen) == 6  # the first try and five retries


def test_an_answer_that_is_not_busy_is_not_repeated() -> None:
    adapter, seen = _adapter([500])
    try:
        with pytest.raises(EngineUnavailable, match="500"):
            adapter._request("GET", "health")
    finally:
        adapter.close()
    assert len(seen) == 1
