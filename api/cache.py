"""A short-lived per-process cache for the polled reads: a job's detail and its trial pages.

Clients poll the same job, so identical requests arrive together, and each one would
run the same aggregates over the study's trials. Answers are kept for ``TTL_S`` (so a
read may lag the database by at most that long; the SSE event stream stays live), at
most ``MAX_ENTRIES`` of them (least recently used go first), and concurrent identical
misses wait for one computation instead of each running it (the routes are sync, so
they run on the thread pool: a lock and a ``concurrent.futures.Future`` per key).

Routes look up the job through ``JobDep`` first, so the owner check runs on every
request and a cached answer only reaches a caller allowed to see the job. Keys start
with the job's id and its row's version (:func:`job_version`): any change to the row,
such as a trial finishing, makes a new key at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from datetime import datetime
from typing import Annotated, Any, TypeVar, cast

from fastapi import Depends, Request

from tuner.jobs import Job

TTL_S = 1.0
MAX_ENTRIES = 256

T = TypeVar("T")


def job_version(job: Job) -> tuple[str, datetime, int, int]:
    """The job's id and what moves whenever its row changes: ``updated_at`` (bumped by
    every locked update) and the trial counts (so a finished trial shows even if two
    updates share a timestamp)."""
    return job.id, job.updated_at, job.started, job.finished


class ReadCache:
    """Answers by key for ``ttl_s`` seconds, at most ``max_entries``, computed once per miss."""

    def __init__(
        self,
        ttl_s: float = TTL_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError(
                f"a read cache needs ttl_s > 0 and max_entries >= 1, not {ttl_s} and {max_entries}"
            )
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._pending: dict[Hashable, Future[Any]] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The fresh cached answer for ``key``, else ``compute()``'s (shared with every
        caller that asks for ``key`` while it runs; its exception too, never cached)."""
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                self._entries.move_to_end(key)
                return cast(T, entry[1])
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = Future()
                computing = True
            else:
                computing = False
        if not computing:
            return cast(T, pending.result())
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            # Expiry counts from before the reads, so no answer is older than the TTL.
            self._entries[key] = (now + self._ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        pending.set_result(value)
        return value


def _read_cache(request: Request) -> ReadCache:
    return request.app.state.read_cache


ReadCacheDep = Annotated[ReadCache, Depends(_read_cache)]
