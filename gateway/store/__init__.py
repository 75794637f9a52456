"""The gateway's own store: the legacy tables, legs, the course catalog and users (SQLAlchemy 2, Alembic)."""
