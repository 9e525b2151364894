"""The job store: states, idempotency, exact budgets, fair claims, fencing and the reaper.

Runs on SQLite and on PostgreSQL (a fresh database per test). Trials here are driven
through Optuna's ask interface, so no training runs; tests/test_worker.py trains.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from tuner.jobs.db import make_engine, migrate
from tuner.jobs.models import Job, JobState, SlotState, TrialSlot
from tuner.jobs.store import (
    Claim,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    JobNotFound,
    JobStore,
)
from tuner.spec import StudySpec

SpecFactory = Callable[..., StudySpec]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    migrate(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[JobStore]:
    engine = make_engine(db_url)
    store = JobStore(engine)
    yield store
    store.storage.remove_session()
    store.storage.engine.dispose()
    engine.dispose()


def study_of(store: JobStore, job_id: str) -> optuna.Study:
    return optuna.load_study(study_name=store.get(job_id).study_name, storage=store.storage)


LR = FloatDistribution(0.01, 0.1, log=True)


def run_trial(store: JobStore, slot_id: int, job_id: str, lr: float = 0.05) -> optuna.Trial:
    """Start the Optuna trial a worker would run for this slot (without training)."""
    trial = study_of(store, job_id).ask()
    store.storage.set_trial_param(trial._trial_id, "lr", LR.to_internal_repr(lr), LR)
    assert store.attach_trial(slot_id, trial._trial_id, trial.number)
    return trial


def complete(store: JobStore, slot_id: int, job_id: str, value: float) -> bool:
    trial = run_trial(store, slot_id, job_id)
    store.storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [value])
    return store.finish(slot_id, TrialState.COMPLETE, [value])


def claimed(store: JobStore, make_spec: SpecFactory, n_trials: int) -> tuple[Job, Claim]:
    """A new job of ``n_trials`` short trials, its first slot claimed by worker w1."""
    job, _ = store.create(make_spec(budget={"n_trials": n_trials, "max_epochs": 3}))
    claim = store.claim("w1")
    assert claim is not None and claim.job_id == job.id
    return job, claim


def slot(store: JobStore, slot_id: int) -> TrialSlot:
    with store._tx() as s:
        return s.get_one(TrialSlot, slot_id)


# --- create, get, list ---------------------------------------------------------------------


def test_create_queues_a_job_with_its_study(store: JobStore, make_spec: SpecFactory) -> None:
    job, created = store.create(make_spec(budget={"n_trials": 4, "max_epochs": 3}), owner="ann")
    assert created
    assert job.id.startswith("j_") and len(job.id) == 14
    assert (job.state, job.n_trials, job.started, job.finished) == ("queued", 4, 0, 0)
    assert job.study_name == f"job-{job.id}"
    assert study_of(store, job.id).user_attrs["spec"]["name"] == "tiny"
    assert store.get(job.id, owner="ann").id == job.id
    assert [e.data["state"] for e in store.events(job.id)] == ["queued"]


def test_another_owner_cannot_see_a_job(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec(), owner="ann")
    with pytest.raises(JobNotFound, match=job.id):
        store.get(job.id, owner="bob")
    with pytest.raises(JobNotFound):
        store.cancel(job.id, owner="bob")
    assert store.get(job.id, owner="ann").state == "queued"


def test_list_pages_newest_first_without_gaps(store: JobStore, make_spec: SpecFactory) -> None:
    ids = [store.create(make_spec(name=f"job{i}"), owner="ann")[0].id for i in range(5)]
    store.create(make_spec(), owner="bob")
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.list(owner="ann", cursor=cursor, limit=2)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == ids[::-1]
    store.cancel(ids[0])
    assert [j.id for j in store.list(owner="ann", state="cancelled")[0]] == [ids[0]]
    with pytest.raises(InvalidRequest, match="cursor"):
        store.list(cursor="nonsense")
    with pytest.raises(InvalidRequest, match="unknown state"):
        store.list(state="done")


# --- idempotency ---------------------------------------------------------------------------


def test_idempotency_key(store: JobStore, make_spec: SpecFactory) -> None:
    first, created = store.create(make_spec(), owner="ann", idempotency_key="k1")
    again, created_again = store.create(make_spec(), owner="ann", idempotency_key="k1")
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict, match="k1"):
        store.create(make_spec(name="other"), owner="ann", idempotency_key="k1")
    other_owner, created = store.create(make_spec(), owner="bob", idempotency_key="k1")
    assert created and other_owner.id != first.id


def test_concurrent_creates_with_one_key_make_one_job(
    store: JobStore, make_spec: SpecFactory
) -> None:
    results: list[tuple[str, bool]] = []

    def create() -> None:
        job, created = store.create(make_spec(), owner="ann", idempotency_key="same")
        results.append((job.id, created))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list(owner="ann")[0]) == 1
    assert len(optuna.get_all_study_names(store.storage)) == 1  # losers' studies removed


# --- claims and the budget -----------------------------------------------------------------


def test_claims_stop_at_the_budget_and_the_job_succeeds(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, _ = store.create(make_spec(budget={"n_trials": 3, "max_epochs": 3}, parallelism=3))
    claims = [store.claim("w1") for _ in range(4)]
    assert claims[3] is None
    assert store.get(job.id).state == "running"
    for value, claim in zip([0.5, 0.7, 0.6], claims[:3], strict=True):
        assert claim is not None and claim.job_id == job.id
        assert complete(store, claim.slot_id, job.id, value)
    job = store.get(job.id)
    assert (job.state, job.started, job.finished) == ("succeeded", 3, 3)
    assert job.reason == "3 of 3 trials finished"
    kinds = [(e.kind, e.data.get("trial_number")) for e in store.events(job.id)]
    assert ("best", 0) in kinds and ("best", 1) in kinds and ("best", 2) not in kinds
    assert job.best_value == 0.7  # iris accuracy is maximised


def test_a_several_metric_job_sends_best_for_each_trial_that_joins_the_pareto_front(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, _ = store.create(make_spec(
        metrics=[{"name": "val_accuracy"}, {"name": "n_params"}],  # maximise, minimise
        budget={"n_trials": 5, "max_epochs": 3}, parallelism=5,
    ))
    # 1 is beaten by 0 in both, 3 only ties 0; 2 and 4 each beat every earlier one in one.
    values = [[0.8, 100.0], [0.7, 200.0], [0.9, 300.0], [0.8, 100.0], [0.6, 50.0]]
    for claim, trial_values in zip([store.claim("w1") for _ in values], values, strict=True):
        assert claim is not None
        trial = run_trial(store, claim.slot_id, job.id)
        store.storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, trial_values)
        assert store.finish(claim.slot_id, TrialState.COMPLETE, trial_values)
    best = [e.data for e in store.events(job.id) if e.kind == "best"]
    assert [(b["trial_number"], b["values"]) for b in best] == [
        (0, [0.8, 100.0]), (2, [0.9, 300.0]), (4, [0.6, 50.0])]
    front = {t.number for t in study_of(store, job.id).best_trials}
    assert front == {0, 2, 3, 4}  # Optuna's front: the events' trials and 0's twin
    assert store.get(job.id).best_value is None  # no single best with several metrics


def test_parallelism_limits_running_trials(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec(parallelism=1))
    first = store.claim("w1")
    assert first is not None and store.claim("w2") is None
    assert complete(store, first.slot_id, job.id, 0.5)
    assert store.claim("w2") is not None


def test_claims_alternate_between_jobs(store: JobStore, make_spec: SpecFactory) -> None:
    a, _ = store.create(make_spec(name="a", budget={"n_trials": 3, "max_epochs": 3}, parallelism=3))
    b, _ = store.create(make_spec(name="b", budget={"n_trials": 3, "max_epochs": 3}, parallelism=3))
    order = [store.claim("w").job_id for _ in range(6)]  # type: ignore[union-attr]
    assert order == [a.id, b.id, a.id, b.id, a.id, b.id]


def _claim_and_finish(url: str, worker: str, gate: Any, out: Any) -> None:
    """One of several processes racing for slots; reports what it won."""
    store = JobStore(make_engine(url))
    won = []
    gate.wait()
    while (claim := store.claim(worker)) is not None:
        assert complete(store, claim.slot_id, claim.job_id, 0.5)
        won.append(claim.job_id)
    out.put(won)


@pytest.mark.slow
def test_four_processes_claim_exactly_the_budget(
    store: JobStore, db_url: str, make_spec: SpecFactory
) -> None:
    budgets = {"a": 13, "b": 7}
    jobs = {
        name: store.create(make_spec(name=name, budget={"n_trials": n, "max_epochs": 3},
                                     parallelism=64))[0]
        for name, n in budgets.items()
    }
    # fork: the children start at once (no torch import each) and open their own engines.
    ctx = multiprocessing.get_context("fork")
    out, gate = ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_claim_and_finish, args=(db_url, f"w{i}", gate, out))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    gate.set()
    won = [job_id for _ in procs for job_id in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for name, job in jobs.items():
        job = store.get(job.id)
        assert won.count(job.id) == budgets[name]
        assert (job.state, job.started, job.finished) == ("succeeded", budgets[name], budgets[name])


# --- state transitions ---------------------------------------------------------------------


def test_cancel_then_resume_continues_to_the_budget(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, claim = claimed(store, make_spec, n_trials=2)
    assert store.cancel(job.id).state == "cancelled"
    assert store.stop_reason(job.id) == "job cancelled"
    assert store.claim("w1") is None
    with pytest.raises(InvalidTransition, match="cancelled; cancel needs it to be queued, running"):
        store.cancel(job.id)
    assert complete(store, claim.slot_id, job.id, 0.5)  # a trial ending after cancel counts
    assert store.get(job.id).state == "cancelled"
    assert store.resume(job.id).state == "queued"
    with pytest.raises(InvalidTransition, match="resume needs it to be cancelled, failed"):
        store.resume(job.id)
    last = store.claim("w1")
    assert last is not None and store.claim("w1") is None
    assert complete(store, last.slot_id, job.id, 0.6)
    job = store.get(job.id)
    assert (job.state, job.started, job.finished) == ("succeeded", 2, 2)
    states = [e.data["state"] for e in store.events(job.id) if e.kind == "state"]
    assert states == ["queued", "running", "cancelled", "queued", "running", "succeeded"]


def test_a_job_whose_every_trial_failed_fails(store: JobStore, make_spec: SpecFactory) -> None:
    job, claim = claimed(store, make_spec, n_trials=1)
    trial = run_trial(store, claim.slot_id, job.id)
    store.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert store.finish(claim.slot_id, TrialState.FAIL, None)
    job = store.get(job.id)
    assert job.state == "failed" and f"GET /v1/jobs/{job.id}/trials?state=fail" in job.reason


def test_resuming_a_job_whose_trials_all_counted_after_the_cancel_ends_it(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, claim = claimed(store, make_spec, n_trials=1)
    store.cancel(job.id)
    assert complete(store, claim.slot_id, job.id, 0.5)  # its last epoch ended after all
    job = store.resume(job.id)
    assert (job.state, job.finished) == ("succeeded", 1)
    assert "1 of 1 trials finished" in (job.reason or "")


def test_update_budget_and_timeout(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec(budget={"n_trials": 3, "max_epochs": 3}, parallelism=2))
    claims = [store.claim("w1"), store.claim("w1")]
    with pytest.raises(InvalidRequest, match=r"below the 2 trials .* started; use at least 2"):
        store.update(job.id, n_trials=1)
    assert store.update(job.id, n_trials=2).n_trials == 2  # lowering to what started is fine
    for claim in claims:
        assert claim is not None and complete(store, claim.slot_id, job.id, 0.5)
    assert store.get(job.id).state == "succeeded"
    job = store.update(job.id, n_trials=3, timeout_s=60)
    assert (job.state, job.n_trials, job.timeout_s) == ("queued", 3, 60)
    claim = store.claim("w1")
    assert claim is not None and store.get(job.id).deadline_at is not None
    assert complete(store, claim.slot_id, job.id, 0.4)
    assert store.get(job.id).state == "succeeded"


def test_timeout_stops_claims_and_ends_the_job(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec(budget={"n_trials": 5, "max_epochs": 3, "timeout_s": 0.01}))
    claim = store.claim("w1")
    assert claim is not None
    time.sleep(0.05)
    assert store.claim("w1") is None
    assert store.stop_reason(job.id) == "job timeout reached"
    assert complete(store, claim.slot_id, job.id, 0.5)
    job = store.get(job.id)
    assert job.state == "succeeded" and "timeout of 0.01 s reached after 1 of 5" in job.reason


def test_a_trial_stopped_as_its_job_ends_runs_first_when_the_job_runs_on(
    store: JobStore, make_spec: SpecFactory
) -> None:
    """Cancel, timeout: the stopped configuration waits, and a resume (or more budget for a
    succeeded job) runs it before anything new."""
    job, _ = store.create(make_spec(budget={"n_trials": 5, "max_epochs": 3, "timeout_s": 0.3}))
    first, second = store.claim("w1"), store.claim("w2")
    assert first is not None and second is not None
    assert complete(store, first.slot_id, job.id, 0.5)
    stopped = run_trial(store, second.slot_id, job.id, lr=0.02)
    time.sleep(0.4)
    store.storage.set_trial_state_values(stopped._trial_id, TrialState.FAIL)
    assert store.release(second.slot_id, "job timeout reached")
    assert store.get(job.id).state == "succeeded"
    assert store.update(job.id, timeout_s=60).state == "queued"
    retry_claim = store.claim("w1")
    assert retry_claim is not None
    retry = study_of(store, job.id).ask()
    assert retry.user_attrs == {"retry_of": stopped.number, "attempt": 1}
    assert retry.suggest_float("lr", 0.01, 0.1, log=True) == pytest.approx(0.02)

    cancelled, _ = store.create(make_spec(name="c", budget={"n_trials": 2, "max_epochs": 3}))
    claim = store.claim("w1")
    assert claim is not None and claim.job_id == cancelled.id
    trial = run_trial(store, claim.slot_id, cancelled.id, lr=0.03)
    store.cancel(cancelled.id)
    store.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert store.release(claim.slot_id, "job cancelled")
    store.resume(cancelled.id)
    waiting = study_of(store, cancelled.id).get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{"retry_of": trial.number, "attempt": 1}]


def test_delete_removes_job_and_study(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec())
    assert store.claim("w1") is not None
    store.delete(job.id)
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert optuna.get_all_study_names(store.storage) == []
    assert store.stop_reason(job.id) == "job deleted"


# --- fencing, release and the reaper --------------------------------------------------------


def test_reaper_fails_a_silent_trial_and_retries_it_once(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, _ = store.create(make_spec(budget={"n_trials": 1, "max_epochs": 3}))
    first = store.claim("lost-worker")
    assert first is not None
    trial = run_trial(store, first.slot_id, job.id, lr=0.02)
    assert store.reap(grace_period_s=60, max_retries=1) == 0  # still within grace
    assert store.reap(grace_period_s=0, max_retries=1) == 1
    failed = store.storage.get_trial(trial._trial_id)
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"].startswith("worker lost-worker lost (no heartbeat for")
    assert slot(store, first.slot_id).state == SlotState.lost
    assert (store.get(job.id).started, store.get(job.id).finished) == (0, 0)
    # Fenced: the lost worker's late heartbeat and result change nothing.
    assert not store.heartbeat(first.slot_id, "lost-worker")
    assert not store.finish(first.slot_id, TrialState.COMPLETE, [0.9])
    assert (store.get(job.id).started, store.get(job.id).finished) == (0, 0)
    # The retry runs the same parameters as attempt 2; lost again, it counts.
    retry_claim = store.claim("w2")
    assert retry_claim is not None
    retry = study_of(store, job.id).ask()
    assert retry.user_attrs == {"retry_of": trial.number, "attempt": 2}
    assert retry.suggest_float("lr", 0.01, 0.1, log=True) == pytest.approx(0.02)
    assert store.attach_trial(retry_claim.slot_id, retry._trial_id, retry.number, attempt=2)
    assert store.reap(grace_period_s=0, max_retries=1) == 1
    job = store.get(job.id)
    assert (job.state, job.started, job.finished) == ("failed", 1, 1)  # its one trial: lost
    assert "1 of 1 trials finished, none completed" in (job.reason or "")
    waiting = study_of(store, job.id).get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    assert waiting == []


def test_reaper_counts_a_trial_its_worker_finished_before_dying(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, claim = claimed(store, make_spec, n_trials=1)
    trial = run_trial(store, claim.slot_id, job.id)
    store.storage.set_trial_state_values(trial._trial_id, TrialState.COMPLETE, [0.8])
    assert store.reap(grace_period_s=0, max_retries=1) == 1
    job = store.get(job.id)
    assert (job.state, job.finished, job.best_value) == ("succeeded", 1, 0.8)
    assert store.storage.get_trial(trial._trial_id).state == TrialState.COMPLETE


def test_release_gives_the_slot_back_and_requeues_params(
    store: JobStore, make_spec: SpecFactory
) -> None:
    job, claim = claimed(store, make_spec, n_trials=1)
    trial = run_trial(store, claim.slot_id, job.id, lr=0.03)
    store.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert store.release(claim.slot_id, "worker shutting down")
    assert not store.release(claim.slot_id, "again")  # fenced: settled once
    assert store.get(job.id).started == 0
    retry = study_of(store, job.id).get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in retry] == [{"retry_of": trial.number, "attempt": 1}]
    trial_events = [e.data for e in store.events(job.id) if e.kind == "trial"]
    assert trial_events[-1]["reason"] == "worker shutting down" and trial_events[-1]["retried"]


# --- enqueue and warm start -----------------------------------------------------------------


def test_enqueue_checks_each_configuration(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec())
    assert store.enqueue(job.id, [{"lr": 0.05, "width": 16}, {"lr": 0.02}]) == 2
    waiting = study_of(store, job.id).get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"lr": 0.05, "width": 16}, {"lr": 0.02},
    ]
    with pytest.raises(InvalidRequest) as err:
        store.enqueue(job.id, [{"lr": 5.0}, {"momentum": 0.9}])
    assert "[0] lr: 5.0 is outside" in str(err.value)
    assert "[1] momentum: not a searched parameter; searched: loss, lr, width" in str(err.value)
    branches = {"optimizer": {"choices": {"sgd": {"momentum": {"low": 0.0, "high": 0.9}},
                                          "adamw": {}}}}
    job, _ = store.create(make_spec(name="branches", search_space=branches))
    with pytest.raises(InvalidRequest) as err:  # momentum would be dropped without a word
        store.enqueue(job.id, [{"optimizer": "adamw", "optimizer.sgd.momentum": 0.5}])
    assert "[0] optimizer.sgd.momentum: belongs to optimizer sgd, but this configuration " \
        "sets optimizer adamw" in str(err.value)
    assert store.enqueue(job.id, [{"optimizer": "sgd", "optimizer.sgd.momentum": 0.5}]) == 1


def test_warm_start_enqueues_the_best_fitting_configurations(
    store: JobStore, make_spec: SpecFactory
) -> None:
    earlier, _ = store.create(make_spec(budget={"n_trials": 3, "max_epochs": 3}, parallelism=3))
    study = study_of(store, earlier.id)
    for lr, width, value in [(0.02, 8, 0.6), (0.09, 16, 0.9), (0.05, 16, 0.7)]:
        study.enqueue_trial({"lr": lr, "width": width})
        trial = study.ask()
        trial.suggest_float("lr", 0.01, 0.1, log=True)
        trial.suggest_categorical("width", [8, 16])
        study.tell(trial, value)
    narrower = make_spec(
        name="next", warm_start_from=earlier.id,
        search_space={"lr": {"low": 0.01, "high": 0.06, "log": True}},
    )
    job, _ = store.create(narrower)
    waiting = study_of(store, job.id).get_trials(states=(TrialState.WAITING,))
    # Best first; lr 0.09 no longer fits, so only its width is kept.
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"width": 16}, {"lr": 0.05, "width": 16}, {"lr": 0.02, "width": 8},
    ]
    with pytest.raises(JobNotFound, match="warm_start_from names job 'j_nope'"):
        store.create(make_spec(warm_start_from="j_nope"))


def test_events_resume_after_an_id(store: JobStore, make_spec: SpecFactory) -> None:
    job, _ = store.create(make_spec())
    store.cancel(job.id)
    store.resume(job.id)
    events = store.events(job.id)
    assert [e.data["state"] for e in store.events(job.id, after=events[0].id)] == [
        "cancelled", "queued",
    ]
    assert store.events(job.id, after=events[-1].id) == []


def test_transition_table_covers_every_state() -> None:
    from tuner.jobs.store import TRANSITIONS

    reachable = {target for _, target in TRANSITIONS.values()}
    sources = {s for sources, _ in TRANSITIONS.values() for s in sources}
    assert reachable | {JobState.queued} == set(JobState) == sources
