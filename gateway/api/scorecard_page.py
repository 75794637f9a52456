"""The `/scorecard` page: server-rendered HTML over the scorecard read model, for admins (HTTP Basic login).

No JavaScript framework, no CDN, no build step: one HTML document with inline CSS, inline SVG sparklines of
parity and run time, a meta refresh, and promote/rollback buttons that are plain forms asking for confirmation.
"""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from gateway.api.auth import require
from gateway.api.deps import Login, State
from gateway.cutover.stage_machine import Action
from gateway.cutover.stages import Scope
from gateway.jobs import cutover_changes as service
from gateway.jobs.scorecard import scorecard

router = APIRouter(include_in_schema=False)
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


def _spark(values: list[float | None], color: str, lo: float | None = None, hi: float | None = None) -> str:
    """A 120×30 polyline; gaps (None) are skipped."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return '<svg width="120" height="30" role="img" aria-label="no data"></svg>'
    low = min(v for _, v in points) if lo is None else lo
    high = max(v for _, v in points) if hi is None else hi
    span = (high - low) or 1.0
    step = 120 / max(1, len(values) - 1)
    xy = [(i * step if len(values) > 1 else 60.0, 28 - (v - low) / span * 26) for i, v in points]
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.8" fill="{color}"/>' for x, y in xy)
    return (
        f'<svg width="120" height="30" role="img"><polyline fill="none" stroke="{color}" '
        f'stroke-width="1.5" points="{coords}"/>{dots}</svg>'
    )


def _button(card: dict[str, Any], action: str, label: str) -> str:
    scope, scope_id = escape(card["scope"]), escape(card["scope_id"])
    question = escape(f"{label} {card['scope']} {card['label']}?")
    return (
        f'<form method="post" action="/scorecard/{scope}/{scope_id}/{action}" '
        f"onsubmit=\"return confirm('{question}')\">"
        f'<button type="submit" name="action" value="{action}" data-action="{action}">{escape(label)}</button></form>'
    )


def _cluster(cluster: dict[str, Any]) -> str:
    """One cluster: its size, signature and tests (or paths), its acceptance if any, a sample diff."""
    what = ", ".join(cluster["tests"] or cluster["paths"]) or "(no paths)"
    acceptance = cluster["acceptance"]
    if acceptance is None:
        note = ""
    elif cluster["status"] == "expired":
        note = f"<br><small>acceptance expired {escape(acceptance['expires_at'][:16])}</small>"
    else:
        note = (
            f"<br><small>{escape(acceptance['note'])} · {escape(acceptance['accepted_by'])} · until "
            f"{escape(acceptance['expires_at'][:16])}</small>"
        )
    return (
        f'<li data-signature="{escape(cluster["signature"] or "")}">{cluster["count"]}× '
        f"<code>{escape(cluster['signature'] or '-')}</code> {escape(what)}{note}"
        f"<br><code>{escape(str(cluster['sample']['differences'])[:300])}</code></li>"
    )


def _row(card: dict[str, Any]) -> str:
    ev = card["evaluation"]
    new, old = card["engines"][card["new_engine"]], card["engines"][card["old_engine"]]
    series = card["series"]
    parity = _spark([p["parity"] for p in series], "#1b7f3b", 0.0, 1.0)
    runtime = _spark([p["p50_seconds"].get(card["new_engine"]) for p in series], "#3557b7")
    clusters = "".join(_cluster(c) for c in card["clusters"])
    accepted = "".join(_cluster(c) for c in card["accepted_clusters"])
    if accepted:
        clusters += f'<li class="accepted"><b>accepted</b> (not counted)<ul>{accepted}</ul></li>'
    stage = card["stage"] + (f" {card['percentage']:g} %" if card["stage"] == "canary" else "")
    minutes = (card["seconds_in_stage"] or 0) / 60
    return (
        f'<tr data-scope="{escape(card["scope"])}" data-scope-id="{escape(card["scope_id"])}">'
        f"<td><b>{escape(card['label'])}</b><br>{escape(card['scope'])} · {escape(card['old_engine'])} → "
        f"{escape(card['new_engine'])}</td>"
        f'<td class="stage">{escape(stage)}<br><small>{minutes:.0f} min · v{card["version"]} · '
        f"{escape(card['policy'])}</small></td>"
        f"<td>{card['samples']}</td>"
        f"<td>{_pct(card['parity'])}<br><small>raw {_pct(card['parity_raw'])}</small><br>{parity}</td>"
        f"<td>new {_pct(new['infra_error_rate'])}<br>old {_pct(old['infra_error_rate'])}</td>"
        f"<td>p50 {_secs(old['p50_seconds'])} / {_secs(new['p50_seconds'])}<br>p99 {_secs(old['p99_seconds'])} / "
        f"{_secs(new['p99_seconds'])}<br>{runtime}</td>"
        f'<td class="{escape(ev["verdict"])}">{escape(ev["verdict"])} ({escape(ev["decided_by"])})<br>'
        f"<small>{escape('; '.join(card['needs']) or 'nothing')}</small></td>"
        f'<td class="clusters"><ul>{clusters}</ul></td>'
        f"<td>{_button(card, 'promote', 'Promote')}{_button(card, 'rollback', 'Roll back')}</td></tr>"
    )


def render(cards: list[dict[str, Any]]) -> str:
    rows = "".join(_row(c) for c in cards) or '<tr><td colspan="9">No migration is set.</td></tr>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><title>Cutover scorecard</title>'
        f"<style>{STYLE}</style></head><body><h1>Cutover scorecard</h1>"
        "<table><thead><tr><th>migration</th><th>stage</th><th>samples</th><th>parity</th><th>infra errors</th>"
        "<th>run time old / new</th><th>gate · next needs</th><th>mismatch clusters</th><th></th></tr></thead>"
        f'<tbody id="migrations">{rows}</tbody></table>'
        f"<p><small>Refreshes every {REFRESH_SECONDS} s. Parity is noise-adjusted; charts are hourly.</small></p>"
        "</body></html>"
    )


@router.get("/scorecard", response_class=HTMLResponse)
async def page(state: State, principal: Login) -> HTMLResponse:
    require(principal, "admin")
    return HTMLResponse(render(await scorecard(state.sessions)))


@router.post("/scorecard/{scope}/{scope_id}/{action}")
async def act(
    scope: Scope, scope_id: str, action: Action, request: Request, state: State, principal: Login
) -> RedirectResponse:
    """Only promote and rollback are offered on the page; the change is logged like any other.

    The form body is parsed by hand (urlencoded): no multipart dependency for one optional field."""
    require(principal, "admin")
    reason = parse_qs((await request.body()).decode(errors="replace")).get("reason", [""])[0]
    if action not in (Action.PROMOTE, Action.ROLLBACK):
        return RedirectResponse("/scorecard", status_code=303)
    await service.change_migration(
        state.sessions, scope, scope_id, action, actor=principal.username, reason=reason or "from the scorecard page"
    )
    return RedirectResponse("/scorecard", status_code=303)
