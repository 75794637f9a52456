"""The JSON log line: the job's ids lifted from `extra`, the message and traceback redacted, one object a line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from common.logs import JsonFormatter, configure_json_logging, wants_json

pytestmark = pytest.mark.fast


def test_a_line_about_a_job_carries_its_ids_and_no_secret() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.logs.job")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise RuntimeError("cannot reach redis://:hunter2@broker:6379/0")
        except RuntimeError:
            logger.exception(
                "dispatch failed: %s", "redis://:hunter2@broker:6379/0", extra={"leg_id": "L1", "engine": "celery"}
            )
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert (record["leg_id"], record["engine"], record["level"]) == ("L1", "celery", "error")
    assert "result_id" not in record
    assert "hunter2" not in line and "RuntimeError" in record["exception"]


def test_auto_means_json_off_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert wants_json("auto", io.StringIO()) and not wants_json("auto", Tty())
    assert wants_json("json", Tty()) and not wants_json("text", io.StringIO())


def test_configure_routes_uvicorn_through_the_json_handler() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        configure_json_logging(stream=stream)
        logging.getLogger("uvicorn.error").info("started")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "started"
