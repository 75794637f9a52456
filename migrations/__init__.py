"""The store's Alembic environment (`env.py`) and revisions (`versions/`), at the top of the checkout.

Installed as the package `gateway_migrations` (pyproject's `package-dir` maps it), so a non-editable install, the
Docker image's, carries them; `gateway.store.migrate` finds them through that name."""
