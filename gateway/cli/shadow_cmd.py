"""`gateway shadow set|show|off` and `gateway compare summary|list|show`: shadow runs from the terminal.

Both work on the gateway's database directly (like `gateway catalog load`), through the same functions as the
admin API, so a setting changed here applies to new jobs of a running gateway within its catalog cache's ttl.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import typer
from rich.table import Table

from common.settings import get_settings
from gateway.cli import output

shadow_app = typer.Typer(help="Shadow runs: every sampled job also runs on the other engine.", no_args_is_help=True)
compare_app = typer.Typer(help="Comparisons of primary and shadow runs.", no_args_is_help=True)
console = output.console()
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
T = TypeVar("T")


def _with_sessions(work: Callable[[Any], Awaitable[T]]) -> T:
    from gateway.jobs.errors import JobError
    from gateway.store.db import make_async_engine, make_sessionmaker

    async def main() -> T:
        engine = make_async_engine(get_settings())
        try:
            return await output.named(work)(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except JobError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None


@shadow_app.command("set")
def shadow_set(
    backend: str | None = typer.Option(None, "--backend", help="Execution backend slug."),
    content: str | None = typer.Option(None, "--content", help="Course content id or path (an override)."),
    engine: str | None = typer.Option(None, help="The shadow engine (the other one: celery or prefect)."),
    fraction: float | None = typer.Option(None, min=0, max=1, help="Share of jobs shadowed, sampled per job."),
    max_in_flight: int | None = typer.Option(None, min=0, help="At most this many unfinished shadow legs."),
    deadline_seconds: int | None = typer.Option(None, min=1, help="A shadow not done by then is shadow_timeout."),
    aa_fraction: float | None = typer.Option(None, min=0, max=1, help="Share of jobs also run twice on their engine."),
    enabled: bool | None = typer.Option(None, "--enabled/--disabled", help="Turn this scope on or off."),
    properties: str | None = typer.Option(None, help="JSON laid over the backend's properties for the shadow."),
    as_json: bool = AS_JSON,
) -> None:
    """Create or change the shadow setting of a backend or a course content (only the options given change)."""
    from gateway.jobs.shadow_admin import set_shadow

    values: dict[str, Any] = {
        "engine": engine,
        "fraction": fraction,
        "max_in_flight": max_in_flight,
        "deadline_seconds": deadline_seconds,
        "aa_fraction": aa_fraction,
        "enabled": enabled,
        "properties": json.loads(properties) if properties else None,
    }
    saved = _with_sessions(
        lambda sessions: set_shadow(sessions, backend=backend, content=content, values=values, user_id=None)
    )
    if as_json:
        output.print_json(saved)
        return
    console.print(f"shadow setting saved for {saved['scope']} {saved['label']}")
    _settings_table([saved])


@shadow_app.command("off")
def shadow_off(
    backend: str | None = typer.Option(None, "--backend"),
    content: str | None = typer.Option(None, "--content"),
    as_json: bool = AS_JSON,
) -> None:
    """Remove the setting of a backend or content (a content then follows its backend again)."""
    from gateway.jobs.shadow_admin import delete_shadow

    _with_sessions(lambda sessions: delete_shadow(sessions, backend=backend, content=content))
    if as_json:
        typer.echo(json.dumps({"status": "deleted", "backend": backend, "content": content}))
        return
    console.print("shadow setting removed")


@shadow_app.command("show")
def shadow_show(as_json: bool = AS_JSON) -> None:
    """Every shadow setting and the skipped shadows by reason."""
    from gateway.jobs.shadow_admin import show_shadow

    shown = _with_sessions(show_shadow)
    if as_json:
        typer.echo(json.dumps(shown, indent=2))
        return
    _settings_table(shown["settings"])
    table = Table(title="Skipped shadows")
    for column in ("backend", "content", "reason", "count"):
        table.add_column(column)
    for skip in shown["skipped"]:
        backend_name = skip.get("backend_slug") or skip["execution_backend_id"] or "-"
        table.add_row(backend_name, skip.get("content") or "-", skip["reason"], str(skip["count"]))
    console.print(table)


def _settings_table(settings: list[dict[str, Any]]) -> None:
    table = Table(title="Shadow settings")
    for column in ("scope", "id", "on", "engine", "fraction", "cap", "deadline s", "A/A", "properties"):
        table.add_column(column)
    for s in settings:
        table.add_row(
            s["scope"],
            s.get("backend_slug") or s["label"],
            "yes" if s["enabled"] else "no",
            s["engine"] or "-",
            f"{s['fraction']:g}",
            str(s["max_in_flight"]),
            str(s["deadline_seconds"]),
            f"{s['aa_fraction']:g}",
            json.dumps(s["properties"]) if s["properties"] else "",
        )
    console.print(table)


def _filter(backend: str | None, content: str | None, outcome: str | None, since: datetime | None) -> Any:
    from gateway.compare.outcomes import ComparisonOutcome
    from gateway.compare.queries import ComparisonFilter

    return ComparisonFilter(backend, content, ComparisonOutcome(outcome) if outcome else None, None, since)


@compare_app.command("summary")
def compare_summary(
    by: str = typer.Option("backend", help="backend or content."),
    backend: str | None = typer.Option(None, "--backend"),
    content: str | None = typer.Option(None, "--content"),
    since: datetime | None = typer.Option(None),
    as_json: bool = AS_JSON,
) -> None:
    """Outcomes, mismatch rates (raw, noise-adjusted) over all of a group's comparisons, run time percentiles and
    skipped shadows per group; and a migration's gate parity (its stage's evidence, as the console and `cutover
    status` show it) where the group is a migration's scope."""
    from gateway.compare.queries import GroupBy
    from gateway.jobs.scorecard import comparison_summary

    f = _filter(backend, content, None, since)
    groups = _with_sessions(lambda sessions: comparison_summary(sessions, GroupBy(by), f))
    if as_json:
        typer.echo(json.dumps(groups, indent=2))
        return
    table = Table(title=f"Comparisons by {by}")
    for column in ("group", "n", "match", "mismatch", "noise", "infra", "timeout", "late", "error", "rate (all)",
                   "w/o noise (all)", "gate parity (stage, samples)", "run p50/p99 per engine", "skipped"):  # fmt: skip
        table.add_column(column)
    for g in groups:
        o = g["outcomes"]
        times = ", ".join(f"{e} {_s(t['p50'])}/{_s(t['p99'])}" for e, t in g["run_seconds"].items())
        skipped = ", ".join(f"{r} {n}" for r, n in g["skipped"].items())
        gate = g["gate"]
        table.add_row(
            g.get("label") or g[by] or "-",
            str(g["comparisons"]),
            str(o["match"]),
            str(o["mismatch"]),
            str(o["noise"]),
            str(o["infra_error"]),
            str(o["shadow_timeout"]),
            str(o["late"]),
            str(o["compare_error"]),
            _pct(g["mismatch_rate"]),
            _pct(g["mismatch_rate_noise_adjusted"]),
            f"{_pct(gate['parity'])} ({gate['stage']}, {gate['samples']})" if gate else "-",
            times,
            skipped,
        )
    console.print(table)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


@compare_app.command("list")
def compare_list(
    backend: str | None = typer.Option(None, "--backend"),
    content: str | None = typer.Option(None, "--content"),
    outcome: str | None = typer.Option(None, help="match, mismatch, noise, infra_error, shadow_timeout, late, ..."),
    since: datetime | None = typer.Option(None),
    limit: int = typer.Option(50, min=1, max=1000),
    skip: int = typer.Option(0, min=0),
    as_json: bool = AS_JSON,
) -> None:
    """The newest comparisons, filtered."""
    from gateway.compare.queries import page

    total, items = _with_sessions(
        lambda sessions: page(sessions, _filter(backend, content, outcome, since), skip, limit)
    )
    if as_json:
        output.print_json({"total": total, "items": items})
        return
    table = Table(title=f"Comparisons ({len(items)} of {total})")
    for column in (
        "result",
        "content",
        "student",
        "kind",
        "outcome",
        "side",
        "engines",
        "scores",
        "diffs",
        "reason",
        "at",
    ):
        table.add_column(column)
    for c in items:
        p, s = c["primary"], c["shadow"]
        table.add_row(
            c["result_id"],
            c.get("content") or "-",
            c["kind"],
            c["outcome"],
            c["side"] or "",
            f"{p['engine']}→{s['engine']}",
            f"{_score(p['score'])} / {_score(s['score'])}",
            str(c["difference_count"]),
            (c["reason"] or "")[:60],
            (c["created_at"] or "")[:19],
        )
    console.print(table)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@compare_app.command("show")
def compare_show(result_id: str, as_json: bool = AS_JSON) -> None:
    """One job's comparison with its differences (JSON path, primary value, shadow value)."""
    from gateway.compare.queries import for_result

    found = _with_sessions(lambda sessions: for_result(sessions, result_id))
    if found is None:
        typer.echo("no comparison for this result", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    for c in [found, *found["other_comparisons"]]:
        p, s = c["primary"], c["shadow"]
        console.print(f"[bold]{c['kind']}[/bold] {c['outcome']} {c['side'] or ''} {c['reason'] or ''}")
        console.print(
            f"  primary {p['engine']}: score {_score(p['score'])}, queue {_s(p['queue_seconds'])}, "
            f"run {_s(p['run_seconds'])}; shadow {s['engine']}: score {_score(s['score'])}, "
            f"queue {_s(s['queue_seconds'])}, run {_s(s['run_seconds'])}"
        )
        if c["differences"]:
            table = Table()
            for column in ("path", "primary", "shadow"):
                table.add_column(column, overflow="fold")
            for d in c["differences"]:
                table.add_row(d["path"], json.dumps(d["primary"]), json.dumps(d["shadow"]))
            console.print(table)


def replay(
    engine: str = typer.Option(..., help="The engine to run the stored jobs on again."),
    content: str | None = typer.Option(None, "--content", help="Course content id or path."),
    backend: str | None = typer.Option(None, "--backend", help="Execution backend slug."),
    since: datetime | None = typer.Option(None, help="Only jobs created since then."),
    limit: int = typer.Option(100, min=1, help="At most this many jobs."),
    rate: float = typer.Option(1.0, min=0.0, help="Legs per second (0: no limit)."),
    deadline_seconds: int = typer.Option(1800, min=1),
    properties: str | None = typer.Option(None, help="JSON laid over the backend's properties for the replay."),
    as_json: bool = AS_JSON,
) -> None:
    """Run stored finished jobs again on ENGINE as shadow legs (kind `replay`); resumable, never touches rows.

    The comparisons appear as the legs finish (the reconciler of a running gateway, or `gateway reconcile`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gateway.jobs.bootstrap import start_gateway
    from gateway.jobs.errors import JobError
    from gateway.jobs.replay import ReplayRequest
    from gateway.jobs.replay import replay as run_replay

    request = ReplayRequest(
        engine=engine,
        content=content,
        backend=backend,
        since=since,
        limit=limit,
        rate=rate,
        deadline_seconds=deadline_seconds,
        properties=json.loads(properties) if properties else None,
    )

    async def main() -> tuple[int, int]:
        state = start_gateway(get_settings())
        sent = skipped = 0
        try:
            columns = (TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("replay", total=None)
                async for step in run_replay(state, request):
                    progress.update(task, total=step.planned, advance=1)
                    sent, skipped = (sent + 1, skipped) if step.leg_id else (sent, skipped + 1)
        finally:
            await state.close()
        return sent, skipped

    try:
        sent, skipped = asyncio.run(main())
    except JobError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"engine": engine, "sent": sent, "skipped": skipped}))
        return
    console.print(f"{sent} replay legs sent on {engine}, {skipped} jobs skipped; see `gateway compare list`")


def register(app: typer.Typer) -> None:
    app.add_typer(shadow_app, name="shadow")
    app.add_typer(compare_app, name="compare")
    app.command("replay")(replay)
