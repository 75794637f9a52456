"""The console's pure parts: which actions a stage offers, the cross-site checks, the plots' rules."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from common.settings import Settings
from gateway.api.console_page import line_chart
from gateway.api.csrf import CsrfKey, refusal, same_origin
from gateway.cutover.stages import Stage
from gateway.jobs.console import ConsoleAction, offered
from gateway.store.accounts import Principal

ADMIN = Principal("u-1", "admin", "admin")


@pytest.mark.parametrize(
    ("stage", "paused", "expected"),
    [
        (Stage.OLD_ONLY, False, ["promote", "pause"]),  # no Demote or Roll back at the first stage
        (Stage.SHADOW, False, ["promote", "demote", "rollback", "pause"]),
        (Stage.CANARY, True, ["promote", "demote", "rollback", "resume"]),
        (Stage.NEW_ONLY, False, ["demote", "rollback", "pause"]),  # no Promote at the last stage
    ],
)
def test_actions_are_offered_only_where_they_make_sense(stage: Stage, paused: bool, expected: list[str]) -> None:
    assert [a.value for a in offered(stage, paused)] == expected
    assert all(isinstance(a, ConsoleAction) for a in offered(stage, paused))


def _request(headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "gw.example:8000", **headers}.items()]
    return Request({"type": "http", "method": "POST", "scheme": "http", "path": "/", "headers": raw})


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({"origin": "http://gw.example:8000"}, True),
        ({"origin": "http://GW.example:8000"}, True),
        ({"origin": "http://evil.example"}, False),
        ({"origin": "null"}, False),  # a sandboxed frame or a file page
        ({"origin": "https://gw.example:8000"}, False),  # another scheme is another origin
        ({"referer": "http://gw.example:8000/console/m/content/x/confirm/rollback"}, True),
        ({"referer": "http://gw.example:8000.evil.example/"}, False),
        ({"origin": "http://evil.example", "referer": "http://gw.example:8000/console"}, False),  # Origin wins
        ({}, False),  # neither header: refused
    ],
)
def test_a_form_must_come_from_this_origin(headers: dict[str, str], ok: bool) -> None:
    assert same_origin(_request(headers)) is ok


def test_the_token_is_bound_to_the_login_and_the_key() -> None:
    key = CsrfKey(Settings(gateway_console_secret=SecretStr("k1")))
    token = key.token(ADMIN)
    assert key.valid(ADMIN, token)
    assert not key.valid(Principal("u-2", "other", "admin"), token)  # another login's token
    assert not key.valid(ADMIN, "") and not key.valid(ADMIN, token[:-1] + "0")
    assert not CsrfKey(Settings(gateway_console_secret=SecretStr("k2"))).valid(ADMIN, token)
    assert CsrfKey(Settings(gateway_console_secret=SecretStr("k1"))).valid(ADMIN, token)  # any process, same key
    same_site = _request({"origin": "http://gw.example:8000"})
    assert refusal(same_site, key, ADMIN, token) is None
    assert "token" in (refusal(same_site, key, ADMIN, "forged") or "")
    assert "cross-site" in (refusal(_request({"origin": "http://evil.example"}), key, ADMIN, token) or "")


def test_no_chart_of_a_single_dot() -> None:
    assert line_chart([], 0, 1, str) is None
    assert line_chart([("10:00", 0.9), ("11:00", None)], 0, 1, str) is None  # one point: a number, not a chart
    chart = line_chart([("10:00", 1.0), ("11:00", None), ("12:00", 0.0)], 0.0, 1.0, str)
    assert chart is not None and len(chart.points) == 2
    (x0, y0), (x1, y1) = chart.points
    assert x0 < x1 and y0 < y1  # 100 % at the top, 0 % at the bottom
    assert (chart.first, chart.last) == ("10:00", "12:00")
