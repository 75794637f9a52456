"""The runner: serve the deployments with a concurrency limit and a 1 s poll (imports Prefect).

Prefect's default poll is 10 s, which adds up to 10 s to every job; 1 s costs one cheap query per second.
`PREFECT_API_URL` is exported before Prefect is imported: without it Prefect would start an ephemeral server
inside this process (and again in every flow-run subprocess), about 12 s per run.
"""

from __future__ import annotations

import os

from backends.prefect import names
from common.settings import Settings, get_settings


def export_prefect_env(settings: Settings, poll_seconds: float) -> None:
    """Environment every Prefect process started from here inherits (the runner's flow-run subprocesses too)."""
    os.environ["PREFECT_API_URL"] = settings.prefect_api()
    os.environ["PREFECT_RUNNER_POLL_FREQUENCY"] = str(max(1, int(poll_seconds)))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if settings.prefect_api_auth_string is not None:  # the server's basic auth, sent by Prefect's own client
        os.environ["PREFECT_API_AUTH_STRING"] = settings.prefect_api_auth_string.get_secret_value()


def serve_deployments(
    limit: int = 4,
    poll_seconds: float = 1.0,
    test_flows: bool = False,
    settings: Settings | None = None,
    deployment_name: str = names.DEPLOYMENT,
) -> None:
    """Block serving `test-assignment/system` and `submit-result/system` (plus test flows when asked).

    `deployment_name` other than `system` gives a separate set of deployments (a second, isolated runner).
    """
    settings = settings or get_settings()
    from backends.work.sandbox import sandbox_health

    refusal = sandbox_health(settings)
    if refusal is not None:  # a runner that cannot isolate student code must not take test runs
        raise SystemExit(f"this runner refuses to grade: {refusal}")
    export_prefect_env(settings, poll_seconds)

    from prefect import serve
    from prefect.deployments.runner import EntrypointType

    from backends.prefect.flows import SHIPPED_FLOWS

    flows = list(SHIPPED_FLOWS)
    if test_flows:
        from backends.prefect.testing_flows import TEST_FLOWS

        flows.extend(TEST_FLOWS)
    deployments = [f.to_deployment(name=deployment_name, entrypoint_type=EntrypointType.MODULE_PATH) for f in flows]
    # pause_on_shutdown=False: stopping one runner must not change the deployments another runner serves.
    serve(
        *deployments,
        limit=limit,
        query_seconds=poll_seconds,
        print_starting_message=False,
        pause_on_shutdown=False,
    )
