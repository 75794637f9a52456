"""Only a result the flow stored is a report: inline state data and files outside the results folder are not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends.prefect.results import ResultUnavailable, read_persisted_result


def test_stored_json_result_is_read(tmp_path: Path) -> None:
    results = tmp_path / "prefect-results"
    results.mkdir()
    (results / "abc").write_text(json.dumps({"summary": {"total": 1}}))
    data = {"storage_key": str(results / "abc"), "serializer": {"type": "json"}}
    assert read_persisted_result(data, results) == {"summary": {"total": 1}}


@pytest.mark.parametrize("inline", [{"summary": {"total": 2, "passed": 2}}, {"result": "PASSED"}, [1], "x"])
def test_inline_state_data_is_not_a_report(tmp_path: Path, inline: object) -> None:
    with pytest.raises(ResultUnavailable, match="no stored result"):
        read_persisted_result(inline, tmp_path)


def test_a_storage_key_outside_the_results_folder_is_not_read(tmp_path: Path) -> None:
    results = tmp_path / "prefect-results"
    results.mkdir()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({"summary": {"total": 2, "passed": 2}}))
    with pytest.raises(ResultUnavailable, match="is not in"):
        read_persisted_result({"storage_key": str(forged)}, results)
    with pytest.raises(ResultUnavailable, match="is not in"):
        read_persisted_result({"storage_key": "../forged.json"}, results)
