"""Idle workers wake up when new work may have arrived, not only at their next poll.

An idle worker polls ``claim`` every ``poll_interval_s`` (0.5 s by default), so a job
submitted to an idle service used to wait a quarter of a second on average before its
first trial. Now the wait ends early:

- SQLite: ``PRAGMA data_version`` on the worker's own connection changes whenever
  another connection commits; reading it costs microseconds and no disk access, so it
  is checked every ``SQLITE_CHECK_S``. Any commit wakes the worker (a heartbeat too):
  it then runs one claim, as it would at its next poll anyway.
- PostgreSQL: the job store sends ``NOTIFY`` on ``CHANNEL`` in the transaction that
  queues a job (delivered when it commits); workers ``LISTEN``.

Anything going wrong here only falls back to the plain poll.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "tuner_work"
"""The PostgreSQL notification channel for 'a job may have trials to run'."""

SQLITE_CHECK_S = 0.01


def notify_work(s: Session) -> None:
    """Wake idle workers once ``s`` commits (PostgreSQL; SQLite workers see the commit)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class Wakeup:
    """``wait(timeout, stop)``: sleep up to ``timeout``, less when the database changed
    (SQLite) or a job was queued (PostgreSQL), or ``stop`` was set."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._backend = parsed.get_backend_name()
        self._sqlite_path = parsed.database if self._backend == "sqlite" else None
        self._pg_dsn = (
            parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            if self._backend == "postgresql" else None
        )
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection | None = None
        self._version: int | None = None

    def wait(self, timeout: float, stop: threading.Event) -> None:
        try:
            if self._sqlite_path not in (None, "", ":memory:"):
                self._wait_sqlite(timeout, stop)
                return
            if self._pg_dsn is not None:
                self._wait_postgres(timeout, stop)
                return
        except (sqlite3.Error, psycopg.Error) as exc:
            log.debug("wake-up check failed, polling: %s", exc)
            self.close()
        stop.wait(timeout)

    def _wait_sqlite(self, timeout: float, stop: threading.Event) -> None:
        if self._sqlite is None:
            self._sqlite = sqlite3.connect(self._sqlite_path or "", check_same_thread=False)
            self._version = self._data_version()
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            version = self._data_version()
            if version != self._version:
                self._version = version
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            stop.wait(min(SQLITE_CHECK_S, left))

    def _data_version(self) -> int:
        assert self._sqlite is not None
        return int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])

    def _wait_postgres(self, timeout: float, stop: threading.Event) -> None:
        if self._pg is None:
            self._pg = psycopg.connect(self._pg_dsn or "", autocommit=True, connect_timeout=5)
            self._pg.execute(f"LISTEN {CHANNEL}")
        deadline = time.monotonic() + timeout
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            # In slices, so that a stop request is seen within a quarter of a second.
            if list(self._pg.notifies(timeout=min(0.25, left), stop_after=1)):
                list(self._pg.notifies(timeout=0))  # one wake-up for all sent so far
                return

    def close(self) -> None:
        for conn in (self._sqlite, self._pg):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error, psycopg.Error):
                    conn.close()
        self._sqlite = self._pg = None
