"""The job store: the only writer of jobs, trial slots and job events.

How trials count toward a job's budget (``n_trials``)
-----------------------------------------------------

A worker runs a trial only after it claimed a *slot*: one atomic
``UPDATE jobs SET started = started + 1 WHERE started < n_trials ...`` whose row count
says whether it won. ``started`` counts slots claimed and not released, ``finished``
the trials that count, so the budget is exact with any number of workers.

- COMPLETE and PRUNED trials count (a pruned trial is a result: the sampler learns
  from it).
- FAIL because the objective failed (a diverged loss, ``fail_reason`` says so) counts:
  running it again would fail again.
- FAIL because the worker was lost (no heartbeat for ``grace_period_s``): the reaper
  fails the Optuna trial with ``fail_reason`` "worker <id> lost ...". While its
  ``attempt <= max_retries`` the slot is released (it does not count) and the same
  parameters are enqueued for a retry (user attrs ``retry_of``, ``attempt``); after
  that it counts.
- Interrupted (worker shutdown, job cancelled, job timeout): the trial is FAIL with
  ``fail_reason``, the slot is released and does not count, and its parameters are
  enqueued, so the budget and the configuration survive: the retry runs first when the
  job runs on (at once, or after a resume or a PATCH that gives it more).

A job succeeds when ``finished == n_trials`` and nothing runs, or when its timeout
passes (counted from when the run started); cancel ends it at once and running trials
stop after their current epoch; resume puts a failed or cancelled job back in the queue
to continue to the same budget.

Locking: every transaction that changes a job first runs an UPDATE on the job's row.
On PostgreSQL that takes the row lock; on SQLite it takes the database's write lock
(pysqlite begins the transaction at the first write, and the busy timeout waits for
it). What is read afterwards is current, so the state machine can decide in Python.
Optuna's storage is written only outside our transactions: on SQLite a second writer
inside one would wait for the lock its own process holds.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import ColumnElement, Engine, Update, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuner import engine as optuna_engine
from tuner.jobs import outbox
from tuner.jobs.models import (
    ACTIVE_STATES,
    Job,
    JobEvent,
    JobState,
    SlotState,
    TrialSlot,
    WorkerRow,
    utcnow,
)
from tuner.jobs.optuna_tables import studies, study_directions, trials
from tuner.jobs.wakeup import notify_work
from tuner.settings import get_settings
from tuner.spec import SpecError, StudySpec, parse_spec
from tuner.storage import make_storage

JOB_STUDY_PREFIX = "job-"
"""A job's Optuna study is named this and the job id."""
WARM_START_TOP_K = 10
"""How many of an earlier job's best configurations ``warm_start_from`` enqueues."""

_Row = TypeVar("_Row", Job, TrialSlot)

FINISHED_TRIAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class JobError(Exception):
    """Base of the store's errors; each message says what to change."""


class JobNotFound(JobError):
    """No such job for this owner (the API answers 404)."""


class IdempotencyConflict(JobError):
    """The Idempotency-Key was used before with another request body (409)."""


class InvalidTransition(JobError):
    """The job's state does not allow the request (409)."""


class InvalidRequest(JobError):
    """The request's values cannot be used (422)."""


# --- the state machine ------------------------------------------------------------------

TRANSITIONS: dict[str, tuple[frozenset[JobState], JobState]] = {
    "start": (frozenset({JobState.queued}), JobState.running),
    "succeed": (frozenset(ACTIVE_STATES), JobState.succeeded),
    "fail": (frozenset(ACTIVE_STATES), JobState.failed),
    "cancel": (frozenset(ACTIVE_STATES), JobState.cancelled),
    "resume": (frozenset({JobState.failed, JobState.cancelled}), JobState.queued),
    "extend": (frozenset({JobState.succeeded}), JobState.queued),
}
"""Every allowed change of a job's state: action -> (from states, to state)."""


def _transition(s: Session, job: Job, action: str, reason: str | None = None) -> None:
    """Apply ``action`` to a locked job and record a ``state`` event."""
    sources, target = TRANSITIONS[action]
    if job.state not in sources:
        allowed = ", ".join(sorted(sources))
        raise InvalidTransition(
            f"job {job.id} is {job.state}; {action} needs it to be {allowed}"
        )
    now = utcnow()
    previous = job.state
    job.state = target
    job.reason = reason
    job.updated_at = now
    if target == JobState.running:
        job.started_at = now
        job.deadline_at = now + timedelta(seconds=job.timeout_s) if job.timeout_s else None
    elif target == JobState.queued:
        job.ended_at = job.deadline_at = None
        job.cancel_requested = False
    else:
        job.ended_at = now
    if target == JobState.queued:
        notify_work(s)
    _event(s, job, "state", {"state": target.value, "previous": previous, "reason": reason})
    outbox.enqueue(s, job, previous)  # the job's webhook notice commits with its outcome


def _event(s: Session, job: Job, kind: str, data: dict[str, Any]) -> None:
    s.add(JobEvent(job_id=job.id, kind=kind, data=data, created_at=utcnow()))


def _joins_front(s: Session, job: Job, values: list[float]) -> bool:
    """Whether no earlier complete trial of a several-metric job equals or beats
    ``values`` in every metric (call with the job's row locked). Each trial that passed
    sent a ``best`` event, and any earlier trial is matched by one of those, so they are
    the only ones to compare. Directions come from Optuna's study, which cannot drift."""
    signs = [
        1.0 if direction == "MINIMIZE" else -1.0
        for direction in s.scalars(
            select(study_directions.c.direction)
            .select_from(study_directions.join(
                studies, study_directions.c.study_id == studies.c.study_id
            ))
            .where(studies.c.study_name == job.study_name)
            .order_by(study_directions.c.objective)
        )
    ]
    mine = [sign * v for sign, v in zip(signs, values, strict=True)]
    earlier = s.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.kind == "best")
    )
    return not any(
        all(sign * v <= m for sign, v, m in zip(signs, data["values"], mine, strict=True))
        for data in earlier
    )


def _updated(s: Session, statement: Update, entity: type[_Row]) -> _Row | None:
    """The row ``statement`` (an UPDATE of one row of ``entity``) changed, fresh, read back
    by RETURNING in the same statement; None when it matched no row."""
    rows = s.scalars(
        statement.returning(entity), execution_options={"populate_existing": True}
    ).all()
    return rows[0] if len(rows) == 1 else None


def _maybe_end(s: Session, job: Job) -> None:
    """End an active job whose budget is spent or whose time is up, once nothing runs:
    succeeded with a result, failed when no trial completed (or was pruned)."""
    if not job.is_active or job.running > 0:
        return
    if job.finished >= job.n_trials:
        reason = f"{job.finished} of {job.n_trials} trials finished"
    elif job.deadline_at is not None and job.deadline_at <= utcnow():
        reason = (
            f"timeout of {job.timeout_s:g} s reached after {job.finished} of "
            f"{job.n_trials} trials"
        )
    else:
        return
    if _has_result(s, job):
        _transition(s, job, "succeed", reason)
    else:
        _transition(s, job, "fail", (
            f"{reason}, none completed; the failed trials' reasons: "
            f"GET /v1/jobs/{job.id}/trials?state=fail"
        ))


def _has_result(s: Session, job: Job) -> bool:
    """Whether a trial of the job's study completed or was pruned (a result to build on)."""
    found = s.scalar(
        select(trials.c.trial_id)
        .join(studies, studies.c.study_id == trials.c.study_id)
        .where(studies.c.study_name == job.study_name, trials.c.state.in_(("COMPLETE", "PRUNED")))
        .limit(1)
    )
    return found is not None


# --- what the store hands out --------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A trial slot won by a worker: run one trial of ``study_name`` for ``job_id``."""

    slot_id: int
    job_id: str
    study_name: str
    spec: dict[str, Any]


def new_job_id() -> str:
    return "j_" + secrets.token_hex(6)


def request_hash(spec: StudySpec) -> str:
    """Same spec, same hash, whatever the key order of the request body."""
    body = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(
            "cursor is not one this service gave out; pass next_cursor from the last page"
        ) from None


class JobStore:
    """Jobs, trial slots and events on one database shared with Optuna's storage.

    >>> store = JobStore(make_engine("sqlite:///studies/tuner.db"))  # doctest: +SKIP
    >>> job, created = store.create(spec, idempotency_key="run-42")  # doctest: +SKIP
    """

    def __init__(self, engine: Engine, storage: RDBStorage | None = None) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._storage = storage

    @property
    def storage(self) -> RDBStorage:
        """Optuna's storage on the same database, opened on first use."""
        if self._storage is None:
            url = self.engine.url.render_as_string(hide_password=False)
            self._storage = make_storage(url)
        return self._storage

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def _lock(self, s: Session, job_id: str, owner: str | None = None) -> Job:
        """Lock the job's row (see the module docstring) and return it, fresh."""
        where = [Job.id == job_id] + ([Job.owner == owner] if owner is not None else [])
        job = _updated(s, update(Job).where(*where).values(updated_at=utcnow()), Job)
        if job is None:
            raise JobNotFound(f"no job {job_id!r}; list your jobs with GET /v1/jobs")
        return job

    # --- jobs ---------------------------------------------------------------------------

    def create(
        self, spec: StudySpec, *, owner: str = "local", idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Queue a job for ``spec`` and create its Optuna study; ``True`` when created.

        With ``idempotency_key``, the same key and spec return the first job (even from
        concurrent requests: a unique constraint decides), another spec raises
        IdempotencyConflict. ``warm_start_from`` enqueues that job's best configurations.
        """
        digest = request_hash(spec)
        if idempotency_key is not None:
            existing = self._by_key(owner, idempotency_key, digest)
            if existing is not None:
                return existing, False
        warm = self._warm_start_params(spec, owner) if spec.warm_start_from else []
        job_id = new_job_id()
        study_name = f"{JOB_STUDY_PREFIX}{job_id}"
        try:
            study = optuna_engine.create_study(spec, self.storage, study_name)
        except SpecError as exc:
            raise InvalidRequest(str(exc)) from None
        for params in warm:
            study.enqueue_trial(params, user_attrs={"warm_start_from": spec.warm_start_from})
        now = utcnow()
        job = Job(
            id=job_id, owner=owner, name=spec.name, spec=spec.model_dump(mode="json"),
            state=JobState.queued, n_trials=spec.budget.n_trials,
            timeout_s=spec.budget.timeout_s, parallelism=spec.parallelism, started=0,
            finished=0, cancel_requested=False, idempotency_key=idempotency_key,
            request_hash=digest, study_name=study_name, created_at=now, updated_at=now,
            direction=study.direction.name.lower() if len(study.directions) == 1 else None,
        )
        try:
            with self._tx() as s:
                s.add(job)
                s.flush()
                _event(s, job, "state", {"state": "queued", "previous": None, "reason": None})
                notify_work(s)
        except IntegrityError:
            optuna.delete_study(study_name=study_name, storage=self.storage)
            if idempotency_key is None:
                raise
            existing = self._by_key(owner, idempotency_key, digest)
            if existing is None:
                raise
            return existing, False
        return job, True

    def _by_key(self, owner: str, key: str, digest: str) -> Job | None:
        with self._tx() as s:
            job = s.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))
        if job is not None and job.request_hash != digest:
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used for job {job.id} with another "
                "request body; use a new key for a new job"
            )
        return job

    def get(self, job_id: str, *, owner: str | None = None) -> Job:
        with self._tx() as s:
            job = s.get(Job, job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(f"no job {job_id!r}; list your jobs with GET /v1/jobs")
        return job

    def list(
        self,
        *,
        owner: str | None = None,
        state: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first; pass the returned cursor to get the next page (None: last)."""
        if state is not None and state not in JobState.__members__:
            raise InvalidRequest(f"unknown state {state!r}; use one of {', '.join(JobState)}")
        if not 1 <= limit <= 500:
            raise InvalidRequest(f"limit must be between 1 and 500, got {limit}")
        query = select(Job)
        if owner is not None:
            query = query.where(Job.owner == owner)
        if state is not None:
            query = query.where(Job.state == state)
        if cursor is not None:
            created, last_id = _decode_cursor(cursor)
            query = query.where(
                or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
            )
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self._tx() as s:
            jobs = list(s.scalars(query))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, _encode_cursor(jobs[-1]) if more else None

    def active_count(self, owner: str) -> int:
        """Queued and running jobs of ``owner`` (for a per-owner limit)."""
        with self._tx() as s:
            query = select(func.count()).where(Job.owner == owner, Job.state.in_(ACTIVE_STATES))
            return s.scalar(query) or 0

    def cancel(self, job_id: str, *, owner: str | None = None) -> Job:
        """Stop claiming; running trials stop after their current epoch."""
        with self._tx() as s:
            job = self._lock(s, job_id, owner)
            _transition(s, job, "cancel", "cancelled on request")
            job.cancel_requested = True
        return job

    def resume(self, job_id: str, *, owner: str | None = None) -> Job:
        """Queue a failed or cancelled job again; it continues to the same budget, or
        succeeds at once when its last trials counted after the cancel (it would wait in
        the queue forever: no claim fits a spent budget)."""
        with self._tx() as s:
            job = self._lock(s, job_id, owner)
            _transition(s, job, "resume", f"resumed after {job.finished} of {job.n_trials} trials")
            _maybe_end(s, job)
        return job

    def fail(self, job_id: str, reason: str) -> None:
        """End an active job that cannot run (its spec or data is broken); else no-op."""
        with self._tx() as s:
            job = self._lock(s, job_id)
            if job.is_active:
                _transition(s, job, "fail", reason)

    def update(
        self,
        job_id: str,
        *,
        n_trials: int | None = None,
        timeout_s: float | None = None,
        owner: str | None = None,
    ) -> Job:
        """Change the budget or timeout, up or down (the job's spec shows the new ones); a
        succeeded job given more of either runs again.

        ``n_trials`` may not go below the trials already started (claimed or counted);
        ``timeout_s`` counts from when the current run started.
        """
        settings = get_settings()
        if n_trials is not None and not 1 <= n_trials <= settings.max_trials:
            raise InvalidRequest(f"n_trials must be between 1 and {settings.max_trials}")
        if timeout_s is not None and not 0 < timeout_s <= settings.max_timeout_s:
            raise InvalidRequest(f"timeout_s must be > 0 and <= {settings.max_timeout_s:g}")
        with self._tx() as s:
            job = self._lock(s, job_id, owner)
            if n_trials is not None:
                if n_trials < job.started:
                    raise InvalidRequest(
                        f"n_trials {n_trials} is below the {job.started} trials job {job.id} "
                        f"already started; use at least {job.started}"
                    )
                job.n_trials = n_trials
            if timeout_s is not None:
                job.timeout_s = timeout_s
                if job.started_at is not None and job.state == JobState.running:
                    job.deadline_at = job.started_at + timedelta(seconds=timeout_s)
            asked = {"n_trials": n_trials, "timeout_s": timeout_s}
            changed = {k: v for k, v in asked.items() if v is not None}
            job.spec = {**job.spec, "budget": {**job.spec.get("budget", {}), **changed}}
            if job.state == JobState.succeeded and (
                job.finished < job.n_trials or timeout_s is not None
            ):
                said = ", ".join(f"{k} {v:g}" for k, v in changed.items())
                _transition(s, job, "extend", f"budget changed: {said}")
            else:
                _maybe_end(s, job)
        return job

    def delete(self, job_id: str, *, owner: str | None = None) -> None:
        """Delete the job, its slots, events and Optuna study; running trials stop."""
        with self._tx() as s:
            job = self._lock(s, job_id, owner)
            for table in (JobEvent, TrialSlot):
                s.query(table).filter(table.job_id == job.id).delete()
            s.delete(job)
        with contextlib.suppress(KeyError):  # never created, or deleted by an earlier try
            optuna.delete_study(study_name=job.study_name, storage=self.storage)

    def enqueue(
        self, job_id: str, params_list: Sequence[dict[str, Any]], *, owner: str | None = None
    ) -> int:
        """Enqueue known configurations to try first; each must fit the job's space."""
        job = self.get(job_id, owner=owner)
        if not job.is_active:
            raise InvalidTransition(
                f"job {job.id} is {job.state}; enqueue needs it queued or running "
                "(resume it first)"
            )
        dists = _distributions(parse_spec(job.spec))
        problems = []
        for i, params in enumerate(params_list):
            problems += [f"[{i}] {p}" for p in _misfits(params, dists)]
        if problems:
            raise InvalidRequest("configurations outside the job's space:\n" + "\n".join(problems))
        study = optuna_engine.load_study(self.storage, job.study_name)
        for params in params_list:
            study.enqueue_trial(dict(params), user_attrs={"enqueued": True})
        return len(params_list)

    def _warm_start_params(self, spec: StudySpec, owner: str) -> list[dict[str, Any]]:
        """The best configurations of ``spec.warm_start_from``, cut to the new space."""
        source = spec.warm_start_from or ""
        try:
            earlier = self.get(source, owner=owner)
        except JobNotFound:
            raise JobNotFound(
                f"warm_start_from names job {source!r}, which does not exist; "
                "give the id of one of your earlier jobs"
            ) from None
        study = optuna_engine.load_study(self.storage, earlier.study_name)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
        trials = [t for t in trials if t.values and math.isfinite(t.values[0])]
        trials.sort(key=lambda t: sign * t.values[0])
        dists = _distributions(spec)
        configs: list[dict[str, Any]] = []
        for trial in trials:
            fitting = {k: v for k, v in trial.params.items() if not _misfits({k: v}, dists)}
            if fitting and fitting not in configs:
                configs.append(fitting)
            if len(configs) == WARM_START_TOP_K:
                break
        return configs

    def events(self, job_id: str, *, after: int = 0, limit: int = 100) -> list[JobEvent]:
        """The job's events with id > ``after``, oldest first (SSE Last-Event-ID)."""
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
        with self._tx() as s:
            return list(s.scalars(query))

    def stop_reason(self, job_id: str) -> str | None:
        """Why a trial of this job should stop now (cancelled, deleted, timed out), or None."""
        with self._tx() as s:
            row = s.execute(
                select(Job.state, Job.cancel_requested, Job.deadline_at).where(Job.id == job_id)
            ).one_or_none()
        if row is None:
            return "job deleted"
        state, cancel, deadline = row
        if cancel or state not in ACTIVE_STATES:
            return f"job {state}"
        if deadline is not None and deadline <= utcnow():
            return "job timeout reached"
        return None

    # --- workers ------------------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, pid: int) -> None:
        now = utcnow()
        with self._tx() as s:
            s.merge(WorkerRow(
                id=worker_id, hostname=hostname, pid=pid, state="running",
                started_at=now, heartbeat_at=now,
            ))

    def worker_heartbeat(self, worker_id: str, state: str = "running") -> None:
        with self._tx() as s:
            s.execute(
                update(WorkerRow)
                .where(WorkerRow.id == worker_id)
                .values(heartbeat_at=utcnow(), state=state)
            )

    def claim(self, worker_id: str) -> Claim | None:
        """Win one trial slot of the job that waited longest, or None when none has room.

        Candidates are queued or running, not cancelled, not past their deadline, with
        budget left and fewer running trials than their parallelism; the least recently
        claimed goes first, so no job starves another. The conditional UPDATE is what
        decides: losing a race just moves on to the next candidate.
        """
        now = utcnow()
        eligible = (
            Job.state.in_(ACTIVE_STATES),
            Job.cancel_requested.is_(False),
            Job.started < Job.n_trials,
            Job.started - Job.finished < Job.parallelism,
            or_(Job.deadline_at.is_(None), Job.deadline_at > now),
        )
        with self._tx() as s:
            candidates = list(s.scalars(
                select(Job.id)
                .where(*eligible)
                .order_by(Job.last_claim_at.asc().nulls_first(), Job.created_at, Job.id)
                .limit(8)
            ))
        for job_id in candidates:
            with self._tx() as s:
                job = _updated(s, update(Job).where(Job.id == job_id, *eligible).values(
                    started=Job.started + 1, last_claim_at=now, updated_at=now), Job)
                if job is None:
                    continue
                if job.state == JobState.queued:
                    _transition(s, job, "start", None)
                slot = TrialSlot(
                    job_id=job_id, worker_id=worker_id, attempt=1, state=SlotState.running,
                    claimed_at=now, heartbeat_at=now,
                )
                s.add(slot)
                s.flush()
                return Claim(slot.id, job.id, job.study_name, job.spec)
        return None

    def attach_trial(self, slot_id: int, trial_id: int, number: int, attempt: int = 1) -> bool:
        """Record which Optuna trial the slot runs; False when the slot was fenced."""
        with self._tx() as s:
            result = s.execute(
                update(TrialSlot)
                .where(TrialSlot.id == slot_id, TrialSlot.state == SlotState.running)
                .values(trial_id=trial_id, trial_number=number, attempt=attempt,
                        heartbeat_at=utcnow())
            )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def heartbeat(self, slot_id: int, worker_id: str) -> bool:
        """Renew the lease; False when the slot is no longer this worker's (fenced)."""
        with self._tx() as s:
            result = s.execute(
                update(TrialSlot)
                .where(
                    TrialSlot.id == slot_id,
                    TrialSlot.worker_id == worker_id,
                    TrialSlot.state == SlotState.running,
                )
                .values(heartbeat_at=utcnow())
            )
        return result.rowcount == 1  # type: ignore[attr-defined]

    def finish(
        self,
        slot_id: int,
        trial_state: TrialState,
        values: Sequence[float] | None,
        *,
        params: dict[str, Any] | None = None,
    ) -> bool:
        """Count the slot's finished trial; False (and no change) when it was fenced."""
        with self._tx() as s:
            slot = self._fence(s, slot_id, SlotState.running, SlotState.done)
            if slot is None:
                return False
            job = self._lock(s, slot.job_id)
            self._count(s, job, slot, trial_state, values, params)
            _maybe_end(s, job)
        return True

    def _fence(
        self, s: Session, slot_id: int, expected: SlotState, target: SlotState,
        reason: str | None = None, *also: ColumnElement[bool],
    ) -> TrialSlot | None:
        """Move a slot from ``expected`` to ``target``; None when someone else moved it."""
        return _updated(
            s,
            update(TrialSlot)
            .where(TrialSlot.id == slot_id, TrialSlot.state == expected, *also)
            .values(state=target, ended_at=utcnow(), reason=reason),
            TrialSlot,
        )

    def _count(
        self,
        s: Session,
        job: Job,
        slot: TrialSlot,
        trial_state: TrialState,
        values: Sequence[float] | None,
        params: dict[str, Any] | None,
        reason: str | None = None,
    ) -> None:
        """One more trial counts: bump ``finished``, send ``trial`` (and ``best``) events:
        a new best value, or with several metrics a new point of the Pareto front."""
        job.finished += 1
        values = list(values) if values is not None else None
        _event(s, job, "trial", {
            "trial_number": slot.trial_number, "state": trial_state.name.lower(),
            "values": values, "finished": job.finished, "n_trials": job.n_trials,
            "reason": reason,
        })
        if trial_state != TrialState.COMPLETE or not values:
            return
        if not all(math.isfinite(v) for v in values):  # a diverged trial is no one's best
            return
        if job.direction is None:
            improved = _joins_front(s, job, values)
        else:
            value = values[0]
            improved = job.best_value is None or (
                value > job.best_value if job.direction == "maximize" else value < job.best_value
            )
            if improved:
                job.best_value, job.best_trial = value, slot.trial_number
        if improved:
            _event(s, job, "best", {
                "trial_number": slot.trial_number, "values": values, "params": params,
            })

    def release(self, slot_id: int, reason: str) -> bool:
        """End a slot without counting it (shutdown, cancel, timeout) and re-enqueue its
        parameters for when the job runs on; False when the slot was fenced."""
        with self._tx() as s:
            slot = self._fence(s, slot_id, SlotState.running, SlotState.releasing, reason)
        if slot is None:
            return False
        self._settle(slot)
        return True

    def _settle(
        self, slot: TrialSlot, max_retries: int | None = None, grace_period_s: float = 0.0
    ) -> None:
        """Finish a fenced slot (``releasing`` or ``reaping``): Optuna first, then counts.

        The slot keeps its place in ``started`` while its parameters are enqueued, so no
        other claim can take the budget before the retry waits in the study. Safe to run
        again when a process dies half way: the reaper picks such slots up.
        """
        trial = self._trial(slot.trial_id)
        told = trial is not None and trial.state in FINISHED_TRIAL
        if trial is not None and not told:
            self._fail_trial(trial, slot.reason or "interrupted")
        lost = slot.state == SlotState.reaping
        if lost and trial is None and max_retries is not None:
            self._fail_orphans(slot, max_retries, grace_period_s / 2)
        if not lost:
            outcome, counts = SlotState.released, False
        elif told:  # its worker told Optuna, then died before counting
            outcome, counts = SlotState.done, True
        else:
            outcome = SlotState.lost
            counts = trial is not None and max_retries is not None and slot.attempt > max_retries
        study_name = self._retry_study(slot.job_id)
        retried = not counts and trial is not None and bool(trial.params) and bool(study_name)
        if retried:
            study = optuna.load_study(study_name=study_name, storage=self.storage)
            study.enqueue_trial(trial.params, user_attrs={  # type: ignore[union-attr]
                "retry_of": trial.number,  # type: ignore[union-attr]
                "attempt": slot.attempt + 1 if lost else slot.attempt,
            })
        with self._tx() as s:
            if self._fence(s, slot.id, SlotState(slot.state), outcome, slot.reason) is None:
                return
            job = self._lock(s, slot.job_id)
            if counts:
                final = self._trial(slot.trial_id)
                self._count(
                    s, job, slot, final.state if final else TrialState.FAIL,
                    final.values if final else None, final.params if final else None,
                    slot.reason,
                )
            else:
                job.started -= 1
                _event(s, job, "trial", {
                    "trial_number": slot.trial_number, "state": "fail", "values": None,
                    "finished": job.finished, "n_trials": job.n_trials,
                    "reason": slot.reason, "retried": retried,
                })
            _maybe_end(s, job)

    def _fail_orphans(self, slot: TrialSlot, max_retries: int, older_than_s: float) -> None:
        """Fail the job's RUNNING trials that no slot ever attached; retry their params.

        A worker killed between Optuna's ask (which starts a trial, or pops an enqueued
        retry) and ``attach_trial`` leaves such a trial behind, and its slot is reaped
        without knowing it. A live worker attaches moments after asking, so a trial
        unattached for ``older_than_s`` is an orphan.
        """
        study_name = self._retry_study(slot.job_id)
        if study_name is None:
            return
        try:
            study_id = self.storage.get_study_id_from_name(study_name)
        except KeyError:
            return
        cutoff = datetime.now() - timedelta(seconds=older_than_s)  # Optuna's naive local clock
        running = self.storage.get_all_trials(study_id, states=(TrialState.RUNNING,))
        old = {t._trial_id: t for t in running if t.datetime_start and t.datetime_start < cutoff}
        if not old:
            return
        with self._tx() as s:
            attached = set(s.scalars(select(TrialSlot.trial_id).where(
                TrialSlot.job_id == slot.job_id, TrialSlot.trial_id.in_(list(old))
            )))
        for trial_id in old.keys() - attached:
            trial = old[trial_id]
            try:  # only one reaper gets past this for a trial: the others see it finished
                self.storage.set_trial_user_attr(
                    trial_id, "fail_reason", f"{slot.reason} before attaching this trial"
                )
                self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
            except (UpdateFinishedTrialError, KeyError):
                continue
            params = trial.system_attrs.get("fixed_params") or trial.params
            attempt = int(trial.user_attrs.get("attempt", 1))
            if params and attempt <= max_retries:
                study = optuna.load_study(study_name=study_name, storage=self.storage)
                study.enqueue_trial(
                    params, user_attrs={"retry_of": trial.number, "attempt": attempt + 1}
                )

    def _trial(self, trial_id: int | None) -> FrozenTrial | None:
        if trial_id is None:
            return None
        try:
            return self.storage.get_trial(trial_id)
        except KeyError:
            return None

    def _fail_trial(self, trial: FrozenTrial, reason: str) -> None:
        try:
            self.storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, KeyError):
            pass  # finished meanwhile (or its study was deleted): nothing left to fail

    def _retry_study(self, job_id: str) -> str | None:
        """The study where a retry of the job's trial waits, else None (job deleted).

        Ended jobs too: a cancelled or failed job continues on resume, a succeeded one
        when PATCH gives it more, and the stopped configurations run first then.
        """
        with self._tx() as s:
            return s.scalar(select(Job.study_name).where(Job.id == job_id))

    def reap(self, grace_period_s: float, max_retries: int) -> int:
        """Fail the trials of slots silent for ``grace_period_s`` and retry their params.

        Also finishes slots whose settling was interrupted. Cheap when nothing is stale
        (one indexed query) and idempotent, so every worker may run it. Returns the
        number of slots reaped.
        """
        cutoff = utcnow() - timedelta(seconds=grace_period_s)
        with self._tx() as s:
            stale = list(s.scalars(select(TrialSlot).where(or_(
                and_(TrialSlot.state == SlotState.running, TrialSlot.heartbeat_at < cutoff),
                and_(
                    TrialSlot.state.in_((SlotState.reaping, SlotState.releasing)),
                    TrialSlot.ended_at < cutoff,
                ),
            )).limit(100)))
        reaped = 0
        for slot in stale:
            if slot.state == SlotState.running:
                silent = (utcnow() - slot.heartbeat_at).total_seconds()
                reason = f"worker {slot.worker_id} lost (no heartbeat for {silent:.0f} s)"
                with self._tx() as s:
                    fenced = self._fence(
                        s, slot.id, SlotState.running, SlotState.reaping, reason,
                        TrialSlot.heartbeat_at < cutoff,
                    )
                if fenced is None:
                    continue
                slot = fenced  # as fenced: it may have attached its trial meanwhile
                reaped += 1
            self._settle(slot, max_retries, grace_period_s)
        self._expire_jobs()
        return reaped

    def _expire_jobs(self) -> None:
        """End active jobs whose deadline passed while no trial ran."""
        with self._tx() as s:
            due = list(s.scalars(select(Job.id).where(
                Job.state.in_(ACTIVE_STATES), Job.deadline_at <= utcnow(),
                Job.started == Job.finished,
            )))
        for job_id in due:
            with self._tx() as s:
                _maybe_end(s, self._lock(s, job_id))


def _distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    from tuner import space
    from tuner.objective import get_objective

    try:
        return space.distributions(space.resolve_space(spec, get_objective(spec.objective)))
    except SpecError as exc:
        raise InvalidRequest(str(exc)) from None


def _misfits(params: dict[str, Any], dists: dict[str, BaseDistribution]) -> list[str]:
    """What keeps ``params`` out of the space, one line per parameter."""
    if not isinstance(params, dict):
        return ["a configuration is an object of parameter -> value"]
    if not params:
        return [f"an empty configuration; give some of: {', '.join(sorted(dists))}"]
    problems = []
    for name, value in params.items():
        dist = dists.get(name)
        if dist is None:
            problems.append(
                f"{name}: not a searched parameter; searched: {', '.join(sorted(dists))}"
            )
            continue
        try:
            fits = dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):
            fits = False
        if not fits:
            problems.append(f"{name}: {value!r} is outside {_described(dist)}")
        dim, _, rest = name.partition(".")
        branch = rest.partition(".")[0]
        if rest and dim in params and params[dim] != branch:
            problems.append(
                f"{name}: belongs to {dim} {branch}, but this configuration sets {dim} "
                f"{params[dim]}; drop it or set {dim} {branch}"
            )
    return problems


def _described(dist: BaseDistribution) -> str:
    """A distribution as a spec would write it, not Optuna's repr."""
    if isinstance(dist, CategoricalDistribution):
        return f"the choices {list(dist.choices)}"
    low, high = dist.low, dist.high  # type: ignore[attr-defined]
    scale = " (log)" if getattr(dist, "log", False) else ""
    step = f" in steps of {dist.step}" if getattr(dist, "step", None) else ""  # type: ignore[attr-defined]
    return f"[{low:g}, {high:g}]{scale}{step}"
