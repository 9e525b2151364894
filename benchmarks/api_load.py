"""API under load: p50/p99 latency of the job, a trials page and the dashboard's study
endpoint on a job with 10,000 trials, 32 concurrent clients on 127.0.0.1.

The job is a real one (submitted by POST, its one trial run by the server's worker);
its study is then filled with copies of that trial (same params, user attributes and
curves, varied values) written in one transaction with SQLAlchemy Core into Optuna's
own tables, since ``add_trials`` takes ~40 ms a trial here. Each endpoint is requested
once on its own first (its cold start, reported apart), then each round hammers the
three endpoints in turn for a fixed time (requests in flight at the end are awaited,
each bounded by a timeout); rounds are the paired seeds.

The clients are plain HTTP/1.1 keep-alive connections on asyncio streams, as a load
generator's are, and a latency runs until the last byte of the answer arrived as sent
(gzip is not inflated). They were httpx clients until the API's own work shrank: httpx
costs ~4 ms of CPU a request here, so 32 of them in one process on 2 cores measured
mostly their own queue (GET /healthz, which does nothing, had a p50 over 100 ms), and
inflating the dashboard's 27 MB answer took the client ~70 ms each time.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, insert, select

from benchmarks.common import Goal, Report, Size, figure, interleave, ratios, stats
from benchmarks.service import Server, run_job, small_job
from tuner.storage import make_storage

CLIENTS = 32
GOAL_MS = 100.0
REQUEST_TIMEOUT_S = 10.0
SETTLE_S = 60.0


def n_trials(size: Size) -> int:
    return 300 if size.smoke else 10_000


def phase_s(size: Size) -> float:
    return 1.0 if size.smoke else 3.0


def fill(database_url: str, study_name: str, n: int) -> int:
    """Add copies of the study's first trial until it holds ``n``; its Optuna study id."""
    storage = make_storage(database_url)
    study_id = storage.get_study_id_from_name(study_name)
    template = storage.get_all_trials(study_id, deepcopy=False)[0]
    with storage.engine.begin() as conn:
        first = (conn.scalar(select(func.max(models.TrialModel.trial_id))) or 0) + 1
        have = conn.scalar(
            select(func.count()).where(models.TrialModel.study_id == study_id)
        ) or 0
        _insert_copies(conn, template, study_id, first, have, n - have)
    storage.engine.dispose()
    return study_id


def _insert_copies(
    conn, template: FrozenTrial, study_id: int, first_id: int, first_number: int, count: int
) -> None:  # type: ignore[no-untyped-def]
    start = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    ids = range(first_id, first_id + count)
    conn.execute(insert(models.TrialModel.__table__), [
        {"trial_id": tid, "number": first_number + i, "study_id": study_id,
         "state": TrialState.COMPLETE, "datetime_start": start,
         "datetime_complete": start + timedelta(seconds=0.3)}
        for i, tid in enumerate(ids)
    ])
    conn.execute(insert(models.TrialValueModel.__table__), [
        {"trial_id": tid, "objective": 0, "value": 0.5 + 0.4 * math.sin(tid),
         "value_type": models.TrialValueModel.TrialValueType.FINITE}
        for tid in ids
    ])
    conn.execute(insert(models.TrialParamModel.__table__), [
        {"trial_id": tid, "param_name": name,
         "param_value": dist.to_internal_repr(template.params[name]),
         "distribution_json": _dist_json(dist)}
        for tid in ids for name, dist in template.distributions.items()
    ])
    conn.execute(insert(models.TrialUserAttributeModel.__table__), [
        {"trial_id": tid, "key": key, "value_json": json.dumps(value)}
        for tid in ids for key, value in template.user_attrs.items()
    ])
    conn.execute(insert(models.TrialIntermediateValueModel.__table__), [
        {"trial_id": tid, "step": step, "intermediate_value": value,
         "intermediate_value_type":
             models.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE}
        for tid in ids for step, value in template.intermediate_values.items()
    ])


def _dist_json(dist) -> str:  # type: ignore[no-untyped-def]
    from optuna.distributions import distribution_to_json

    return distribution_to_json(dist)


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _hammer(url: str, path: str, seconds: float, headers: dict[str, str]) -> Latencies:
    """``CLIENTS`` clients requesting ``path`` back to back for ``seconds``, each on its own
    keep-alive connection, opened before the clock starts.

    A request that fails or times out counts with the timeout as its latency (so a
    percentile over it is a lower bound) and is counted in ``failed``; its client then
    reconnects.
    """
    out = Latencies([], 0)
    host, port = urlsplit(url).hostname, urlsplit(url).port
    request = "".join(
        f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items()
    )
    request_bytes = f"GET {path} HTTP/1.1\r\n{request}\r\n".encode()

    async def one_client(streams: Streams | None) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                streams = streams or await asyncio.open_connection(host, port)
                await asyncio.wait_for(_get(*streams, request_bytes), REQUEST_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                out.failed += 1
                out.ms.append(1000 * REQUEST_TIMEOUT_S)
                if streams:
                    streams[1].close()
                streams = None
                continue
            out.ms.append(1000 * (time.perf_counter() - began))
        if streams:
            streams[1].close()

    # Connected before the clock starts: a poller's connection outlives its requests.
    connected = await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(CLIENTS))
    )
    deadline = time.perf_counter() + seconds
    await asyncio.gather(*(one_client(streams) for streams in connected))
    return out


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    """Send one request and read its whole answer as sent; ValueError unless a 200."""
    writer.write(request)
    status = (await reader.readline()).split(maxsplit=2)
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"answered {status!r}")
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ValueError("no Content-Length")
    await reader.readexactly(length)


@dataclass
class Latencies:
    ms: list[float]
    failed: int


def first_request_s(url: str, path: str, headers: dict[str, str]) -> float:
    """Seconds one request took on its own: for the dashboard, the cold start (its
    renderer process and a read of the whole study) that the rounds then do not carry."""
    began = time.perf_counter()
    httpx.get(f"{url}{path}", headers=headers, timeout=SETTLE_S).raise_for_status()
    return round(time.perf_counter() - began, 2)


def settle(url: str) -> None:
    """Wait (bounded) until the server answers /healthz quickly again: requests the
    clients gave up on may still be running in its thread pool, and must not weigh
    on the next phase."""
    deadline = time.monotonic() + SETTLE_S
    with httpx.Client(base_url=url, timeout=SETTLE_S) as client:
        while time.monotonic() < deadline:
            began = time.perf_counter()
            client.get("/healthz")
            if time.perf_counter() - began < 0.05:
                return
            time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def run(size: Size, servers: dict[int, Server]) -> list[Report]:
    server = servers[1]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        _, job_id = run_job(client, small_job(size.smoke, 1, 0))
        study_name = client.get(f"/v1/jobs/{job_id}").json()["study_name"]
    began = time.perf_counter()
    study_id = fill(server.database_url, study_name, n_trials(size))
    fill_s = time.perf_counter() - began
    endpoints = {
        "job": (f"/v1/jobs/{job_id}", {}),
        "trials_page": (f"/v1/jobs/{job_id}/trials?limit=50", {}),
        "dashboard_study": (f"/api/studies/{study_id}", {"Accept-Encoding": "gzip"}),
    }
    seconds = phase_s(size)
    first_s = {name: first_request_s(server.url, *endpoints[name]) for name in endpoints}

    def measure(name: str) -> dict[str, float]:
        path, headers = endpoints[name]
        lat = asyncio.run(_hammer(server.url, path, seconds, headers))
        settle(server.url)
        return {"p50_ms": percentile(lat.ms, 50), "p99_ms": percentile(lat.ms, 99),
                "requests": len(lat.ms), "failed": lat.failed}

    res = interleave(range(size.seeds), {name: (lambda seed, n=name: measure(n))
                                         for name in endpoints})
    report = Report("api_load", f"API under load: {CLIENTS} clients, job of "
                    f"{n_trials(size):,} trials")
    report.details = {"trials": n_trials(size), "clients": CLIENTS, "phase_s": seconds,
                      "fill_s": round(fill_s, 2), "first_request_s": first_s, "rounds": res,
                      "median_ms": {name: {k: stats([r[k] for r in rows]).median for k in
                                           ("p50_ms", "p99_ms")}
                                    for name, rows in res.items()}}

    def p99(name: str) -> list[float]:
        return [r["p99_ms"] for r in res[name]]

    goal = [GOAL_MS] * size.seeds
    report.figures += [
        figure("GET /v1/jobs/{id}: p99 / 100 ms", ratios(p99("job"), goal), Goal("<", 1.0)),
        figure("GET /v1/jobs/{id}/trials page: p99 / 100 ms", ratios(p99("trials_page"), goal),
               Goal("<", 1.0)),
        figure("dashboard /api/studies/{id} (gzip): p99 / 100 ms",
               ratios(p99("dashboard_study"), goal), Goal("<", 1.0)),
        figure("job p99 / dashboard p99", ratios(p99("job"), p99("dashboard_study"))),
        figure("trials page p99 / dashboard p99",
               ratios(p99("trials_page"), p99("dashboard_study"))),
    ]
    report.notes.append(
        "Each endpoint was requested once before the rounds, as a browser's first load "
        f"(not in the figures): {', '.join(f'{k} {v:.2f} s' for k, v in first_s.items())}."
    )
    failed = {name: sum(r["failed"] for r in rows) for name, rows in res.items()}
    if any(failed.values()):
        report.notes.append(
            f"Requests that failed or took over {REQUEST_TIMEOUT_S:g} s (counted as "
            f"{REQUEST_TIMEOUT_S:g} s, so those p99s are lower bounds): {failed}."
        )
    return [report]
