"""Structured logs: JSON lines with context fields, readable lines otherwise, one handler."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from tuner.logs import configure_logging
from tuner.settings import Settings


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where the configured handler writes; the handler is taken off afterwards."""
    out = io.StringIO()
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield out
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    optuna.logging.disable_propagation()
    optuna.logging.enable_default_handler()


def lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_json_lines_carry_time_level_logger_message_and_context(stream: io.StringIO) -> None:
    configure_logging(Settings(log_json=True), stream)
    log = logging.getLogger("tuner.worker")
    log.info("trial %d finished", 3, extra={"job_id": "j_1", "trial": 3, "worker": "w-1"})
    log.warning("no context here")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert {k: v for k, v in first.items() if k != "time"} == {
        "level": "INFO", "logger": "tuner.worker", "message": "trial 3 finished",
        "job_id": "j_1", "trial": 3, "worker": "w-1",
    }
    assert set(second) == {"time", "level", "logger", "message"}


def test_json_lines_hold_tracebacks_and_odd_values(stream: io.StringIO) -> None:
    configure_logging(Settings(log_json=True), stream)
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("tuner").exception("it broke", extra={"job_id": Path("j_2")})
    (line,) = lines(stream)
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["job_id"] == "j_2"
    assert "ValueError: bad value" in record["exception"]


def test_optuna_records_and_python_warnings_come_out_as_json_too(stream: io.StringIO) -> None:
    configure_logging(Settings(log_json=True), stream)
    optuna.logging.set_verbosity(optuna.logging.INFO)  # other tests may have quietened it
    optuna.logging.get_logger("optuna").warning("from optuna")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # whatever filters earlier tests left behind
        warnings.warn("careful", UserWarning, stacklevel=1)
    records = [json.loads(line) for line in lines(stream)]
    assert (records[0]["logger"], records[0]["message"]) == ("optuna", "from optuna")
    assert records[1]["logger"] == "py.warnings" and "careful" in records[1]["message"]


def test_text_lines_show_context_and_the_level_setting_filters(stream: io.StringIO) -> None:
    configure_logging(Settings(log_json=False, log_level="WARNING"), stream)
    log = logging.getLogger("tuner.webhooks")
    log.info("hidden")
    log.warning("attempt failed", extra={"job_id": "j_3", "delivery": 7})
    (line,) = lines(stream)
    assert line.endswith("WARNING tuner.webhooks attempt failed [job_id=j_3 delivery=7]")


def test_configuring_again_replaces_its_handler_and_keeps_others(stream: io.StringIO) -> None:
    root = logging.getLogger()
    configure_logging(Settings(log_json=False), stream)
    count = len(root.handlers)
    configure_logging(Settings(log_json=True), stream)
    assert len(root.handlers) == count
    logging.getLogger("tuner").warning("once")
    (line,) = lines(stream)
    assert json.loads(line)["message"] == "once"


@pytest.mark.slow
def test_tuner_worker_logs_json_lines_only(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TUNER_LOG_JSON": "true",
        "TUNER_DATABASE_URL": f"sqlite:///{tmp_path / 'tuner.db'}",
        "TUNER_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tuner"), "worker", "--max-trials", "0"],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line]
    started = [r for r in records if r["logger"] == "tuner.worker"]
    assert started and "started" in started[0]["message"]
