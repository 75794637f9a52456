"""Issue 11, point 7: error answers declared in the OpenAPI spec, strict legacy fields, OPTIONS answered."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gateway.api.app import create_app
from gateway.schemas import CourseContentIn, ResultUpdate
from tests.support.celery_worker import settings_from_env

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("model", "body"),
    [(ResultUpdate, {"status": False}), (ResultUpdate, {"status": "0"}), (CourseContentIn, {"max_submissions": False})],
)
def test_booleans_and_strings_are_not_numbers(model: type, body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate({"path": "a.b", **body})


def test_numbers_still_are() -> None:
    assert ResultUpdate.model_validate({"status": 0}).status == 0


def test_the_spec_declares_errors_and_options_is_answered(tmp_path: Path) -> None:
    app = create_app(settings_from_env({"GATEWAY_DATA_DIR": str(tmp_path)}))
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
        answers = spec["paths"]["/api/tests"]["post"]["responses"]
        assert {"400", "401", "403", "404", "409", "503"} <= set(answers)
        options = client.options("/api/tests")
        assert options.status_code == 204 and "POST" in options.headers["allow"]
        assert client.options("/api/no-such-route").status_code == 404
