"""The `/scorecard` page: server-rendered HTML over the scorecard read model, for admins (HTTP Basic login).

No JavaScript framework, no CDN, no build step: one HTML document (the Jinja2 template
`templates/scorecard.html`, autoescaped) with inline CSS, inline SVG sparklines of parity and run time, a meta
refresh, and promote/rollback buttons that are plain forms asking for confirmation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from gateway.api.auth import GuardedRoute
from gateway.api.deps import Admin, State
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope
from gateway.jobs import cutover_changes as service
from gateway.jobs.scorecard import scorecard

router = APIRouter(include_in_schema=False, route_class=GuardedRoute)
REFRESH_SECONDS = 30

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;
vertical-align:top}th{background:#f4f4f4}.Failed{color:#b00020}.Successful{color:#1b7f3b}.Inconclusive{color:#8a6d00}
.clusters{font-size:12px;color:#555}code{font-size:12px}form{display:inline}button{margin:.1rem}
svg{background:#fafafa;border:1px solid #eee}
"""


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %"


def _secs(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


@dataclass(frozen=True)
class Spark:
    """A 120×30 polyline's points (gaps skipped), as the template draws it."""

    color: str
    points: list[tuple[float, float]]

    @property
    def coords(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in self.points)


def _spark(values: list[float | None], color: str, lo: float | None = None, hi: float | None = None) -> Spark:
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return Spark(color, [])
    low = min(v for _, v in points) if lo is None else lo
    high = max(v for _, v in points) if hi is None else hi
    span = (high - low) or 1.0
    step = 120 / max(1, len(values) - 1)
    return Spark(color, [(i * step if len(values) > 1 else 60.0, 28 - (v - low) / span * 26) for i, v in points])


def _row(card: dict[str, Any]) -> dict[str, Any]:
    """A card and what the template draws beside it: the two sparklines and the minutes in the stage."""
    series = card["series"]
    return {
        "card": card,
        "parity": _spark([p["parity"] for p in series], "#1b7f3b", 0.0, 1.0),
        "runtime": _spark([p["p50_seconds"].get(card["new_engine"]) for p in series], "#3557b7"),
        "minutes": (card["seconds_in_stage"] or 0) / 60,
    }


templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
templates.env.filters |= {"pct": _pct, "secs": _secs}


def render(cards: list[dict[str, Any]]) -> str:
    template = templates.get_template("scorecard.html")
    return template.render(rows=[_row(c) for c in cards], refresh=REFRESH_SECONDS, style=Markup(STYLE))


@router.get("/scorecard", response_class=HTMLResponse)
async def page(state: State, principal: Admin) -> HTMLResponse:
    return HTMLResponse(render(await scorecard(state.sessions)))


@router.post("/scorecard/{scope}/{scope_id}/{action}")
async def act(
    scope: Scope,
    scope_id: str,
    action: Action,
    state: State,
    principal: Admin,
    reason: Annotated[str, Form()] = "",
) -> RedirectResponse:
    """Only promote and rollback are offered on the page; the change is logged like any other."""
    if action not in (Action.PROMOTE, Action.ROLLBACK):
        return RedirectResponse("/scorecard", status_code=303)
    await service.change_migration(
        state.sessions, scope, scope_id, action, actor=principal.username, reason=reason or "from the scorecard page"
    )
    return RedirectResponse("/scorecard", status_code=303)
