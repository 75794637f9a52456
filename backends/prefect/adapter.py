"""`PrefectAdapter`: the gateway's view of Prefect, through its REST API with one pooled httpx client.

The gateway process must not import the Prefect SDK (about 2 s of import, and it pins FastAPI), so this module
speaks HTTP only. It works with any deployment given its `flow/deployment` name, including ones the gateway did
not write: submit, state and progress come from the API; the result only where the flow persisted JSON.

- submit: `POST /deployments/{id}/create_flow_run` with `idempotency_key=leg_id`: a retried submit returns
  the same run instead of starting a second one. The run is also named and tagged with the leg id, so the
  gateway's `test_system_id` is what an operator searches for in Prefect.
- poll: one `POST /flow_runs/filter` by idempotency key for many legs; progress rides along as labels.
  Non-final runs are also checked against their deployment's `last_polled`/status (one more call, only when
  something is in flight), so a runner that stopped polling shows up as `LegState.stalled`; a `Late` run whose
  runner still polls is only queued behind a busy runner and is not stalled.
- completions: Prefect's event stream (`backends.prefect.events`) names the runs that reached a final state, so
  the gateway closes their legs at once (`CompletionFeed`), not at its next tick; polling stays the safety net.
- cancel: propose CANCELLING (the server cancels a SCHEDULED run at once, a runner kills a running one); a
  run left CANCELLING longer than the grace period while no runner polls is forced to CANCELLED.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import RetryCallState, retry, retry_if_result, stop_after_attempt, wait_exponential

from backends.interface import (
    DeploymentNotFound,
    EngineConfigurationError,
    EngineUnavailable,
    Health,
    JobSpec,
    LegPhase,
    LegResult,
    LegState,
    TaskKind,
    WorkerInfo,
)
from backends.prefect import labels as label_keys
from backends.prefect.events import flow_run_completions
from backends.prefect.names import DEFAULT_DEPLOYMENTS, RESULTS_SUBDIR
from backends.prefect.results import ResultUnavailable, read_persisted_result
from backends.prefect.states import ACTIVE_TYPES, WAITING_TYPES, phase_for
from common.engines import Engine
from common.redact import redact_text, redact_url
from common.settings import Settings, get_settings

_RETRY_STATUS = {429, 502, 503, 504}
# A busy answer is retried after 0.1 s, 0.2 s ... 1.6 s (five retries), then it stands.
_RETRIES = 5
_FIRST_DELAY = 0.1


def _busy(response: httpx.Response) -> bool:
    return response.status_code in _RETRY_STATUS


def _last_answer(state: RetryCallState) -> httpx.Response:
    """Out of retries: the last busy answer is the answer (`_request` turns a 5xx into EngineUnavailable)."""
    assert state.outcome is not None
    response: httpx.Response = state.outcome.result()
    return response


SHADOW_TAG = "shadow"  # the tag of a shadow run (a comparison leg), beside `user:<id>` and the leg id
PAGE = 200  # the server's default maximum page size (PREFECT_API_DEFAULT_LIMIT)
_EXC_TYPE = re.compile(r"exception: (?P<type>[A-Za-z_][\w.]*):")


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _user_id(params: dict[str, Any]) -> str | None:
    """The user a run is for, in any parameter shape: `test_job`, the gateway's `submission.test_job`, or the
    platform's `Submission` (`submission.user_id`; the platform tagged its run `user:<id>` from it). The adapter
    sends every shape unchanged."""
    submission = params.get("submission")
    candidates = (
        params.get("test_job"),
        submission.get("test_job") if isinstance(submission, dict) else None,
        submission,
        params,
    )
    for value in candidates:
        if isinstance(value, dict) and value.get("user_id"):
            return str(value["user_id"])
    return None


class PrefectAdapter:
    """`EngineAdapter` for Prefect (engine = `Engine.PREFECT`); thread-safe as httpx.Client is."""

    engine = Engine.PREFECT
    # A missing deployment is the contract's 404 at submit: the request sends the run itself.
    refuses_at_submit = True

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        runner_stale_after: float = 30.0,
        cancel_grace_seconds: float = 60.0,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`runner_stale_after`: a deployment not polled for this long has no live runner (ours poll every 1 s).
        `cancel_grace_seconds`: how long a CANCELLING run may wait for a runner before it is forced CANCELLED."""
        self.settings = settings or get_settings()
        self.api_url = self.settings.prefect_api().rstrip("/")
        self.runner_stale_after = runner_stale_after
        self.cancel_grace_seconds = cancel_grace_seconds
        self._client = httpx.Client(
            base_url=self.api_url + "/",
            headers=self.settings.prefect_api_headers(),
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
        )
        self._deployment_ids: dict[str, str] = {}
        self._deployment_names: dict[str, str] = {}
        self._flow_names: dict[str, str] = {}

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------------------------------ HTTP
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API call; unreachable or failing server → EngineUnavailable (the caller retries later).

        A busy server answers 503 (SQLite "database is locked" under concurrent writers) or 429; those are
        retried briefly here, as Prefect's own client does. Every call is safe to repeat: creates carry the
        idempotency key, state proposals are idempotent.
        """
        response = self._send(method, path, **kwargs)
        if response.status_code >= 500:
            raise EngineUnavailable(
                f"Prefect API {method} {path} answered {response.status_code}: {redact_text(response.text[:200])}"
            )
        return response

    @retry(
        retry=retry_if_result(_busy),
        wait=wait_exponential(multiplier=_FIRST_DELAY),
        stop=stop_after_attempt(1 + _RETRIES),
        retry_error_callback=_last_answer,
    )
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, repeated while the server answers busy; an unreachable server is not retried here."""
        try:
            return self._client.request(method, path.lstrip("/"), **kwargs)
        except httpx.TransportError as exc:
            raise EngineUnavailable(
                f"Prefect API unreachable at {redact_url(self.api_url)}: {type(exc).__name__}"
            ) from exc

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code >= 400:
            raise EngineConfigurationError(
                f"Prefect API {method} {path} answered {response.status_code}: {redact_text(response.text[:300])}"
            )
        return response.json() if response.content else None

    # ----------------------------------------------------------------------------------------- deployments
    def deployment_name(self, job: JobSpec) -> str:
        """`execution_backend.properties.deployment`, else the shipped deployment for the job's kind."""
        name = job.properties.get("deployment") or DEFAULT_DEPLOYMENTS[TaskKind(job.kind)]
        return str(name)

    def deployment_id(self, name: str, *, refresh: bool = False) -> str:
        """The id of `flow/deployment`, cached; DeploymentNotFound when the server has no such deployment."""
        if not refresh and name in self._deployment_ids:
            return self._deployment_ids[name]
        flow, sep, deployment = name.partition("/")
        if not sep or not flow or not deployment:
            raise DeploymentNotFound(name)
        response = self._request("GET", f"deployments/name/{quote(flow, safe='')}/{quote(deployment, safe='')}")
        if response.status_code == 404:
            self._deployment_ids.pop(name, None)
            raise DeploymentNotFound(name)
        if response.status_code >= 400:
            raise EngineConfigurationError(f"reading deployment {name} answered {response.status_code}")
        deployment_id = str(response.json()["id"])
        self._deployment_ids[name] = deployment_id
        self._deployment_names[deployment_id] = name
        return deployment_id

    def _deployments(self, ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Deployments (all, or these ids) with their `last_polled` and `status`, names cached."""
        body: dict[str, Any] = {"limit": PAGE}
        if ids is not None:
            body["deployments"] = {"id": {"any_": ids}}
        found = self._json("POST", "deployments/filter", json=body) or []
        missing_flows = sorted({d["flow_id"] for d in found if d["flow_id"] not in self._flow_names})
        if missing_flows:
            flows = self._json("POST", "flows/filter", json={"flows": {"id": {"any_": missing_flows}}}) or []
            self._flow_names.update({f["id"]: f["name"] for f in flows})
        for d in found:
            name = f"{self._flow_names.get(d['flow_id'], d['flow_id'])}/{d['name']}"
            self._deployment_names[d["id"]] = name
            self._deployment_ids.setdefault(name, d["id"])
        return found

    def _runner_gone(self, deployment: dict[str, Any], now: datetime) -> str | None:
        """Why nothing serves this deployment right now, or None when a runner polled it recently."""
        name = self._deployment_names.get(deployment["id"], deployment["id"])
        last = _parse_time(deployment.get("last_polled"))
        if last is None:
            return f"no runner has ever polled deployment {name}"
        if now - last > timedelta(seconds=self.runner_stale_after):
            return f"no runner has polled deployment {name} since {last.isoformat()}"
        if deployment.get("status") == "NOT_READY" and now - last > timedelta(seconds=5):
            return f"deployment {name} is NOT_READY (last polled {last.isoformat()})"
        return None

    # ------------------------------------------------------------------------------------------------- submit
    def submit(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        """Create the flow run; the leg id is its idempotency key, its name and a tag (`shadow` too for a
        shadow run). No priority per run in Prefect.

        The name and the tag make the gateway's id (the legacy `test_system_id`) findable in Prefect's UI search
        and API (`flow_runs/filter` by name or tag); the flow run keeps its own id, which the gateway also accepts.
        A shadow run is tagged `shadow` too.
        """
        name = self.deployment_name(job)
        tags = [leg_id]
        user_id = _user_id(job.params)
        if user_id:
            tags.insert(0, f"user:{user_id}")
        if job.shadow:
            tags.append(SHADOW_TAG)
        body = {"parameters": job.params, "idempotency_key": leg_id, "name": leg_id, "tags": tags}
        for refresh in (False, True):
            deployment_id = self.deployment_id(name, refresh=refresh)
            response = self._request("POST", f"deployments/{deployment_id}/create_flow_run", json=body)
            if response.status_code == 404 and not refresh:
                continue  # the deployment was re-created under a new id since we cached it
            if response.status_code == 404:
                raise DeploymentNotFound(name)
            if response.status_code >= 400:
                raise EngineConfigurationError(
                    f"deployment {name} refused the run ({response.status_code}): {redact_text(response.text[:300])}"
                )
            return str(response.json()["id"])
        raise DeploymentNotFound(name)  # pragma: no cover - the loop always returns or raises

    def rerun(self, job: JobSpec, leg_id: str, priority: int = 8) -> str:
        """The same flow run scheduled again (what `prefect flow-run retry` does): the key and id stay the same.

        A run that never got created is created now; a COMPLETED run whose report can be read is left alone (one
        whose report cannot be read runs again: the gateway asks because of that).
        """
        run = self._runs_by_leg([leg_id]).get(leg_id)
        if run is None:
            return self.submit(job, leg_id, priority)
        done = phase_for((run.get("state") or {}).get("type")) is LegPhase.SUCCEEDED
        if not done or self._result_of(leg_id, run).report is None:
            self._set_state(run["id"], "SCHEDULED", "Scheduled", "run again by the gateway after a crash", True)
        return str(run["id"])

    # --------------------------------------------------------------------------------------------------- poll
    def _runs_by_leg(self, leg_ids: list[str]) -> dict[str, dict[str, Any]]:
        runs: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(list(dict.fromkeys(leg_ids)), PAGE):
            body = {"flow_runs": {"idempotency_key": {"any_": chunk}}, "sort": "EXPECTED_START_TIME_ASC"}
            body["limit"] = PAGE
            for run in self._json("POST", "flow_runs/filter", json=body) or []:
                runs[run["idempotency_key"]] = run  # the latest wins if two flows share a key
        return runs

    def _state(self, leg_id: str, run: dict[str, Any] | None, gone: dict[str, str | None]) -> LegState:
        if run is None:
            return LegState(leg_id=leg_id, phase=LegPhase.MISSING, native="MISSING")
        state = run.get("state") or {}
        phase = phase_for(state.get("type"))
        native = state.get("name") or state.get("type") or "UNKNOWN"
        stalled = lost = busy = None
        if (state.get("type") or "").upper() == "PENDING":
            lost = self._claimed_but_dead(state)
        if not phase.is_final and run.get("deployment_id"):
            # A Late run whose runner still polls is queued behind a busy runner (at its limit): late, waited for
            # up to its deadline, not a dead engine. Only a runner that stopped polling makes it stalled.
            reason = gone.get(run["deployment_id"])
            if reason and native == "Late":
                stalled = f"run is Late: {reason} (expected {run.get('expected_start_time')})"
            elif native == "Late":
                busy = f"run is Late behind a busy runner (expected {run.get('expected_start_time')})"
            else:
                stalled = reason
        error = None
        if phase in (LegPhase.FAILED, LegPhase.CRASHED, LegPhase.CANCELLED):
            error = state.get("message")
        return LegState(
            leg_id=leg_id,
            phase=phase,
            native=native,
            progress=label_keys.progress_from_labels(run.get("labels")),
            created_at=_parse_time(run.get("created")),
            started_at=_parse_time(run.get("start_time")),
            finished_at=_parse_time(run.get("end_time")) if phase.is_final else None,
            error=error,
            queue=self._deployment_names.get(run.get("deployment_id") or ""),
            engine_run_id=str(run["id"]),
            stalled=stalled,
            lost=lost,
            busy=busy,
        )

    def _claimed_but_dead(self, state: dict[str, Any]) -> str | None:
        """A run a runner claimed (PENDING) and never started for `prefect_pending_lost_seconds`: lost.

        Why: a runner moves its claimed run to RUNNING within seconds (the flow's process starting). One that died
        in between (its process gone, or `serve` exiting on a database outage) leaves it PENDING for ever: no runner
        queries PENDING runs, and a Late mark applies only to SCHEDULED ones. The gateway schedules it again."""
        since = _parse_time(state.get("timestamp"))
        if since is None:
            return None
        waited = (datetime.now(UTC) - since).total_seconds()
        if waited < self.settings.prefect_pending_lost_seconds:
            return None
        return f"claimed by a runner {waited:.0f} s ago ({state.get('name') or 'Pending'}) and never started"

    def _liveness(self, runs: list[dict[str, Any]]) -> dict[str, str | None]:
        """For the deployments of in-flight runs: why no runner serves them (None = a runner is alive)."""
        ids = sorted(
            {
                r["deployment_id"]
                for r in runs
                if r.get("deployment_id") and not phase_for((r.get("state") or {}).get("type")).is_final
            }
        )
        if not ids:
            return {}
        now = datetime.now(UTC)
        return {d["id"]: self._runner_gone(d, now) for d in self._deployments(ids)}

    async def completions(self) -> AsyncIterator[list[str]]:
        """Leg ids whose flow run reached a final state, pushed by Prefect's event stream (`CompletionFeed`,
        `backends.prefect.events`): the gateway closes such a leg at once instead of at its next tick."""
        secret = self.settings.prefect_api_auth_string
        feed = flow_run_completions(self.api_url, secret.get_secret_value() if secret else None)
        async with contextlib.aclosing(feed):
            async for leg_ids in feed:
                yield leg_ids

    def poll(self, leg_ids: list[str]) -> dict[str, LegState]:
        runs = self._runs_by_leg(leg_ids)
        gone = self._liveness(list(runs.values()))
        return {leg: self._state(leg, runs.get(leg), gone) for leg in leg_ids}

    # ------------------------------------------------------------------------------------------------- result
    def result(self, leg_id: str) -> LegResult:
        return self.results([leg_id])[leg_id]

    def results(self, leg_ids: list[str]) -> dict[str, LegResult]:
        """One `flow_runs/filter` call for all of them; each report is then read from the result storage."""
        runs = self._runs_by_leg(leg_ids)
        return {leg_id: self._result_of(leg_id, runs.get(leg_id)) for leg_id in leg_ids}

    def _result_of(self, leg_id: str, run: dict[str, Any] | None) -> LegResult:
        if run is None:
            return LegResult(leg_id=leg_id, phase=LegPhase.MISSING, error="no flow run for this leg")
        state = run.get("state") or {}
        phase = phase_for(state.get("type"))
        if not phase.is_final:
            return LegResult(leg_id=leg_id, phase=phase, error=f"flow run is {state.get('name')}, not finished")
        if phase is LegPhase.SUCCEEDED:
            try:
                report = read_persisted_result(state.get("data"), self.settings.data_dir / RESULTS_SUBDIR)
            except ResultUnavailable as exc:
                return LegResult(leg_id=leg_id, phase=phase, error=str(exc), error_type="ResultUnavailable")
            if not isinstance(report, dict):
                return LegResult(
                    leg_id=leg_id,
                    phase=phase,
                    error=f"the flow returned a {type(report).__name__}, not a report object",
                    error_type="ResultUnavailable",
                )
            return LegResult(leg_id=leg_id, phase=phase, report=report)
        message = state.get("message") or state.get("name") or phase.value
        labels = run.get("labels") or {}
        error_type = labels.get(label_keys.ERROR_TYPE)
        if not error_type:
            match = _EXC_TYPE.search(message)
            error_type = match["type"] if match else state.get("name")
        return LegResult(leg_id=leg_id, phase=phase, error=message, error_type=error_type)

    # ------------------------------------------------------------------------------------------------- cancel
    def _set_state(self, run_id: str, state_type: str, name: str, message: str, force: bool) -> None:
        body = {"state": {"type": state_type, "name": name, "message": message}, "force": force}
        self._json("POST", f"flow_runs/{run_id}/set_state", json=body)

    def cancel(self, leg_id: str) -> LegState:
        """Propose CANCELLING; call again after the grace period to force CANCELLED if no runner took it."""
        runs = self._runs_by_leg([leg_id])
        run = runs.get(leg_id)
        if run is None:
            return self._state(leg_id, None, {})
        state = run.get("state") or {}
        phase = phase_for(state.get("type"))
        if phase.is_final:
            return self._state(leg_id, run, {})
        if phase is LegPhase.CANCELLING:
            gone = self._liveness([run])
            since = _parse_time(state.get("timestamp")) or datetime.now(UTC)
            waited = (datetime.now(UTC) - since).total_seconds()
            reason = gone.get(run.get("deployment_id") or "")
            if reason and waited >= self.cancel_grace_seconds:
                self._set_state(run["id"], "CANCELLED", "Cancelled", f"forced by the gateway: {reason}", True)
        else:
            self._set_state(run["id"], "CANCELLING", "Cancelling", "cancelled through the gateway", False)
        return self.poll([leg_id])[leg_id]

    # ------------------------------------------------------------------------------------------------ workers
    def _active_by_deployment(self) -> dict[str, int]:
        body = {"flow_runs": {"state": {"type": {"any_": list(ACTIVE_TYPES)}}}, "limit": PAGE}
        counts: dict[str, int] = {}
        for run in self._json("POST", "flow_runs/filter", json=body) or []:
            if run.get("deployment_id"):
                counts[run["deployment_id"]] = counts.get(run["deployment_id"], 0) + 1
        return counts

    def workers(self) -> list[WorkerInfo]:
        """One entry per served deployment (its runner's last poll) plus every work-pool worker."""
        now = datetime.now(UTC)
        active = self._active_by_deployment()
        found: list[WorkerInfo] = []
        for d in self._deployments():
            name = self._deployment_names[d["id"]]
            gone = self._runner_gone(d, now)
            found.append(
                WorkerInfo(
                    name=name,
                    queues=[d.get("work_pool_name") or "served"],
                    active=active.get(d["id"], 0),
                    last_seen=_parse_time(d.get("last_polled")),
                    details={"kind": "deployment", "status": d.get("status"), "alive": gone is None, "why": gone},
                )
            )
        for pool in self._json("POST", "work_pools/filter", json={"limit": PAGE}) or []:
            pool_name = pool["name"]
            path = f"work_pools/{quote(pool_name, safe='')}/workers/filter"
            for worker in self._json("POST", path, json={"limit": PAGE}) or []:
                found.append(
                    WorkerInfo(
                        name=worker["name"],
                        queues=[pool_name],
                        last_seen=_parse_time(worker.get("last_heartbeat_time")),
                        details={"kind": "work-pool worker", "status": worker.get("status"), "pool": pool_name},
                    )
                )
        return found

    def health(self) -> Health:
        try:
            response = self._request("GET", "health")
            api_ok = response.status_code == 200 and response.json() is True
        except EngineUnavailable as exc:
            return Health(healthy=False, engine=self.engine, checks={"api": False}, error=str(exc))
        if not api_ok:
            return Health(healthy=False, engine=self.engine, checks={"api": False}, error="health check failed")
        try:
            workers = self.workers()
        except (EngineUnavailable, EngineConfigurationError) as exc:
            return Health(healthy=True, engine=self.engine, checks={"api": True, "workers": False}, error=str(exc))
        alive = [w for w in workers if w.details.get("alive") or w.details.get("status") == "ONLINE"]
        return Health(
            healthy=True,
            engine=self.engine,
            checks={"api": True, "runner": bool(alive)},
            workers=len(alive),
        )

    def queue_ages(self) -> dict[str, float]:
        """Not read from Prefect: the gateway ages waiting runs from its own store (the legs' dispatch times)."""
        return {}

    def queue_depths(self) -> dict[str, int]:
        """Scheduled or pending runs per deployment (`flow/deployment`), i.e. waiting for a runner."""
        depths: dict[str, int] = {}
        offset = 0
        while True:
            body = {"flow_runs": {"state": {"type": {"any_": list(WAITING_TYPES)}}}, "limit": PAGE, "offset": offset}
            page = self._json("POST", "flow_runs/filter", json=body) or []
            for run in page:
                key = run.get("deployment_id") or "(no deployment)"
                depths[key] = depths.get(key, 0) + 1
            if len(page) < PAGE:
                break
            offset += PAGE
        unknown = [k for k in depths if k not in self._deployment_names and k != "(no deployment)"]
        if unknown:
            self._deployments(unknown)
        return {self._deployment_names.get(k, k): v for k, v in depths.items()}
