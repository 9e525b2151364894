"""Tables of the job service, in the same database as Optuna's studies.

Alembic (``tuner/migrations``) creates them; ``tests/test_migrations.py`` checks that
the migrations and these classes agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), always read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATES = (JobState.queued, JobState.running)


class SlotState(StrEnum):
    running = "running"
    done = "done"  # the trial ended and counts toward the budget
    released = "released"  # interrupted (shutdown, cancel): not counted, params re-enqueued
    lost = "lost"  # reaped: its worker stopped heartbeating
    reaping = "reaping"  # fenced by the reaper, being settled (transient)
    releasing = "releasing"  # fenced by its worker, being released (transient)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    """A tuning job: a spec, a budget of trials and where it stands.

    ``started`` counts trial slots claimed and not released (running + counted), and
    ``finished`` the counted trials, so ``started - finished`` trials run right now.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_state", "state"),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    n_trials: Mapped[int] = mapped_column(Integer)
    timeout_s: Mapped[float | None] = mapped_column(Float)
    parallelism: Mapped[int] = mapped_column(Integer)
    started: Mapped[int] = mapped_column(Integer, default=0)
    finished: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    study_name: Mapped[str] = mapped_column(String(128), unique=True)
    direction: Mapped[str | None] = mapped_column(String(8))  # None: several metrics
    best_value: Mapped[float | None] = mapped_column(Float)
    best_trial: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    last_claim_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]

    @property
    def running(self) -> int:
        """Trials running now (claimed, not yet counted or released)."""
        return self.started - self.finished

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES


class TrialSlot(Base):
    """One claim of one trial of a job by one worker: the unit of leases and fencing."""

    __tablename__ = "trial_slots"
    __table_args__ = (
        Index("ix_trial_slots_state_heartbeat", "state", "heartbeat_at"),
        Index("ix_trial_slots_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    worker_id: Mapped[str] = mapped_column(String(64))
    trial_id: Mapped[int | None] = mapped_column(Integer)
    trial_number: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class JobEvent(Base):
    """What the SSE stream sends: ``state`` changes, finished ``trial``s, new ``best``s.

    Every writer of an event first locks its job's row, so a job's event ids grow in
    commit order and ``after=<last id>`` never skips one.
    """

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_id", "job_id", "id"),
        Index("ix_job_events_job_kind", "job_id", "kind", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class WorkerRow(Base):
    """A worker process, for operators: where it runs and when it last beat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
