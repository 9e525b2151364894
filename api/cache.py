"""A short-lived per-process cache of serialized answers, for the reads that clients poll:
a job's detail, its trial pages and the dashboard's study detail (``api.dashboard``).

Clients poll the same job, so identical requests arrive together, and each one would
run the same aggregates over the study's trials. An answer is kept as the bytes sent,
so a hit costs no query, validation or serialization. It is fresh for ``TTL_S``; after
that the next request starts one refresh in a worker thread and, until it lands, every
request still gets the previous answer as long as that is under ``MAX_AGE_S`` old.
Older answers are never served: those requests wait for the refresh. Ages count from
when a computation ended, so a read lags the database by at most ``MAX_AGE_S`` plus the
time one computation takes (a request computing its own answer lags by the latter),
usually by under ``TTL_S`` plus that; for a job's reads (~20 ms at 10,000 trials) that
is about a second. The SSE event stream stays live. Concurrent misses wait for one
computation, never run it again; a failure reaches every waiter and is not kept. At
most ``max_entries`` answers are kept, least recently used go first.

The routes look up the job through ``JobDep`` first, so the owner check runs on every
request and a cached answer only reaches a caller allowed to see the job. Keys start
with the job's id and its row's version (:func:`job_version`): any change to the row,
such as a trial finishing, makes a new key at once.

The routes using it are ``async``: a hit never leaves the event loop; computations run
on the cache's own threads, apart from the thread pool of the sync routes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Annotated, Any, TypeVar, cast

from fastapi import Depends, Request

from tuner.jobs.models import Job

TTL_S = 1.0
MAX_AGE_S = 2.0
MAX_ENTRIES = 256

T = TypeVar("T")


def job_version(job: Job) -> tuple[str, datetime, int, int]:
    """The job's id and what moves whenever its row changes: ``updated_at`` (bumped by
    every locked update) and the trial counts (so a finished trial shows even if two
    updates share a timestamp)."""
    return job.id, job.updated_at, job.started, job.finished


class ReadCache:
    """Answers by key (for the routes: the bytes to send): fresh for ``ttl_s``, served
    while one refresh runs up to ``max_age_s``, computed once per miss, at most
    ``max_entries`` kept. With ``max_age_s=0`` nothing is kept: only calls in flight
    are shared. An answer that took long to compute stays fresh longer: refreshes of one
    key keep at most ``max_busy`` of a thread busy (fresh for the computation's time
    over ``max_busy`` when that exceeds ``ttl_s``; served past that by as much as
    ``max_age_s`` exceeds ``ttl_s``).

    Computations run on its own ``workers`` threads, so slow ones (a big study's
    dashboard answer) never hold up another cache's quick ones (a key check).
    """

    def __init__(
        self,
        ttl_s: float = TTL_S,
        max_age_s: float = MAX_AGE_S,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 4,
        max_busy: float = 1.0,
    ) -> None:
        if not 0 <= ttl_s <= max_age_s or max_entries < 1 or not 0 < max_busy <= 1:
            raise ValueError(
                "a read cache needs 0 <= ttl_s <= max_age_s, max_entries >= 1 and "
                f"0 < max_busy <= 1, not {ttl_s}, {max_age_s}, {max_entries} and {max_busy}"
            )
        self._ttl_s = ttl_s
        self._max_age_s = max_age_s
        self._max_busy = max_busy
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, float, Any]] = OrderedDict()
        """key -> (when its computation ended, how long it stays fresh, answer)"""
        self._pending: dict[Hashable, Future[Any]] = {}
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="read-cache")

    async def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The answer for ``key``: cached while fresh enough, else ``compute()``'s (run in
        a worker thread, once for every caller asking while it runs)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                ended, fresh_s, value = entry
                age = self._clock() - ended
                if age < fresh_s + self._max_age_s - self._ttl_s:
                    if age >= fresh_s:
                        self._start(key, compute)
                    return cast(T, value)
            pending = self._start(key, compute)
        return cast(T, await asyncio.wrap_future(pending))

    def _start(self, key: Hashable, compute: Callable[[], T]) -> Future[T]:
        """The running computation of ``key``, started unless one runs. A plain future
        set running: a waiter that goes away cannot cancel it for the others, and
        callers on other event loops (test clients) can wait for it too."""
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = Future()
            pending.set_running_or_notify_cancel()
            self._executor.submit(self._compute, key, compute, pending)
        return pending

    def _compute(self, key: Hashable, compute: Callable[[], T], pending: Future[T]) -> None:
        began = self._clock()
        try:
            value = compute()
        except BaseException as exc:  # every waiter gets it; nothing is kept
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            return
        with self._lock:
            del self._pending[key]
            if self._max_age_s > 0:  # else nothing is kept: only calls in flight are shared
                ended = self._clock()
                fresh_s = max(self._ttl_s, (ended - began) / self._max_busy)
                self._entries[key] = (ended, fresh_s, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        pending.set_result(value)


async def _read_cache(request: Request) -> ReadCache:
    """``async``: a plain getter, no trip through the thread pool."""
    return request.app.state.read_cache


ReadCacheDep = Annotated[ReadCache, Depends(_read_cache)]
