"""Logging for the long-running processes (``tuner serve``, ``tuner worker``).

``configure_logging(settings)`` sends every logger (uvicorn's and Optuna's too) and
Python warnings to one stderr handler: readable lines by default, or with
``TUNER_LOG_JSON=true`` one JSON object per line for log collectors, with ``time``
(UTC, ISO 8601), ``level``, ``logger`` and ``message``, the context fields a call
passes with ``extra`` (:data:`CONTEXT_FIELDS`: ``job_id``, ``trial``, ``worker``,
``delivery``) and ``exception`` when there is a traceback.

>>> log = logging.getLogger("tuner.worker")
>>> log.warning("trial failed", extra={"job_id": "j_1", "trial": 3})  # doctest: +SKIP
{"time": "2026-12-01T10:00:00.123Z", "level": "WARNING", "logger": "tuner.worker",
 "message": "trial failed", "job_id": "j_1", "trial": 3}
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import optuna

from tuner.settings import Settings

CONTEXT_FIELDS = ("job_id", "trial", "worker", "delivery")
"""``extra`` keys that become fields of a log record (JSON) or a ``[k=v]`` suffix."""


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in CONTEXT_FIELDS if getattr(record, k, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; values that are not JSON become strings."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message [job_id=... trial=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = _context(record)
        if context:
            line += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        return line


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs (and replaces when called again)."""


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """One handler on the root logger for every record; safe to call again (it replaces
    its own handler and leaves others, such as pytest's, alone)."""
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # Python warnings become records of logger py.warnings
    # Optuna and uvicorn log through their own handlers unless told to propagate.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
