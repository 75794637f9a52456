"""The Prefect engine: the legacy flows, the runner that serves them, and the httpx-only adapter.

Only `flows`, `testing_flows` and `serve` import the Prefect SDK; `adapter`, `names`, `labels`, `states` and
`results` must stay importable without it (the gateway process never pays Prefect's import cost).
"""
