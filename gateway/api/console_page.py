"""The operator console under `/console`: server-rendered pages (Jinja2, autoescaped) for admins.

Pages: the migrations; one migration (plan, timeline, traffic and latency per stage and engine, parity with its
chart, clusters with their A/A noise); one cluster's comparisons; one comparison (both reports side by side,
differences in full); the jobs list. Read pages refresh themselves; no JavaScript is needed, no CDN, no build.

Actions are two requests: a GET that plans the action without saving it and says what will change (the
confirmation page), and the POST of its form, which carries the migration's version (a stale page gets the
409 in the page), a token bound to the login and must come from this origin (`gateway.api.csrf`). Routes are
thin: the numbers come from `gateway.jobs.console` (the scorecard card the API and CLI show too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from gateway.api.auth import GuardedRoute
from gateway.api.csrf import CsrfKey, refusal
from gateway.api.deps import Admin, State
from gateway.cutover.stages import Scope
from gateway.jobs import console as service
from gateway.jobs import cutover_changes as changes
from gateway.jobs import cutover_holds as holds
from gateway.jobs import cutover_triage as triage
from gateway.jobs.errors import JobError
from gateway.store.accounts import Principal

router = APIRouter(include_in_schema=False, route_class=GuardedRoute)
REFRESH_SECONDS = 30
ACCEPT_HOURS = (1, 24, 72, 168, 336)  # what the acceptance form offers; a day by default


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %"


def _secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)


# --------------------------------------------------------------------------------------------------- plots
@dataclass(frozen=True)
class LineChart:
    """A small line chart with its axis labels; drawn only from two points on (one point is a number)."""

    width: int
    height: int
    coords: str
    points: list[tuple[float, float]]
    first: str
    last: str
    low: str
    high: str


def line_chart(series: list[tuple[str, float | None]], lo: float, hi: float, fmt: Any) -> LineChart | None:
    points = [(label, v) for label, v in series if v is not None]
    if len(points) < 2:
        return None
    width, height, pad = 360, 90, 4
    span = (hi - lo) or 1.0
    step = (width - 2 * pad) / (len(points) - 1)
    xy = [(pad + i * step, pad + (height - 2 * pad) * (1 - (v - lo) / span)) for i, (_, v) in enumerate(points)]
    return LineChart(width, height, " ".join(f"{x:.1f},{y:.1f}" for x, y in xy), xy,
                     points[0][0], points[-1][0], fmt(lo), fmt(hi))  # fmt: skip


@dataclass(frozen=True)
class Bar:
    label: str
    queue: float
    run: float
    text: str


def latency_bars(rows: list[dict[str, Any]]) -> tuple[list[Bar], float]:
    """Queue wait and run time (p50) per stage and engine, stacked, on one scale."""
    bars = [
        Bar(
            f"{r['stage']} · {r['engine']}",
            r["queue_p50"] or 0.0,
            r["run_p50"] or 0.0,
            f"queue {_secs(r['queue_p50'])} + run {_secs(r['run_p50'])}",
        )  # fmt: skip
        for r in rows
        if r["queue_p50"] is not None or r["run_p50"] is not None
    ]
    top = max((b.queue + b.run for b in bars), default=0.0) or 1.0
    return bars, top


templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
templates.env.filters |= {"pct": _pct, "secs": _secs, "num": _num}


def _csrf(request: Request) -> CsrfKey:
    return request.app.state.console_csrf  # type: ignore[no-any-return]


def _page(request: Request, name: str, principal: Principal, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("refresh", None)
    context |= {"user": principal.username, "csrf": _csrf(request).token(principal), "status_code": status_code}
    return templates.TemplateResponse(request, name, context, status_code=status_code)


# ----------------------------------------------------------------------------------------------------- pages
@router.get("/console", response_class=HTMLResponse)
async def migrations(request: Request, state: State, principal: Admin) -> HTMLResponse:
    cards = await service.migrations(state.sessions)
    return _page(request, "console_migrations.html", principal, cards=cards, refresh=REFRESH_SECONDS)


async def _migration_context(state: State, scope: Scope, key: str) -> dict[str, Any]:
    data = await service.migration_page(state.sessions, scope, key)
    series = data["card"]["series"]
    parity = line_chart([(p["hour"][5:], p["parity"]) for p in series], 0.0, 1.0, _pct)
    bars, top = latency_bars(data["traffic"])
    return {**data, "parity_chart": parity, "bars": bars, "bar_top": top, "scope": scope.value}


@router.get("/console/m/{scope}/{key}", response_class=HTMLResponse)
async def migration(
    request: Request, scope: Scope, key: str, state: State, principal: Admin, done: str = ""
) -> HTMLResponse:
    context = await _migration_context(state, scope, key)
    return _page(request, "console_migration.html", principal, refresh=REFRESH_SECONDS, done=done, **context)


@router.get("/console/m/{scope}/{key}/clusters/{signature}", response_class=HTMLResponse)
async def cluster(request: Request, scope: Scope, key: str, signature: str, state: State, principal: Admin) -> Any:
    data = await service.cluster_page(state.sessions, scope, key, signature)
    return _page(request, "console_cluster.html", principal, refresh=REFRESH_SECONDS, **data)


@router.get("/console/comparisons/{comparison_id}", response_class=HTMLResponse)
async def comparison(request: Request, comparison_id: str, state: State, principal: Admin) -> HTMLResponse:
    data = await service.comparison_page(state.sessions, comparison_id)
    return _page(request, "console_comparison.html", principal, c=data, hours=ACCEPT_HOURS)


@router.get("/console/jobs", response_class=HTMLResponse)
async def jobs(
    request: Request,
    state: State,
    principal: Admin,
    outcome: str = "",
    student: str = "",
    commit: str = "",
    engine: str = "",
) -> HTMLResponse:
    f = service.JobFilter(outcome or None, student or None, commit or None, engine or None)
    rows = await service.jobs_page(state.sessions, f)
    return _page(request, "console_jobs.html", principal, rows=rows, f=f, refresh=REFRESH_SECONDS)


@router.get("/console/m/{scope}/{key}/confirm/{action}", response_class=HTMLResponse)
async def confirm(
    request: Request,
    scope: Scope,
    key: str,
    action: service.ConsoleAction,
    state: State,
    principal: Admin,
    signature: str = "",
    comparison: str = "",
) -> HTMLResponse:
    """What `action` will change, and the form that does it (no refresh: the version is the page's)."""
    try:
        found = await service.preview(state.sessions, scope, key, action, signature)
    except JobError as exc:
        return _page(request, "console_error.html", principal, exc.status_code, message=exc.detail,
                     back=f"/console/m/{scope.value}/{key}")  # fmt: skip
    return _page(request, "console_confirm.html", principal, p=found, scope=scope.value, key=key,
                 signature=signature, comparison=comparison, hours=ACCEPT_HOURS)  # fmt: skip


@router.post("/console/m/{scope}/{key}/{action}", response_class=HTMLResponse)
async def act(
    request: Request,
    scope: Scope,
    key: str,
    action: service.ConsoleAction,
    state: State,
    principal: Admin,
    csrf: Annotated[str, Form()] = "",
    version: Annotated[int | None, Form()] = None,
    reason: Annotated[str, Form()] = "",
    signature: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
    expires_in_hours: Annotated[float, Form()] = 24,
) -> Any:
    """Do a confirmed action: refused (403) from another site or without the login's token, 409 when stale."""
    back = f"/console/m/{scope.value}/{key}"
    why = refusal(request, _csrf(request), principal, csrf)
    if why is not None:
        return _page(request, "console_error.html", principal, 403, message=why, back=back)
    if version is None:  # every console form carries the version it was planned on
        return _page(request, "console_error.html", principal, 422, back=back,
                     message="refused: the form names no version of the migration (reload the page)")  # fmt: skip
    actor = principal.username
    try:
        if action in service.STAGE_ACTIONS:
            await changes.change_migration(
                state.sessions, scope, key, service.STAGE_ACTIONS[action], actor=actor,
                reason=reason or "from the console", expected_version=version,
            )  # fmt: skip
        else:
            service.check_version(await service.current_version(state.sessions, scope, key), version)
            if action in service.HOLD_ACTIONS:
                await holds.set_hold(state.sessions, scope, key, service.HOLD_ACTIONS[action], actor, reason)
            elif action == service.ConsoleAction.ACCEPT:
                await triage.accept_cluster(state.sessions, scope, key, signature, actor, note,
                                            expires_in=timedelta(hours=expires_in_hours))  # fmt: skip
            else:
                await triage.unaccept_cluster(state.sessions, scope, key, signature, actor, reason)
    except JobError as exc:
        return _page(request, "console_error.html", principal, exc.status_code, message=exc.detail, back=back)
    return RedirectResponse(f"{back}?{urlencode({'done': action.value})}", status_code=303)


@router.get("/scorecard")
async def scorecard_moved(principal: Admin) -> RedirectResponse:
    """The scorecard became the console's migrations list; the old URL keeps working."""
    return RedirectResponse("/console", status_code=307)
