"""The runner: serve the deployments with a concurrency limit and a 1 s poll (imports Prefect).

Prefect's default poll is 10 s, which adds up to 10 s to every job; 1 s costs one cheap query per second.
`PREFECT_API_URL` is exported before Prefect is imported: without it Prefect would start an ephemeral server
inside this process (and again in every flow-run subprocess), about 12 s per run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from backends.prefect import names
from common.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Seconds between two starts of a runner that keeps failing, at most (1 s doubling up to this).
RESTART_BACKOFF_MAX = 30.0


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
    options = {"limit": limit, "query_seconds": poll_seconds, "print_starting_message": False}
    serve_until_stopped(lambda: serve(*deployments, **options, pause_on_shutdown=False))


def serve_until_stopped(serve_once: Callable[[], None], sleep: Callable[[float], None] = time.sleep) -> None:
    """Run the runner again, with a backoff, each time it fails; return when it ends cleanly (a signal).

    Why: a runner's loops may end it with "Service exceeded error threshold" after a few failed calls in a row
    (its server's database away for half a minute, issue 24), and nobody would serve the deployments after that.
    """
    for attempt in Retrying(
        retry=retry_if_exception_type(Exception),
        wait=wait_exponential(multiplier=1, min=1, max=RESTART_BACKOFF_MAX),
        before_sleep=_log_restart,
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            serve_once()


def _log_restart(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    logger.warning("the runner stopped (%r); serving again in %.0f s", error, wait)
