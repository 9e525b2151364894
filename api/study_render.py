"""optuna-dashboard's study detail, rendered in a child process.

At 10,000 trials that answer is ~27 MB of JSON built in pure Python, 2-7 s of CPU. Even
with the server's garbage-collector settings, a render that re-reads the trials (most
do: optuna-dashboard's own trial list expires after 10 s) holds the GIL 140-240 ms at a
time, several times over (a thread sleeping 1 ms woke that late). In the API's process
every request in flight waited through those holds: the dashboard's p99 in
``benchmarks/api_load.py`` was 0.25-0.8 s in the rounds that overlapped a refresh and
2.5 s in a whole run. A child has its own GIL, so the API only shares the cores with it.

One child, started on first use (spawned: the API runs threads) at a lower priority,
renders one answer at a time and keeps optuna-dashboard's trial cache between calls. It
starts with the server's main module imported again (how ``spawn`` works) and this one,
which keeps clear of torch and the engine (a first answer 1.2 s after the start, against
2.0 s with them); a request for the page itself starts it ahead of the first study. Its
answer comes back gzipped, ~1/80 of the size. A child that died is replaced on the next
call.
"""

from __future__ import annotations

import functools
import gzip
import io
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from optuna_dashboard import wsgi

from tuner.gc_tuning import tune_gc
from tuner.storage import make_storage

NICE = 10
"""The child's priority below the API's: when they compete for the cores, requests win
and the cache serves the answer it has a little longer."""


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    gzipped: bool


class StudyRenderer:
    """Renders dashboard paths on ``database_url`` in a child process."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def render(self, path: str, query: str) -> Answer:
        """The dashboard's answer to ``GET path?query``; blocks the calling thread (a
        cache worker) while the child works. One retry on a new child if it died."""
        call = functools.partial(render, self._database_url, path, query)
        pool = self._current_pool()
        try:
            return pool.submit(call).result()
        except BrokenProcessPool:
            self._drop(pool)
        return self._current_pool().submit(call).result()

    def start(self) -> None:
        """Start the child now unless it runs, without waiting for it."""
        self._current_pool()

    def close(self) -> None:
        """Stop the child, if one runs (the app's shutdown)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _current_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                )
                self._pool.submit(os.getpid)  # the pool spawns its child on a first task
            return self._pool

    def _drop(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)


def _start_child() -> None:
    """Below the API's priority, with the API's garbage-collector settings: a study's
    trials are a million objects, and the default thresholds walk them over and over
    (a cold read of 10,000 trials took ~40% longer)."""
    os.nice(NICE)
    tune_gc()


@functools.cache
def _dashboard(database_url: str) -> Any:
    """The child's optuna-dashboard WSGI app, one per database, kept for its caches."""
    return wsgi(make_storage(database_url))


def render(database_url: str, path: str, query: str) -> Answer:
    """Call the dashboard as WSGI with only the path and query, so the answer is the
    same for every caller; a 200 comes back gzipped. Runs in the child."""
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
        "QUERY_STRING": query, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_LENGTH": "0", "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    started: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        started.update(status=int(status.split()[0]), headers=dict(headers))

    chunks = _dashboard(database_url)(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    content_type = started["headers"].get("Content-Type", "application/json")
    if started["status"] != 200:
        return Answer(started["status"], content_type, body, gzipped=False)
    return Answer(200, content_type, gzip.compress(body, compresslevel=6), gzipped=True)
