"""`gateway run-tests` and `gateway example`: the work run locally, with no engine.

`run-tests` prints the report JSON and exits 0 whenever a report was produced, whatever the score; on an
infrastructure failure or bad input it prints one line to stderr and exits 2 (bad input) or 1 (infrastructure).
`example` materializes the bundled example repositories and runs both student solutions.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from backends.work.errors import BadJobError, InfrastructureError
from common.legacy import Repository, TestJob
from common.redact import redact_text

EXIT_INFRA = 1
EXIT_BAD_INPUT = 2


def _split(value: str, option: str) -> tuple[str, str]:
    """`URL@COMMIT`: split at the LAST '@' so `ssh://git@host/x.git@abc123` works."""
    url, sep, commit = value.rpartition("@")
    if not sep or not url or not commit or "/" in commit or ":" in commit:
        raise BadJobError(f"{option} must be URL@COMMIT")
    return url, commit


def _fail(exc: InfrastructureError) -> typer.Exit:
    code = EXIT_BAD_INPUT if isinstance(exc, BadJobError) else EXIT_INFRA
    kind = "bad input" if code == EXIT_BAD_INPUT else "infrastructure error"
    typer.echo(f"error ({kind}): {redact_text(exc.message)}", err=True)
    return typer.Exit(code)


def run_tests(
    module: str = typer.Option(..., "--module", help="The student repository as URL@COMMIT."),
    reference: str = typer.Option(..., "--reference", help="The assignment repository as URL@COMMIT."),
    path: str = typer.Option(..., "--path", help="The assignment directory in both repositories."),
    credential: str | None = typer.Option(None, "--credential", help="Secret-store name for both repositories."),
    indent: int | None = typer.Option(2, "--indent", help="JSON indentation (0 for one line)."),
) -> None:
    """Run an assignment's tests on a student's commit and print the legacy report JSON."""
    from backends.work.student_testing import run_student_testing

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        m_url, m_commit = _split(module, "--module")
        r_url, r_commit = _split(reference, "--reference")
        job = TestJob(
            user_id="cli",
            module=Repository(url=m_url, commit=m_commit, path=path, credential=credential),
            reference=Repository(url=r_url, commit=r_commit, path=path, credential=credential),
        )
        report = run_student_testing(job)
    except InfrastructureError as exc:
        raise _fail(exc) from None
    typer.echo(json.dumps(report, indent=indent or None))


def example(
    dest: Path = typer.Option(None, "--dest", help="Where to create the example repositories (default: data dir)."),
) -> None:
    """Create the bundled example's repositories and test both student solutions (one passes, one fails)."""
    from backends.examples import materialize_example
    from backends.work.report import report_score
    from backends.work.student_testing import run_student_testing
    from common.settings import get_settings

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    target = dest or get_settings().data_dir / "example"
    repos = materialize_example(target)
    typer.echo(f"example repositories under {target} (assignment {repos.path})")
    for student in ("passing", "failing"):
        try:
            report = run_student_testing(repos.test_job(student))
        except InfrastructureError as exc:
            raise _fail(exc) from None
        summary = report["summary"]
        typer.echo(
            f"{student:8} {summary['passed']}/{summary['total']} passed  result={report_score(report):.2f}  "
            f"status={report['status']}"
        )
        for collection in report["tests"]:
            for test in collection["tests"]:
                if test["result"] == "FAILED":
                    first = (test["resultMessage"] or "").splitlines()[:1]
                    typer.echo(f"         FAILED {collection['name']}::{test['name']}: {' '.join(first)}")


def register(app: typer.Typer) -> None:
    app.command("run-tests")(run_tests)
    app.command("example")(example)
