"""The store's migration on both databases, and the API's refusal to start on an out-of-date schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from common.settings import Settings
from gateway.store.db import make_sync_engine
from gateway.store.migrate import SchemaOutOfDate, check_schema, ensure_schema, head_revision, upgrade

TABLES = {"execution_backend", "course_content", "course_member", "result", "leg", "users", "alembic_version"}


def _tables(settings: Settings) -> set[str]:
    engine = make_sync_engine(settings)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_embedded_default_upgrades_itself(isolated_env: Path) -> None:
    settings = Settings()
    ensure_schema(settings)
    assert _tables(settings) >= TABLES
    check_schema(settings)  # at head now: no error
    assert (isolated_env / "gateway.sqlite").exists()


@pytest.mark.postgres
def test_postgres_refuses_until_upgraded(isolated_env: Path, postgres_db, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import psycopg2

    # A database of its own, so the session-wide one (shared with other tests) is not touched.
    name = postgres_db.name + "_mig"
    admin = psycopg2.connect(host=postgres_db.host, port=postgres_db.port, user=postgres_db.user, dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = Settings(postgres_host=postgres_db.host, postgres_port=postgres_db.port, postgres_db=name)
        with pytest.raises(SchemaOutOfDate) as err:
            ensure_schema(settings)
        hint = str(err.value)
        assert "gateway db upgrade" in hint and "\n" not in hint
        # One revision behind is out of date too, and the upgrade brings it to head.
        upgrade(settings, revision="0001")
        with pytest.raises(SchemaOutOfDate):
            check_schema(settings)
        upgrade(settings)
        check_schema(settings)
        assert _tables(settings) >= TABLES
        conn = psycopg2.connect(host=postgres_db.host, port=postgres_db.port, user=postgres_db.user, dbname=name)
        try:
            with conn.cursor() as cur:
                cur.execute("select version_num from alembic_version")
                assert cur.fetchall() == [(head_revision(settings),)]  # one head, and the database is at it
                cur.execute("select 1 from pg_indexes where indexname = 'ix_leg_engine_run_id'")
                assert cur.fetchone() == (1,)
        finally:
            conn.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_0007_gives_the_comparisons_recorded_before_it_their_cluster_signature(isolated_env: Path) -> None:
    """Mismatches (and noise) recorded at 0006 get the signature the compare step gives new ones; a match none."""
    import json
    import sqlite3

    from gateway.cutover.triage import signature_of

    settings = Settings()
    upgrade(settings, revision="0006_cutover")
    diff = [{"path": '$.tests["t.py"].tests["test_add"].result', "primary": "PASSED", "shadow": "FAILED",
             "test": "t.py::test_add"}]  # fmt: skip
    rows = {"c-mismatch": ("mismatch", diff), "c-noise": ("noise", diff), "c-match": ("match", None)}
    db = sqlite3.connect(isolated_env / "gateway.sqlite")  # no foreign keys: no result row needed for this
    try:
        with db:
            for comparison_id, (outcome, differences) in rows.items():
                db.execute(
                    "insert into comparison (id, result_id, primary_leg_id, shadow_leg_id, kind, primary_engine,"
                    " shadow_engine, outcome, differences, difference_count, created_at)"
                    " values (?, 'r', 'p', ?, 'shadow', 'prefect', 'celery', ?, ?, 1, '2026-12-01 00:00:00')",
                    (comparison_id, comparison_id, outcome, json.dumps(differences) if differences else None),
                )
        upgrade(settings)
        found = dict(db.execute("select id, signature from comparison").fetchall())
    finally:
        db.close()
    assert found == {
        "c-mismatch": signature_of("mismatch", diff),
        "c-noise": signature_of("noise", diff),
        "c-match": None,
    }
