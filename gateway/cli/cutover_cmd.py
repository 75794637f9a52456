"""`gateway cutover status|set|promote|demote|rollback|evaluate|history|accept|unaccept`: the cutover from the
command line.

Talks to the database directly (like `gateway catalog load`), through the same service as the admin API, so a
change made here is validated, versioned and logged the same way (actor `cli:<user>`). `--dry-run` prints what
would change and, with `--member`/`--sample`, where those members' next jobs would go; it saves nothing.
"""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from common.settings import get_settings
from gateway.cli import output

cutover_app = typer.Typer(help="Move a backend or a course content from one engine to another, stage by stage.")
T = TypeVar("T")

BACKEND = typer.Option(None, "--backend", help="Execution backend slug or id.")
CONTENT = typer.Option(None, "--content", help="Course content id or path (overrides its backend's migration).")
REASON = typer.Option("", "--reason", help="Why: kept in the event log.")
DRY_RUN = typer.Option(False, "--dry-run", help="Show what would change and where jobs would go; save nothing.")
MEMBER = typer.Option(None, "--member", help="Preview where this member's next job goes (repeatable).")
SAMPLE = typer.Option(0, "--sample", help="Preview for the first N course members.")
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _run(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    from gateway.store.db import make_async_engine, make_sessionmaker
    from gateway.store.migrate import ensure_schema

    settings = get_settings()
    ensure_schema(settings)

    async def main() -> T:
        engine = make_async_engine(settings)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _scope(backend: str | None, content: str | None) -> tuple[Any, str]:
    from gateway.cutover.stages import Scope

    if bool(backend) == bool(content):
        raise typer.BadParameter("give exactly one of --backend and --content")
    return (Scope.BACKEND, backend) if backend else (Scope.CONTENT, content)  # type: ignore[return-value]


def _fail(exc: Exception) -> None:
    typer.echo(f"refused: {exc}", err=True)
    raise typer.Exit(1)


def _run_or_fail(
    work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[dict[str, Any]]], as_json: bool
) -> dict[str, Any] | None:
    """Run a change; a refusal exits 1 with its reason. With `--json` the answer is printed here and None returned,
    otherwise the answer is returned for the caller's table."""
    from gateway.jobs.errors import JobError

    try:
        out = _run(output.named(work))
    except JobError as exc:
        _fail(exc)
        return None
    if as_json:
        typer.echo(json.dumps(out, indent=2, default=str))
        return None
    return out


def _change(action: str, backend: str | None, content: str | None, as_json: bool, **kw: Any) -> None:
    from gateway.cutover.stage_machine import Action
    from gateway.jobs import cutover_changes as service

    scope, key = _scope(backend, content)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
        result = await service.change_migration(
            sessions, scope, key, Action(action), actor=f"cli:{getpass.getuser()}", **kw
        )
        return result.to_dict()

    out = _run_or_fail(work, as_json)
    if out is not None:
        _print_change(out)


def _print_change(out: dict[str, Any]) -> None:
    console = output.console()
    after = out["after"]
    if out["noop"]:
        verb = "nothing to change"
    elif out["dry_run"]:
        verb = "dry run: would change"
    else:
        verb = f"changed (version {after['version']})"
    console.print(f"[bold]{out['action']}[/] {after['scope']} {after['label']}: {verb}")
    table = Table("field", "from", "to")
    for name, pair in out["changed"].items():
        table.add_row(name, json.dumps(pair["from"]), json.dumps(pair["to"]))
    if out["changed"]:
        console.print(table)
    if out["preview"]:
        preview = Table("content", "member", "bucket", "next job now", "after", "moves")
        for p in out["preview"]:
            now = p["before"] + (f" (+{p['before_shadow']} shadow)" if p["before_shadow"] else "")
            then = p["after"] + (f" (+{p['after_shadow']} shadow)" if p["after_shadow"] else "")
            preview.add_row(p["content"], p["member"], str(p["bucket"]), now, then, "yes" if p["moves"] else "")
        console.print(preview)
        s = out["preview_summary"]
        console.print(f"{s['moving']} of {s['members']} previewed (content, member) pairs change engine")


@cutover_app.command("set")
def set_(
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    stage: str | None = typer.Option(None, help="old_only | shadow | canary | new_primary | new_only"),
    percentage: float | None = typer.Option(None, help="Canary: percent of members the new engine answers for."),
    new_engine: str | None = typer.Option(None, help="The engine to move to (needed for a new migration)."),
    old_engine: str | None = typer.Option(None, help="The engine to move from (default: the backend's type)."),
    policy: str | None = typer.Option(None, help="manual | auto"),
    answer_policy: str | None = typer.Option(
        None, help="primary | verified: in canary, whether a row waits for the old engine's verdict (default verified)."
    ),
    shadow_fraction: float | None = typer.Option(None, help="0..1 of jobs the other engine shadows."),
    canary_steps: str | None = typer.Option(None, help="Comma-separated percentages, e.g. 5,25,50,100."),
    min_stage_seconds: float | None = typer.Option(None, help="Minimum time in a stage before auto promotion."),
    min_samples: int | None = typer.Option(None, help="Gate: no rate is judged on fewer comparisons (a floor)."),
    max_mismatch_rate: float | None = typer.Option(None, help="Gate: noise-adjusted mismatch rate, 0..1."),
    max_infra_error_rate: float | None = typer.Option(None, help="Gate: the new engine's infra-error rate, 0..1."),
    max_p99_ratio: float | None = typer.Option(None, help="Gate: new p99 run time / old p99 run time."),
    confidence: float | None = typer.Option(None, help="Gate: level of the rates' intervals, e.g. 0.95."),
    parity: str | None = typer.Option(
        None,
        help="Gate: environment fields that must be equal, comma-separated (e.g. python,pytest,limits); '-': none.",
    ),
    reason: str = REASON,
    dry_run: bool = DRY_RUN,
    member: list[str] | None = MEMBER,
    sample: int = SAMPLE,
    as_json: bool = AS_JSON,
) -> None:
    """Set a stage (and percentage) or the migration's settings; creates the migration on first use."""
    from gateway.cutover.stages import Stage

    thresholds = {
        k: v
        for k, v in {
            "min_samples": min_samples,
            "max_mismatch_rate": max_mismatch_rate,
            "max_infra_error_rate": max_infra_error_rate,
            "max_p99_ratio": max_p99_ratio,
            "confidence": confidence,
            "parity": None if parity is None else [f.strip() for f in parity.split(",") if f.strip() not in ("", "-")],
        }.items()
        if v is not None
    }
    _change(
        "set" if stage else "configure",
        backend,
        content,
        as_json,
        stage=Stage(stage) if stage else None,
        percentage=percentage,
        new_engine=new_engine,
        old_engine=old_engine,
        policy=policy,
        answer_policy=answer_policy,
        shadow_fraction=shadow_fraction,
        canary_steps=[float(s) for s in canary_steps.split(",")] if canary_steps else None,
        min_stage_seconds=min_stage_seconds,
        thresholds=thresholds or None,
        reason=reason,
        dry_run=dry_run,
        members=member or [],
        sample=sample,
    )


@cutover_app.command()
def promote(
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    reason: str = REASON,
    dry_run: bool = DRY_RUN,
    member: list[str] | None = MEMBER,
    sample: int = SAMPLE,
    as_json: bool = AS_JSON,
) -> None:
    """One step forward (shadow → canary 5 % → 25 % → ... → new_primary → new_only)."""
    _change("promote", backend, content, as_json, reason=reason, dry_run=dry_run, members=member or [], sample=sample)


@cutover_app.command()
def demote(
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    reason: str = REASON,
    dry_run: bool = DRY_RUN,
    member: list[str] | None = MEMBER,
    sample: int = SAMPLE,
    as_json: bool = AS_JSON,
) -> None:
    """One stage back."""
    _change("demote", backend, content, as_json, reason=reason, dry_run=dry_run, members=member or [], sample=sample)


@cutover_app.command()
def rollback(
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    to: str = typer.Option("old_only", "--to", help="The earlier stage to go back to."),
    reason: str = REASON,
    dry_run: bool = DRY_RUN,
    member: list[str] | None = MEMBER,
    sample: int = SAMPLE,
    as_json: bool = AS_JSON,
) -> None:
    """Straight back to an earlier stage (old_only by default). Jobs in flight finish where they were admitted."""
    from gateway.cutover.stages import Stage

    _change(
        "rollback",
        backend,
        content,
        as_json,
        stage=Stage(to),
        reason=reason,
        dry_run=dry_run,
        members=member or [],
        sample=sample,
    )


@cutover_app.command()
def history(
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    limit: int = typer.Option(50, help="How many events, newest first."),
    as_json: bool = AS_JSON,
) -> None:
    """Every change: who, when, from, to, why."""
    from gateway.jobs import cutover_changes as service
    from gateway.store import cutover_configs as store

    async def work(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
        if backend or content:
            scope, key = _scope(backend, content)
            ref, _config = await service.current(sessions, scope, key)
            events = await store.history(sessions, scope, ref.scope_id, limit)
        else:
            events = await store.history(sessions, limit=limit)
        return [service.event_dict(e) for e in events]

    rows = _run(output.named(work))
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("at", "scope", "version", "action", "actor", "from", "to", "reason")
    for e in rows:
        old = f"{e['from_stage']} {e['from_percentage']:g}%" if e["from_stage"] else "-"
        table.add_row(
            e["at"][:19],
            f"{e['scope']} {e['label']}",
            str(e["version"]),
            e["action"],
            e["actor"],
            old,
            f"{e['to_stage']} {e['to_percentage']:g}%",
            _event_why(e),
        )
    output.console().print(table)


def _event_why(event: dict[str, Any]) -> str:
    cluster = event.get("cluster")
    if not cluster:
        return str(event["reason"])
    until = f" until {cluster['expires_at'][:19]}" if event["action"] == "accept" else ""
    return f"cluster {cluster['signature']}{until}: {event['reason'] or cluster['note']}"


@cutover_app.command()
def status(as_json: bool = AS_JSON) -> None:
    """The scorecard: stage, time in it, parity, per-engine errors and p99, and what the next gate still needs."""
    from gateway.jobs.scorecard import scorecard

    cards = _run(scorecard)
    if as_json:
        typer.echo(json.dumps(cards, indent=2, default=str))
        return
    table = Table(
        "migration", "engines", "stage", "in stage", "samples", "mismatch (interval)", "parity (raw)", "infra err new",
        "p99 old/new", "environment",
        "gate", "next gate needs", "clusters open / accepted",
    )  # fmt: skip
    for c in cards:
        new, old = c["engines"][c["new_engine"]], c["engines"][c["old_engine"]]
        table.add_row(
            f"{c['scope']} {c['label']}",
            f"{c['old_engine']} → {c['new_engine']}",
            c["stage"] + (f" {c['percentage']:g}%" if c["stage"] == "canary" else ""),
            _duration(c["seconds_in_stage"]),
            str(c["samples"]),
            c["mismatch"]["text"] if c.get("mismatch") else "-",
            f"{_pct(c['parity'])} ({_pct(c['parity_raw'])})",
            new["infra_error"]["text"],
            f"{_secs(old['p99_seconds'])} / {_secs(new['p99_seconds'])}",
            (c.get("environment") or {}).get("text", "-"),
            f"{c['evaluation']['verdict']} ({c['evaluation']['decided_by']})"
            + (" · paused" if c.get("paused") else ""),
            "; ".join(c["needs"]) or "-",
            f"{len(c['clusters'])} / {len(c['accepted_clusters'])} ({_mismatches(c['accepted_mismatches'])})",
        )
    console = output.console()
    console.print(table)
    clusters = Table("migration", "signature", "status", "count", "tests / paths", "acceptance")
    for c in cards:
        for cluster in [*c["clusters"], *c["accepted_clusters"]]:
            accepted = cluster["acceptance"]
            clusters.add_row(
                f"{c['scope']} {c['label']}",
                cluster["signature"] or "-",
                cluster["status"],
                str(cluster["count"]),
                ", ".join(cluster["tests"] or cluster["paths"]) or "-",
                f"{accepted['note']} (by {accepted['accepted_by']}, until {accepted['expires_at'][:19]})"
                if accepted
                else "-",
            )
    if clusters.row_count:
        console.print("mismatch clusters (open count against the gate; accepted ones do not until they expire)")
        console.print(clusters)


@cutover_app.command()
def evaluate(
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Evaluate and say what would happen; change nothing."),
    as_json: bool = AS_JSON,
) -> None:
    """Evaluate the gates now (one migration, or all) and take the policy's step unless --dry-run."""
    from gateway.jobs import cutover_changes as service
    from gateway.jobs import cutover_gates as gates

    async def work(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
        if backend or content:
            scope, key = _scope(backend, content)
            _ref, config = await service.current(sessions, scope, key)
            if config is None:
                raise typer.BadParameter(f"no migration for {scope.value} {key}")
            return [(await gates.evaluate_one(sessions, config, dry_run=dry_run)).to_dict()]
        return [run.to_dict() for run in await gates.evaluate_all(sessions, dry_run=dry_run)]

    runs = _run(output.named(work))
    if as_json:
        typer.echo(json.dumps(runs, indent=2, default=str))
        return
    table = Table("migration", "stage", "verdict", "decided by", "needs", "step", "applied")
    for r in runs:
        ev = r["evaluation"]
        table.add_row(
            f"{r['scope']} {r['label']}",
            r["stage"] + (f" {r['percentage']:g}%" if r["stage"] == "canary" else ""),
            ev["verdict"],
            ev["decided_by"],
            "; ".join(ev["needs"]) or "-",
            f"{r['next']['step']}: {r['next']['why']}",
            "yes" if r["applied"] else ("dry run" if dry_run else "no"),
        )
    output.console().print(table)


def _expiry(text: str) -> tuple[datetime | None, timedelta | None]:
    """An instant with a zone (2026-12-31T00:00:00Z) or an ISO 8601 duration from now (P14D, PT12H)."""
    from pydantic import AwareDatetime, TypeAdapter, ValidationError

    for kind in (AwareDatetime, timedelta):
        try:
            value = TypeAdapter(kind).validate_python(text)
        except ValidationError:
            continue
        return (value, None) if isinstance(value, datetime) else (None, value)
    raise typer.BadParameter(f"--expires: neither an instant with a zone nor an ISO 8601 duration: {text!r}")


def _triage(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[dict[str, Any]]], as_json: bool) -> None:
    out = _run_or_fail(work, as_json)
    if out is None:
        return
    event = out["event"]
    output.console().print(f"[bold]{event['action']}[/] {event['scope']} {event['label']}: {_event_why(event)}")


def _hold(action: str, backend: str | None, content: str | None, reason: str, as_json: bool) -> None:
    from gateway.cutover.hold import HoldAction
    from gateway.jobs.cutover_holds import set_hold

    scope, key = _scope(backend, content)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
        return await set_hold(sessions, scope, key, HoldAction(action), f"cli:{getpass.getuser()}", reason)

    out = _run_or_fail(work, as_json)
    if out is None:
        return
    event = out["event"]
    state = "paused" if out["paused"] else "running"
    output.console().print(f"[bold]{event['action']}[/] {event['scope']} {event['label']}: automation {state}")


@cutover_app.command()
def pause(backend: str | None = BACKEND, content: str | None = CONTENT, reason: str = REASON,
          as_json: bool = AS_JSON) -> None:  # fmt: skip
    """Pause automatic promotion (a manual rollback or demotion does this on its own); the gate still demotes."""
    _hold("pause", backend, content, reason, as_json)


@cutover_app.command()
def resume(backend: str | None = BACKEND, content: str | None = CONTENT, reason: str = REASON,
           as_json: bool = AS_JSON) -> None:  # fmt: skip
    """Let the gate promote again after an operator's rollback, demotion or pause."""
    _hold("resume", backend, content, reason, as_json)


@cutover_app.command()
def accept(
    signature: str = typer.Argument(..., help="The cluster's signature (see `gateway cutover status`)."),
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    note: str = typer.Option(..., "--note", help="Why this difference is intended: kept in the event log."),
    expires: str = typer.Option(..., "--expires", help="Until when: 2026-12-31T00:00:00Z, or a duration: P14D."),
    as_json: bool = AS_JSON,
) -> None:
    """Accept a mismatch cluster as a known, intended difference: it stops counting against the gate until it
    expires (accepting again replaces the note and the expiry)."""
    from gateway.jobs import cutover_triage as triage

    scope, key = _scope(backend, content)
    expires_at, expires_in = _expiry(expires)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
        actor = f"cli:{getpass.getuser()}"
        return await triage.accept_cluster(sessions, scope, key, signature, actor, note, expires_at, expires_in)

    _triage(work, as_json)


@cutover_app.command()
def unaccept(
    signature: str = typer.Argument(..., help="The accepted cluster's signature."),
    backend: str | None = BACKEND,
    content: str | None = CONTENT,
    reason: str = REASON,
    as_json: bool = AS_JSON,
) -> None:
    """Withdraw an acceptance: the cluster's mismatches count against the gate again."""
    from gateway.jobs import cutover_triage as triage

    scope, key = _scope(backend, content)

    async def work(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
        return await triage.unaccept_cluster(sessions, scope, key, signature, f"cli:{getpass.getuser()}", reason)

    _triage(work, as_json)


def _mismatches(count: int) -> str:
    return f"{count} mismatch" if count == 1 else f"{count} mismatches"


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f} %"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def register(app: typer.Typer) -> None:
    app.add_typer(cutover_app, name="cutover")
