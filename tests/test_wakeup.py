"""Idle workers wake up when a job is queued, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tuner.jobs.db import make_engine, migrate
from tuner.jobs.store import JobStore
from tuner.jobs.wakeup import Wakeup
from tuner.spec import StudySpec

LONG = 120.0
"""A wait far longer than any test: returning before it means the wake-up worked."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate(url)
    return url


def _waiting(wakeup: Wakeup, stop: threading.Event) -> threading.Thread:
    thread = threading.Thread(target=wakeup.wait, args=(LONG, stop), daemon=True)
    thread.start()
    return thread


def test_a_queued_job_wakes_an_idle_worker(
    db_url: str, make_spec: Callable[..., StudySpec]
) -> None:
    wakeup = Wakeup(db_url)
    stop = threading.Event()
    wakeup.wait(0.01, stop)  # connects and takes note of the database as it is
    waiting = _waiting(wakeup, stop)
    engine = make_engine(db_url)
    try:
        JobStore(engine).create(make_spec())
        waiting.join(LONG / 4)
        assert not waiting.is_alive()
    finally:
        stop.set()
        waiting.join()
        wakeup.close()
        engine.dispose()


def test_stop_ends_the_wait(db_url: str) -> None:
    wakeup = Wakeup(db_url)
    stop = threading.Event()
    waiting = _waiting(wakeup, stop)
    stop.set()
    waiting.join(LONG / 4)
    assert not waiting.is_alive()
    wakeup.close()


def test_a_database_that_cannot_be_reached_falls_back_to_the_plain_wait() -> None:
    wakeup = Wakeup("postgresql://nobody@127.0.0.1:1/none")
    stop = threading.Event()
    wakeup.wait(0.01, stop)  # no error: the connection failure is logged, then polled
    wakeup.close()
