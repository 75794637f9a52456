"""The gateway's Prefect adapter must not import the Prefect SDK (2 s of import, and it pins FastAPI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backends.interface import EngineAdapter, EngineUnavailable, JobSpec, LegPhase, TaskKind
from backends.prefect.adapter import PrefectAdapter
from backends.prefect.labels import progress_from_labels, progress_labels
from backends.prefect.states import STATE_TYPE_TO_PHASE, legacy_status, phase_for
from common.legacy import ResultStatus
from common.settings import Settings
from tests.support.prefect_server import free_port

CHECK = """
import json, sys
from backends.registry import make_adapter
from common.settings import Settings
adapter = make_adapter("prefect_builtin", Settings(prefect_api_url="http://127.0.0.1:9/api"))
print(json.dumps({"engine": adapter.engine, "prefect": sorted(m for m in sys.modules if m.split(".")[0] == "prefect")}))
"""


def test_adapter_module_does_not_import_prefect() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"engine": "prefect", "prefect": []}


def _unreachable() -> PrefectAdapter:
    return PrefectAdapter(Settings(prefect_api_url=f"http://127.0.0.1:{free_port()}/api"), timeout=2.0)


def test_adapter_satisfies_the_interface() -> None:
    assert isinstance(_unreachable(), EngineAdapter)


def test_an_unreachable_server_is_engine_unavailable_not_an_error_of_the_job() -> None:
    adapter = _unreachable()
    job = JobSpec(kind=TaskKind.STUDENT_TESTING, params={"test_job": {}})
    with pytest.raises(EngineUnavailable):
        adapter.submit(job, "leg-unreachable")
    with pytest.raises(EngineUnavailable):
        adapter.poll(["leg-unreachable"])
    health = adapter.health()
    assert health.healthy is False
    assert health.checks == {"api": False}


def test_every_state_type_maps_and_keeps_the_legacy_integer() -> None:
    assert set(STATE_TYPE_TO_PHASE) == {
        "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED",
    }  # fmt: skip
    assert phase_for("COMPLETED") is LegPhase.SUCCEEDED
    assert phase_for("CRASHED") is LegPhase.CRASHED
    assert phase_for("something new") is LegPhase.MISSING
    assert legacy_status("PAUSED") is ResultStatus.PAUSED
    assert legacy_status("CANCELLING") is ResultStatus.CANCELLING
    assert legacy_status(None) is ResultStatus.NOT_AVAILABLE


def test_progress_round_trips_through_labels() -> None:
    labels = {"prefect.flow.id": "x", **progress_labels(40, "cloned", {"commit": "abc"})}
    progress = progress_from_labels(labels)
    assert progress is not None
    assert progress.percentage == 40
    assert progress.metadata == {"stage": "cloned", "commit": "abc"}
    assert progress_from_labels({"prefect.flow.id": "x"}) is None
