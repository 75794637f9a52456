"""Structured logs: one JSON object a line when not on a terminal, carrying the job's ids when a line is about one.

A log call about a job passes `extra={"leg_id": ..., "result_id": ..., "engine": ...}`; the JSON formatter lifts
those onto the line, so a log pipeline can follow one job across the API, the reconciler and the workers. The
message and any traceback are redacted (`common.redact`) exactly as the text logs are.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from common.redact import redact_text

# The record attributes a line about a job may carry (bounded in kind, unbounded in value: logs, not metrics).
JOB_FIELDS = ("leg_id", "result_id", "engine", "role")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def wants_json(log_format: str, stream: TextIO) -> bool:
    """`json`, `text`, or `auto`: JSON unless the stream is a terminal (a person reads it)."""
    if log_format == "json":
        return True
    if log_format == "text":
        return False
    return not stream.isatty()


def configure_json_logging(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Route every logger (uvicorn's, Celery's, ours) to one JSON handler on the root logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
        # A uvicorn started earlier in this process (its `log_level`) leaves its own level and may have been
        # disabled by a dictConfig: the root's level decides, as for every other logger.
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    # One line per HTTP call to an engine API would drown the lines about jobs.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
