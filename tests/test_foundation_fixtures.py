"""The shared fixtures and settings themselves: real services, redaction, the embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.redact import redact_text, redact_url
from common.settings import Settings, get_settings


def test_embedded_default_needs_no_server(isolated_env: Path) -> None:
    settings = get_settings()
    assert settings.broker_url() == "filesystem://"
    assert settings.result_backend_url().startswith("db+sqlite:///")
    assert settings.database_url().startswith("sqlite:///")
    assert str(isolated_env) in settings.database_url()


def test_service_urls_name_their_driver(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_PASSWORD", "p@ss/word")
    monkeypatch.setenv("REDIS_HOST", "cache.example")
    monkeypatch.setenv("REDIS_PASSWORD", "r3dis")
    settings = Settings()
    assert settings.result_backend_url().startswith("db+postgresql+psycopg2://")
    assert settings.database_url().startswith("postgresql+psycopg2://")
    assert settings.broker_url() == "redis://:r3dis@cache.example:6379/0"
    # The password is percent-encoded in the URL and never visible once redacted.
    assert "p%40ss%2Fword" in settings.database_url()
    assert "p%40ss" not in redact_url(settings.database_url())
    assert redact_url(settings.broker_url()) == "redis://:***@cache.example:6379/0"
    assert "r3dis" not in repr(settings)


def test_redact_text_hides_passwords_inside_messages() -> None:
    text = "Error 111 connecting to redis://:hunter2@127.0.0.1:6379/0 and db+postgresql://u:pw@h/db"
    cleaned = redact_text(text)
    assert "hunter2" not in cleaned and ":pw@" not in cleaned
    assert "redis://:***@127.0.0.1:6379/0" in cleaned


def test_postgres_fixture_gives_a_fresh_database(postgres_db) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_db.url())
    with engine.begin() as conn:
        assert conn.execute(sa.text("select current_database()")).scalar() == postgres_db.name
        conn.execute(sa.text("create table fixture_probe (id int)"))
        conn.execute(sa.text("drop table fixture_probe"))
    engine.dispose()
    # The name is unique to this session: no other run can have written into it.
    assert postgres_db.name.startswith("gwtest_") and len(postgres_db.name) == len("gwtest_") + 12


def test_redis_fixture_holds_its_own_database(redis_db) -> None:  # type: ignore[no-untyped-def]
    import redis

    admin = redis.Redis(host=redis_db.host, port=redis_db.port, db=0)
    # The lock key in db 0 says this database number belongs to this test session until it ends.
    assert admin.get(f"gateway-tests:lock:{redis_db.db}") is not None
    assert 1 <= redis_db.db <= 15


def test_git_factory_makes_real_commits(git_repo) -> None:  # type: ignore[no-untyped-def]
    repo = git_repo("student", {"a.py": "x = 1\n"})
    first = repo.commit({"a.py": "x = 2\n"})
    assert len(first) == 40
    assert (repo.path / ".git").is_dir()
