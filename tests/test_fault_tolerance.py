"""Crashes of real processes: the whole service killed and restarted, a frozen worker that
comes back after its trial was retried, and the chaos demo a user runs; then, in one
process, the races those runs uncovered (a late refused beat, a trial started but never
attached to its slot, Optuna's stale-trial check racing the reaper).

Killing one worker of a pool, SIGTERM and a transient heartbeat error are in
``test_worker.py``; store-level fencing in ``test_jobs.py``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import optuna
import pytest
from cluster import (
    LEASES,
    LOADED_BOX_SLACK_S,
    SCRIPT,
    Cluster,
    assert_exact_budget,
    running_slots,
    spec,
    trials,
    wait_for,
    worker_pid,
)
from optuna.trial import TrialState
from sqlalchemy import select

from tuner.jobs.db import make_engine, migrate
from tuner.jobs.models import WorkerRow
from tuner.jobs.store import JobStore
from tuner.settings import Settings
from tuner.spec import StudySpec
from tuner.worker import Worker

GRACE_S = float(LEASES["TUNER_GRACE_PERIOD_S"])
REAPER_S = float(LEASES["TUNER_REAPER_INTERVAL_S"])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def cluster(db_url: str, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(db_url, tmp_path, env=LEASES)
    try:
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def store(cluster: Cluster) -> Iterator[JobStore]:
    """The test's own view of the database (after the API migrated it)."""
    engine = make_engine(cluster.database_url)
    store = JobStore(engine)
    yield store
    store.storage.engine.dispose()
    engine.dispose()


def start_service(cluster: Cluster) -> None:
    """The API with one embedded worker, and one standalone worker."""
    cluster.start_api(workers=1)
    cluster.start_worker("worker")
    cluster.wait_ready()


def submit(http: httpx.Client, name: str, n_trials: int) -> dict[str, object]:
    # 150 epochs of digits: about a second a trial on a quiet machine, so the tests can
    # catch one running.
    answer = http.post("/v1/jobs", json=spec(name, n_trials, epochs=150),
                       headers={"Idempotency-Key": f"key-{name}"})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def job_ids(http: httpx.Client) -> list[str]:
    return sorted(job["id"] for job in http.get("/v1/jobs").json()["items"])


@pytest.mark.slow
def test_kill_9_of_every_process_then_restart_loses_nothing(
    cluster: Cluster, store: JobStore
) -> None:
    start_service(cluster)
    http = httpx.Client(base_url=cluster.url, timeout=30)
    a, b = submit(http, "a", 5), submit(http, "b", 3)
    ids = [str(a["id"]), str(b["id"])]

    def mid_job() -> bool:
        done = [t for t in trials(store, ids[0]) if t.state == TrialState.COMPLETE]
        return bool(done) and bool(running_slots(store))

    wait_for(mid_job, 150, "a completed trial and a running one")
    jobs_before = job_ids(http)
    cluster.kill_all()  # the API, its embedded worker and the standalone one: a power cut
    crashed_at = datetime.now(UTC)
    snapshot = {job_id: trials(store, job_id) for job_id in ids}
    cut = [t for ts in snapshot.values() for t in ts if t.state == TrialState.RUNNING]
    completed = {
        (job_id, t.number): (t.values, t.params)
        for job_id, ts in snapshot.items() for t in ts if t.state == TrialState.COMPLETE
    }
    assert cut and completed

    start_service(cluster)

    def restarted_workers() -> list[WorkerRow]:
        with store._tx() as s:
            rows = list(s.scalars(select(WorkerRow).where(WorkerRow.started_at > crashed_at)))
        return rows if len(rows) == 2 else []

    wait_for(restarted_workers, 120, "both workers to start again")
    # The promise: once workers run again, the reaper settles every trial the crash cut
    # off within the grace period + one reaper interval (+ slack for a loaded machine).
    wait_for(
        lambda: all(store.storage.get_trial(t._trial_id).state != TrialState.RUNNING
                    for t in cut),
        GRACE_S + REAPER_S + LOADED_BOX_SLACK_S, "the reaper to settle the cut-off trials",
    )
    for job_id in ids:
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded",  # noqa: B023
                 180, f"job {job_id} to finish")
        assert_exact_budget(store, job_id)
    for trial in cut:
        settled = store.storage.get_trial(trial._trial_id)
        assert settled.state == TrialState.FAIL
        assert "lost (no heartbeat for" in settled.user_attrs["fail_reason"]
        if trial.params:
            job_id = next(j for j, ts in snapshot.items() if trial in ts)
            retries = [t for t in trials(store, job_id)
                       if t.user_attrs.get("retry_of") == trial.number]
            assert [r.params for r in retries] == [trial.params]
    for (job_id, number), before in completed.items():
        after = trials(store, job_id)[number]
        assert (after.state, (after.values, after.params)) == (TrialState.COMPLETE, before)
    # No job was duplicated, not even by a client retrying its submission after the crash.
    assert submit(http, "a", 5)["id"] == a["id"]
    assert job_ids(http) == jobs_before == sorted(ids)
    assert "database is locked" not in cluster.logs()


@pytest.mark.slow
def test_a_frozen_worker_that_comes_back_after_its_retry_changes_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    """SIGSTOP a worker mid-trial past the grace period: its trial is reaped and retried
    on the other worker. SIGCONT it afterwards: it is fenced, its result does not count,
    the retry's values and the job's counts stay as they were."""
    cluster = Cluster(sqlite_url, tmp_path, env=LEASES)
    engine = make_engine(sqlite_url)
    store = JobStore(engine)
    try:
        cluster.start_api(workers=0)
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        cluster.wait_ready()
        http = httpx.Client(base_url=cluster.url, timeout=30)
        job_id = str(submit(http, "frozen", 2)["id"])
        slot = wait_for(lambda: running_slots(store), 150, "a running trial")[0]
        frozen = cluster.name_of(worker_pid(slot.worker_id))
        cluster.signal(frozen, signal.SIGSTOP)
        wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["state"] == "succeeded",
                 180, "the job to finish on the other worker")
        before = http.get(f"/v1/jobs/{job_id}").json()
        events_before = http.get(f"/v1/jobs/{job_id}/trials").json()["items"]

        cluster.signal(frozen, signal.SIGCONT)
        wait_for(lambda: "was reaped meanwhile" in cluster.log(frozen), 60,
                 "the frozen worker to try to settle its trial")
        time.sleep(2 * REAPER_S)  # room for any late write it might still make
        after = http.get(f"/v1/jobs/{job_id}").json()
        assert after == before
        assert http.get(f"/v1/jobs/{job_id}/trials").json()["items"] == events_before
        assert after["trials"]["finished"] == after["trials"]["started"] == 2
        stale = store.storage.get_trial(slot.trial_id)
        assert stale.state == TrialState.FAIL
        assert stale.user_attrs["fail_reason"].startswith(f"worker {slot.worker_id} lost")
        (retry,) = [
            t for t in trials(store, job_id) if t.user_attrs.get("retry_of") == stale.number
        ]
        assert retry.state == TrialState.COMPLETE and retry.params == stale.params
        assert_exact_budget(store, job_id)
        assert cluster.processes[frozen].poll() is None  # it lives on, ready for new work
    finally:
        cluster.stop_all()
        engine.dispose()


@pytest.mark.slow
def test_chaos_demo_ends_with_the_exact_budget(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--workers", "2", "--trials", "4", "--epochs", "200",
         "--timeout", "240"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[-1].startswith("RESULT: job j_")
    assert lines[-1].endswith("succeeded with exactly 4 of 4 trials")
    story = "\n".join(lines)
    assert "kill -9 worker-" in story and "lost (no heartbeat for" in story
    assert "crash: kill -9 the API and every worker" in story


def test_a_late_refusal_for_a_finished_slot_does_not_stop_the_next_trial(
    sqlite_url: str, tmp_path: Path, make_spec: Callable[..., StudySpec]
) -> None:
    """The heartbeat thread may read the running slot, lose the CPU while the trial ends
    and the next one is claimed, then have its beat for the finished slot refused. Seen
    under load (8 workers on 2 cores): that refusal stopped the *next* trial as if it
    had been reaped. Only a refusal for the slot running now may fence."""
    migrate(sqlite_url)
    worker = Worker(Settings(database_url=sqlite_url, artifact_root=tmp_path / "artifacts"))
    store = worker.store
    store.create(make_spec(budget={"n_trials": 2, "max_epochs": 1}, parallelism=1))
    first = store.claim(worker.id)
    assert first is not None and store.finish(first.slot_id, TrialState.COMPLETE, [0.5])
    second = store.claim(worker.id)
    assert second is not None
    with worker._lock:  # what _run_claim records for the trial it runs now
        worker._current = (second.slot_id, None)
    worker._renew_lease(first.slot_id)  # the beat that read the first slot
    assert not worker.fenced.is_set()
    assert store.release(second.slot_id, "taken over")  # now the running slot is fenced
    worker._renew_lease(second.slot_id)
    assert worker.fenced.is_set()
    worker.storage.engine.dispose()


def test_a_trial_whose_worker_died_before_attaching_it_is_failed_and_retried(
    db_url: str, make_spec: Callable[..., StudySpec]
) -> None:
    """Optuna's ask starts a trial (here: pops an enqueued configuration) before the
    worker can attach it to its slot; a kill in between left it RUNNING for good and
    lost the configuration. The reaper of that slot now fails and retries it."""
    migrate(db_url)
    engine = make_engine(db_url)
    store = JobStore(engine)
    try:
        job, _ = store.create(make_spec(budget={"n_trials": 1, "max_epochs": 1}))
        store.enqueue(job.id, [{"lr": 0.02, "width": 8}])
        assert store.claim("dead-worker") is not None
        study = optuna.load_study(study_name=job.study_name, storage=store.storage)
        orphan = study.ask()  # ... and the worker is killed before attach_trial
        assert store.reap(grace_period_s=0, max_retries=1) == 1
        failed = store.storage.get_trial(orphan._trial_id)
        assert failed.state == TrialState.FAIL
        assert failed.user_attrs["fail_reason"].startswith("worker dead-worker lost")
        (retry,) = study.get_trials(states=(TrialState.WAITING,))
        assert retry.system_attrs["fixed_params"] == {"lr": 0.02, "width": 8}
        assert retry.user_attrs == {"retry_of": orphan.number, "attempt": 2}
        job = store.get(job.id)
        assert (job.state, job.started, job.finished) == ("running", 0, 0)
    finally:
        store.storage.engine.dispose()
        engine.dispose()


def test_only_the_reaper_fails_a_trial_never_optunas_own_stale_check(
    sqlite_url: str, tmp_path: Path, make_spec: Callable[..., StudySpec]
) -> None:
    """Workers used to turn on Optuna's heartbeat too. After a crash, a restarted worker
    could run Optuna's stale-trial check (as each trial starts) before the reaper: the
    lost trial became FAIL without a retry and counted, so the crash used up budget
    (seen with the chaos demo on PostgreSQL). Now the lease is the only authority: a
    trial whose lease is renewed stays RUNNING however old its Optuna heartbeat."""
    migrate(sqlite_url)
    settings = Settings(
        database_url=sqlite_url, artifact_root=tmp_path / "artifacts", device="cpu",
        torch_threads=1, heartbeat_interval_s=0.2, grace_period_s=1.0, reaper_interval_s=0.3,
        poll_interval_s=0.1,
    )
    engine = make_engine(sqlite_url)
    store = JobStore(engine)
    job, _ = store.create(make_spec(budget={"n_trials": 2, "max_epochs": 1}, parallelism=2))
    claim = store.claim("busy-worker")
    assert claim is not None
    trial = optuna.load_study(study_name=job.study_name, storage=store.storage).ask()
    assert store.attach_trial(claim.slot_id, trial._trial_id, trial.number)
    store.storage.record_heartbeat(trial._trial_id)  # then goes stale (3 x grace + reaper)
    done = threading.Event()

    def busy_worker_beats() -> None:
        while not done.wait(0.1):
            store.heartbeat(claim.slot_id, "busy-worker")

    beats = threading.Thread(target=busy_worker_beats)
    beats.start()
    try:
        time.sleep(3 * settings.grace_period_s + settings.reaper_interval_s + 0.5)
        assert Worker(settings).run(max_trials=1) == 0  # runs the job's other trial
    finally:
        done.set()
        beats.join()
    assert store.storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    job = store.get(job.id)
    assert (job.started, job.finished) == (2, 1)
    store.storage.engine.dispose()
    engine.dispose()
