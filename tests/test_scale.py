"""Many real worker processes on one database while readers poll; idempotent submission
under concurrency; PostgreSQL connections per worker and migrations on a fresh database.

Store-level claim races (4 processes) are in ``test_jobs.py``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import optuna
import psycopg
import pytest
from cluster import LEASES, Cluster, assert_exact_budget, spec, trials, wait_for
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tuner.jobs.db import make_engine
from tuner.jobs.models import SlotState, TrialSlot, WorkerRow
from tuner.jobs.store import JobStore
from tuner.settings import Settings
from tuner.spec import parse_spec

pytestmark = pytest.mark.slow

TRIALS_PER_WORKER = 40


class Poller(threading.Thread):
    """Reads what users and the dashboard read, every 0.2 s; a refused read or a broken
    connection is a failure."""

    def __init__(self, base_url: str, paths: list[str]) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.paths = paths
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for path in self.paths:
                try:
                    answer = self.http.get(path)
                except httpx.HTTPError as exc:
                    self.failures.append(f"GET {path}: {exc!r}")
                    continue
                self.statuses[answer.status_code] += 1
                if answer.status_code != 200:
                    self.failures.append(f"GET {path}: {answer.status_code} {answer.text[:300]}")
            self.done.wait(0.2)


@pytest.mark.parametrize(
    ("db", "n_workers"),
    [("sqlite", 8), pytest.param("postgres", 4, marks=pytest.mark.postgres)],
)
def test_every_trial_of_many_workers_finishes_while_readers_poll(
    db: str, n_workers: int, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "postgres_url")
    total = n_workers * TRIALS_PER_WORKER
    # Production leases (2 s beats, 10 s grace): no worker may look lost under this load.
    cluster = Cluster(url, tmp_path, env={"TUNER_POLL_INTERVAL_S": "0.2"})
    store = None
    try:
        cluster.start_api(workers=0)
        cluster.wait_ready()
        http = httpx.Client(base_url=cluster.url, timeout=60)
        jobs = [
            http.post("/v1/jobs", json=spec(name, total // 2, epochs=1, dataset="iris",
                                            parallelism=n_workers)).json()["id"]
            for name in ("left", "right")
        ]
        poller = Poller(cluster.url, [
            *(f"/v1/jobs/{job_id}" for job_id in jobs),
            *(f"/v1/jobs/{job_id}/trials?limit=100" for job_id in jobs),
            "/api/studies",
        ])
        poller.start()
        started = time.monotonic()
        for i in range(n_workers):
            cluster.start_worker(f"worker-{i}")
        for job_id in jobs:
            wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded",  # noqa: B023
                     240, f"job {job_id} to finish")
        elapsed = time.monotonic() - started
        poller.done.set()
        poller.join()
        cluster.stop_all()
        store = JobStore(make_engine(url))
        for job_id in jobs:
            assert_exact_budget(store, job_id)
        states = Counter(t.state.name for job_id in jobs for t in trials(store, job_id))
        assert states == {"COMPLETE": total}  # no trial failed, none was reaped
        with store._tx() as s:
            per_worker = dict(s.execute(
                select(TrialSlot.worker_id, func.count())
                .where(TrialSlot.state == SlotState.done).group_by(TrialSlot.worker_id)
            ).all())
        assert sum(per_worker.values()) == total and len(per_worker) == n_workers
        assert poller.failures == [] and poller.statuses[200] > 0
        logs = cluster.logs()
        assert "database is locked" not in logs and "OperationalError" not in logs
        print(f"\n{n_workers} workers x {TRIALS_PER_WORKER} trials on {db}: {elapsed:.1f} s, "
              f"trials per worker {sorted(per_worker.values())}, "
              f"{sum(poller.statuses.values())} reads, all 200")
    finally:
        cluster.stop_all()
        if store is not None:
            store.storage.engine.dispose()
            store.engine.dispose()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_twenty_concurrent_posts_with_one_idempotency_key_make_one_job(
    db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "postgres_url")
    cluster = Cluster(url, tmp_path)
    try:
        cluster.start_api(workers=0)  # the job stays queued: its answer cannot change
        cluster.wait_ready()
        body = spec("once", 4, epochs=2, dataset="iris")
        gate = threading.Barrier(20)

        def post(_: int) -> httpx.Response:
            with httpx.Client(base_url=cluster.url, timeout=120) as client:  # own connection
                gate.wait()
                return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "ci-42"})

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(post, range(20)))
        assert sorted(a.status_code for a in answers) == [200] * 19 + [201], [
            a.text for a in answers if a.status_code not in (200, 201)
        ]
        first = answers[0].json()
        assert all(a.json() == first for a in answers)  # identical, field by field
        assert {a.headers["Location"] for a in answers} == {f"/v1/jobs/{first['id']}"}
        listed = httpx.get(f"{cluster.url}/v1/jobs").json()["items"]
        assert [job["id"] for job in listed] == [first["id"]]
        storage = optuna.storages.RDBStorage(url)
        assert optuna.get_all_study_names(storage) == [f"job-{first['id']}"]  # losers' removed
        storage.engine.dispose()
        assert "database is locked" not in cluster.logs()
    finally:
        cluster.stop_all()


def pg_connections(url: str) -> dict[str, int]:
    """Connections to the test database by application_name (each worker names itself)."""
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "GROUP BY application_name"
        ).fetchall()
    return {name: count for name, count in rows}


@pytest.mark.postgres
def test_workers_on_a_fresh_postgres_migrate_once_and_hold_a_bounded_pool(
    postgres_url: str, tmp_path: Path
) -> None:
    """Four `tuner worker` start at once on an empty database: one migrates, the others
    wait on the advisory lock; while they run a job, none holds more connections than
    docs/scaling.md promises (db_pool_size + db_max_overflow per worker)."""
    n = 4
    settings = Settings()
    bound = settings.db_pool_size + settings.db_max_overflow
    cluster = Cluster(postgres_url, tmp_path, env=LEASES)
    engine = make_engine(postgres_url)
    try:
        for i in range(n):  # libpq reads PGAPPNAME: pg_stat_activity tells workers apart
            cluster.start_worker(f"w{i}", env={"PGAPPNAME": f"tuner-w{i}"})

        def registered() -> bool:
            try:
                with engine.connect() as conn:
                    return conn.scalar(select(func.count()).select_from(WorkerRow)) == n
            except DBAPIError:  # tables not there yet
                return False

        wait_for(registered, 150, "four workers to migrate and register")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM tuner_alembic_version")) == 1
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        store = JobStore(engine)
        job, _ = store.create(parse_spec(spec("pool", 16, epochs=3, dataset="iris", parallelism=n)))
        peaks: Counter[str] = Counter()
        while store.get(job.id).state != "succeeded":
            for name, count in pg_connections(postgres_url).items():
                if name.startswith("tuner-w"):
                    peaks[name] = max(peaks[name], count)
            time.sleep(0.05)
        assert set(peaks) == {f"tuner-w{i}" for i in range(n)}
        assert max(peaks.values()) <= bound, peaks
        assert_exact_budget(store, job.id)
        logs = cluster.logs()
        assert "Traceback" not in logs and "already exists" not in logs
        print(f"\npeak PostgreSQL connections per worker: {dict(peaks)} (bound {bound}); "
              f"16 workers need at most {16 * bound}")
    finally:
        cluster.stop_all()
        engine.dispose()
