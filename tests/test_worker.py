"""Workers: real training against real databases; kills, SIGTERM, cancel and DB errors.

Trials train tiny MLPs (iris: milliseconds; digits with 40 epochs: a few seconds,
long enough to be interrupted mid-trial).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from optuna.trial import TrialState
from safetensors.torch import load_file
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from tuner.cli import app
from tuner.engine import ranked_trials
from tuner.jobs.db import make_engine, migrate
from tuner.jobs.models import Job, SlotState, TrialSlot, WorkerRow, utcnow
from tuner.jobs.store import JobStore
from tuner.settings import Settings
from tuner.spec import StudySpec
from tuner.worker import Worker, WorkerPool, idle_wait, run_worker

SpecFactory = Callable[..., StudySpec]


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    migrate(sqlite_url)
    return fast_settings(sqlite_url, tmp_path)


def fast_settings(url: str, tmp_path: Path) -> Settings:
    """Short leases so lost workers are noticed within seconds."""
    return Settings(
        database_url=url, data_root=tmp_path, artifact_root=tmp_path / "artifacts",
        device="cpu", torch_threads=1,
        heartbeat_interval_s=0.2, grace_period_s=1.5, reaper_interval_s=0.3,
        poll_interval_s=0.1, shutdown_timeout_s=15,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    engine = make_engine(settings.database_url)
    yield JobStore(engine)
    engine.dispose()


@pytest.fixture
def long_spec(make_spec: SpecFactory) -> Callable[..., StudySpec]:
    """Digits for 40 epochs: a trial lasts a second or more, so it can be caught running."""

    def build(n_trials: int, parallelism: int = 1, epochs: int = 40) -> StudySpec:
        return make_spec(
            dataset={"name": "digits"}, budget={"n_trials": n_trials, "max_epochs": epochs},
            parallelism=parallelism, search_space={"epochs": epochs, "patience": 0, "width": 16},
        )

    return build


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting {timeout:g} s for {what}")


def running_slot(store: JobStore, with_params: bool = False) -> TrialSlot | None:
    """A running slot whose Optuna trial has started (and chosen its parameters)."""
    query = select(TrialSlot).where(
        TrialSlot.state == SlotState.running, TrialSlot.trial_id.is_not(None)
    )
    with store._tx() as s:
        for slot in s.scalars(query):
            if not with_params or store.storage.get_trial(slot.trial_id).params:
                return slot
    return None


def trials(store: JobStore, job: Job) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=job.study_name, storage=store.storage).get_trials()


def assert_exact_budget(store: JobStore, job_id: str, state: str = "succeeded") -> Job:
    """Ended (succeeded) with exactly n_trials counted, nothing left running or waiting."""
    job = store.get(job_id)
    assert (job.state, job.started, job.finished) == (state, job.n_trials, job.n_trials)
    states = [t.state for t in trials(store, job)]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    counted = [e for e in store.events(job.id, limit=1000) if e.kind == "trial"]
    assert counted[-1].data["finished"] == job.n_trials
    return job


# --- in one process -------------------------------------------------------------------------


def test_worker_keeps_weights_of_the_top_k_trials_only(
    settings: Settings, store: JobStore, make_spec: SpecFactory
) -> None:
    settings = settings.model_copy(update={"top_k_models": 2})
    job, _ = store.create(make_spec(budget={"n_trials": 5, "max_epochs": 3}))
    Worker(settings).run(max_trials=5)
    study = optuna.load_study(study_name=job.study_name, storage=store.storage)
    kept = {
        t.number
        for t in study.get_trials()
        for meta in get_all_artifact_meta(t, storage=store.storage)
        if (settings.artifact_root / meta.artifact_id).exists()
    }
    top = {t.number for t in ranked_trials(study)[:2]}
    assert kept == top
    best = load_file(str(settings.artifact_root / get_all_artifact_meta(
        ranked_trials(study)[0], storage=store.storage)[0].artifact_id))
    assert best and all(t.numel() > 0 for t in best.values())
    # Only trials in the top 2 of what had completed when they finished were uploaded.
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    entered = {t.number for i, t in enumerate(done) if sum(
        (sign * u.value, u.number) < (sign * t.value, t.number) for u in done[:i]) < 2}
    uploaded = {t.number for t in done if get_all_artifact_meta(t, storage=store.storage)}
    assert uploaded == entered



def test_worker_runs_a_job_to_its_budget(
    settings: Settings, store: JobStore, make_spec: SpecFactory
) -> None:
    job, _ = store.create(make_spec(budget={"n_trials": 3, "max_epochs": 3}))
    assert Worker(settings).run(max_trials=3) == 0
    job = assert_exact_budget(store, job.id)
    done = trials(store, job)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 3
    assert all("metrics" in t.user_attrs and "curves" in t.user_attrs for t in done)
    best = max(done, key=lambda t: t.value or 0)
    assert (job.best_trial, job.best_value) == (best.number, best.value)
    assert any(e.kind == "best" for e in store.events(job.id))


def test_diverged_trials_fail_and_count_and_a_job_of_only_failures_fails(
    settings: Settings, store: JobStore, make_spec: SpecFactory
) -> None:
    spec = make_spec(
        budget={"n_trials": 2, "max_epochs": 3},
        search_space={"lr": {"choices": [1.0e6]}, "optimizer": "sgd"},
    )
    job, _ = store.create(spec)
    Worker(settings).run(max_trials=2)
    job = assert_exact_budget(store, job.id, "failed")  # no trial completed
    failed = trials(store, job)
    assert [t.state for t in failed] == [TrialState.FAIL] * 2
    assert "lower lr" in failed[0].user_attrs["fail_reason"]
    assert "2 of 2 trials finished, none completed" in (job.reason or "")


def test_a_broken_dataset_fails_the_job_with_its_reason(
    settings: Settings, store: JobStore, make_spec: SpecFactory
) -> None:
    spec = make_spec(dataset={"name": "csv", "path": "missing.csv", "target": "y",
                              "task": "classification"},
                     search_space={"loss": "cross_entropy"})
    job, _ = store.create(spec)
    Worker(settings).run(max_trials=1)
    job = store.get(job.id)
    assert job.state == "failed" and "missing.csv" in (job.reason or "")
    assert store.claim("w") is None


def test_a_study_deleted_from_the_dashboard_fails_its_job_once(
    settings: Settings, store: JobStore, make_spec: SpecFactory
) -> None:
    """optuna-dashboard can delete a job's study; the job then fails with the reason,
    instead of every worker claiming its slot again at once (1,477 failures in 3 s)."""
    running, _ = store.create(make_spec(name="running", budget={"n_trials": 5, "max_epochs": 2}))
    worker = Worker(settings)
    worker.run(max_trials=1)  # the worker now holds the job's study
    optuna.delete_study(study_name=running.study_name, storage=store.storage)
    queued, _ = store.create(make_spec(name="queued", budget={"n_trials": 5, "max_epochs": 2}))
    optuna.delete_study(study_name=queued.study_name, storage=store.storage)

    worker.run(max_trials=3)  # one claim each, and nothing left to claim
    for job in (running, queued):
        job = store.get(job.id)
        assert job.state == "failed", job.reason
        assert f"study {job.study_name!r} was deleted" in (job.reason or "")
    assert store.claim("w") is None


def test_a_model_over_the_parameter_limit_fails_its_trial_before_it_is_built(
    settings: Settings, store: JobStore, make_spec: SpecFactory
) -> None:
    """The limit is checked on the meta device: a trial over it fails at once with the
    reason, and the job goes on; a model under it trains."""
    settings = settings.model_copy(update={"max_model_params": 2_000})
    jobs = {
        width: store.create(make_spec(
            name=f"w{width}", budget={"n_trials": 1, "max_epochs": 2},
            search_space={"width": width, "depth": 2},
        ))[0]
        for width in (256, 8)
    }
    Worker(settings).run(max_trials=2)
    (big,), (small,) = (trials(store, jobs[w]) for w in (256, 8))
    assert big.state == TrialState.FAIL
    reason = big.user_attrs["fail_reason"]
    assert reason.startswith("this configuration builds a model of 67,")  # 2x 256x256 + ...
    assert "over the limit of 2,000 (TUNER_MAX_MODEL_PARAMS)" in reason
    assert store.get(jobs[256].id).state == "failed"  # its one trial counted, as failed
    assert small.state == TrialState.COMPLETE


def test_cancel_stops_the_running_trial_and_resume_finishes(
    settings: Settings, store: JobStore, long_spec: Callable[..., StudySpec],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stopped configuration runs first after the resume; the log says so in a line
    each (Optuna's warning and traceback for a stop are filtered out)."""
    caplog.set_level(logging.INFO)
    # 400 epochs (~3 s): the trial outlasts the worker's once-a-second look at the flag.
    job, _ = store.create(long_spec(n_trials=2, epochs=400))
    stop = threading.Event()
    worker = threading.Thread(target=Worker(settings, stop=stop).run)
    worker.start()
    try:
        slot = wait_for(lambda: running_slot(store), 60, "a running trial")
        store.cancel(job.id)
        wait_for(lambda: store.get(job.id).running == 0, 30, "the trial to stop")
        job = store.get(job.id)
        assert (job.state, job.started, job.finished) == ("cancelled", 0, 0)
        stopped = store.storage.get_trial(slot.trial_id)
        assert stopped.state == TrialState.FAIL
        assert stopped.user_attrs["fail_reason"] == "interrupted: job cancelled"
        store.resume(job.id)
        wait_for(lambda: store.get(job.id).state == "succeeded", 90, "the resumed job")
    finally:
        stop.set()
        worker.join()
    assert_exact_budget(store, job.id)
    retry = next(t for t in trials(store, job) if t.user_attrs.get("retry_of") == stopped.number)
    assert retry.params == stopped.params and retry.state == TrialState.COMPLETE
    messages = [r.getMessage() for r in caplog.records]
    assert f"job {job.id}: trial stopped (job cancelled)" in messages
    assert f"job {job.id}: trial {retry.number} complete {retry.values}" in messages
    assert not any("failed with parameters" in m for m in messages)


def test_one_transient_heartbeat_error_does_not_kill_a_healthy_trial(
    settings: Settings, store: JobStore, long_spec: Callable[..., StudySpec]
) -> None:
    settings = settings.model_copy(update={"heartbeat_interval_s": 0.1, "grace_period_s": 0.6})
    job, _ = store.create(long_spec(n_trials=1, epochs=80))
    engine = make_engine(settings.database_url)
    beats: list[str] = []  # "error", then "ok" for each heartbeat that got through

    @event.listens_for(engine, "before_cursor_execute")
    def fail_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE trial_slots SET heartbeat_at") and not beats:
            beats.append("error")
            raise OperationalError(statement, None, Exception("injected: database is locked"))

    @event.listens_for(engine, "after_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE trial_slots SET heartbeat_at"):
            beats.append("ok")

    # An independent reaper, as another worker runs it: a silent slot would be reaped.
    done = threading.Event()

    def reaper() -> None:
        while not done.wait(0.1):
            store.reap(settings.grace_period_s, settings.max_retries)

    threading.Thread(target=reaper, daemon=True).start()
    try:
        Worker(settings, engine=engine).run(max_trials=1)
    finally:
        done.set()
        engine.dispose()
    assert beats[0] == "error" and "ok" in beats[1:]  # the heartbeat thread lived on
    job = assert_exact_budget(store, job.id)
    (trial,) = trials(store, job)
    assert trial.state == TrialState.COMPLETE


# --- worker processes -----------------------------------------------------------------------


def _worker_process(settings: Settings) -> None:
    raise SystemExit(run_worker(settings))


@pytest.mark.slow
def test_sigterm_mid_trial_exits_zero_and_retries_the_trial(
    settings: Settings, store: JobStore, long_spec: Callable[..., StudySpec]
) -> None:
    job, _ = store.create(long_spec(n_trials=1))
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_process, args=(settings,)
    )
    process.start()
    try:
        slot = wait_for(lambda: running_slot(store, with_params=True), 90, "a running trial")
        os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        process.join(settings.shutdown_timeout_s)
        assert process.exitcode == 0
    finally:
        process.kill()
    interrupted = store.storage.get_trial(slot.trial_id)
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted: worker shutting down"
    job = store.get(job.id)
    assert (job.state, job.started, job.finished) == ("running", 0, 0)
    (retry,) = [t for t in trials(store, job) if t.state == TrialState.WAITING]
    assert retry.user_attrs == {"retry_of": interrupted.number, "attempt": 1}
    assert retry.system_attrs["fixed_params"] == interrupted.params


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_pool_of_three_keeps_the_budget_exact_when_a_worker_is_killed(
    db: str, request: pytest.FixtureRequest, tmp_path: Path,
    long_spec: Callable[..., StudySpec],
) -> None:
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "postgres_url")
    migrate(url)
    # A loaded machine can starve a heartbeat thread for a while: a roomier lease here.
    settings = fast_settings(url, tmp_path).model_copy(
        update={"heartbeat_interval_s": 0.3, "grace_period_s": 4.0}
    )
    engine = make_engine(url)
    store = JobStore(engine)
    job, _ = store.create(long_spec(n_trials=4, parallelism=3))
    pool = WorkerPool(settings, 3, check_interval_s=0.2)
    pool.start()
    try:
        victim = wait_for(lambda: running_slot(store, with_params=True), 90, "a running trial")
        (process,) = [p for p in pool.processes if p.name == victim.worker_id]
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        wait_for(lambda: pool.replaced >= 1, 30, "a replacement worker")
        wait_for(lambda: store.get(job.id).state == "succeeded", 120, "the job to finish")
    finally:
        pool.stop(timeout=30)
    assert all(p.exitcode is not None for p in pool.processes)
    job = assert_exact_budget(store, job.id)
    by_number = {t.number: t for t in trials(store, job)}
    lost = by_number[victim.trial_number]
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["fail_reason"].startswith(f"worker {victim.worker_id} lost")
    (retry,) = [t for t in by_number.values() if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert sum(t.state != TrialState.FAIL for t in by_number.values()) == job.n_trials
    engine.dispose()


def test_idle_polls_start_fast_and_back_off_to_the_poll_interval() -> None:
    waits = [idle_wait(n, 0.5) for n in range(8)]
    assert waits[:4] == [0.05, 0.1, 0.2, 0.4]
    assert waits[4:] == [0.5] * 4
    assert idle_wait(10_000, 2.0) == 2.0
    assert idle_wait(0, 0.01) == 0.01  # a shorter configured interval wins


def test_worker_check_reads_the_heartbeat_a_container_healthcheck_needs(
    settings: Settings, store: JobStore, set_env: Callable[[str, str], None]
) -> None:
    """``tuner worker --check`` (docker-compose's worker healthcheck) passes while a worker
    on this host beats, and fails when none runs or when its last beat is too old."""
    url = settings.database_url
    set_env("TUNER_GRACE_PERIOD_S", "5")  # + the reaper's 5 s: 10 s of silence allowed

    def check() -> tuple[int, str]:
        result = CliRunner().invoke(
            app, ["worker", "--check", "--storage", url], env={"COLUMNS": "200", "NO_COLOR": "1"}
        )
        return result.exit_code, result.output

    code, out = check()
    assert code == 1 and f"no worker is running on {socket.gethostname()}" in out
    stop = threading.Event()
    worker = threading.Thread(target=Worker(settings, stop=stop).run)
    worker.start()
    try:
        code, out = wait_for(lambda: (r := check())[0] == 0 and r, 30, "a healthy check")
        assert f"healthy: a worker on {socket.gethostname()} was heard from" in out
    finally:
        stop.set()
        worker.join()
    code, out = check()  # a worker that stopped says so: it is not silently healthy
    assert code == 1 and "no worker is running" in out

    store.register_worker("frozen", socket.gethostname(), os.getpid())
    with store.engine.begin() as conn:
        conn.execute(update(WorkerRow).where(WorkerRow.id == "frozen").values(
            heartbeat_at=utcnow() - timedelta(seconds=600)))
    code, out = check()
    assert code == 1 and re.search(r"last heard from 60\d s ago, more than the 10 s allowed", out)

    unusable = CliRunner().invoke(app, ["worker", "--check", "--storage", "mysql://x/y"])
    assert unusable.exit_code == 1  # a healthcheck's failing code, even for a URL it cannot use
    assert "unsupported database URL" in unusable.output


def test_worker_check_imports_no_torch(settings: Settings) -> None:
    """It runs every 30 s beside a busy worker: seconds of torch import would be too much."""
    code = (
        "import sys; from typer.testing import CliRunner; from tuner.cli import app; "
        f"CliRunner().invoke(app, ['worker', '--check', '--storage', {settings.database_url!r}]); "
        "print(sorted(m for m in ('torch', 'tuner.engine') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
