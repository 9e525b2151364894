"""The webhook outbox: a job's notice is written with the state change that ends it.

When a job with a ``webhook_url`` succeeds, fails or is cancelled, ``enqueue`` adds a
``webhook_deliveries`` row in the same transaction as the new state, holding the whole
payload as it was at that moment. The job's outcome is committed whether or not any
webhook answers, and the notice is never lost: ``tuner.webhooks.Deliverer`` (run by
``tuner serve``) sends pending rows later, retrying with backoff. A resumed job that
ends again gets a new notice.

Rows have no foreign key to ``jobs``: a job deleted before its notice went out is
still announced.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, Integer, String, Text, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from tuner.jobs.models import Base, Job, JobEvent, JobState, utcnow
from tuner.jobs.optuna_tables import TRIAL_STATES, studies, trials

NOTIFIED_STATES = (JobState.succeeded, JobState.failed, JobState.cancelled)
"""Job states that send the job's webhook (``job.<state>`` events)."""


class DeliveryState(StrEnum):
    pending = "pending"  # waiting for its next attempt
    delivered = "delivered"  # the receiver answered 2xx
    failed = "failed"  # gave up: attempts used up, or the destination is refused


class WebhookDelivery(Base):
    """One notice to one URL, and how sending it went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(16))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[dict[str, Any]]
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None]
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


def enqueue(s: Session, job: Job, previous: str | None) -> WebhookDelivery | None:
    """Queue the job's notice if it just ended and asked for one (same transaction)."""
    url = job.spec.get("webhook_url")
    if not url or job.state not in NOTIFIED_STATES:
        return None
    now = utcnow()
    delivery = WebhookDelivery(
        job_id=job.id, event=f"job.{job.state}", url=url, payload=payload(s, job, previous),
        state=DeliveryState.pending, attempts=0, next_attempt_at=now, created_at=now,
    )
    s.add(delivery)
    return delivery


def payload(s: Session, job: Job, previous: str | None) -> dict[str, Any]:
    """What the receiver gets: the job's outcome, best result, counts and times."""
    best = None  # with several metrics no one trial is best
    if job.direction is not None:
        best = s.scalar(
            select(JobEvent.data)
            .where(JobEvent.job_id == job.id, JobEvent.kind == "best")
            .order_by(JobEvent.id.desc())
            .limit(1)
        )
    counts = dict.fromkeys(TRIAL_STATES, 0)
    counts.update(s.execute(
        select(trials.c.state, func.count())
        .select_from(trials.join(studies, trials.c.study_id == studies.c.study_id))
        .where(studies.c.study_name == job.study_name)
        .group_by(trials.c.state)
    ).all())
    return {
        "event": f"job.{job.state}",
        "job": {
            "id": job.id,
            "name": job.name,
            "owner": job.owner,
            "state": str(job.state),
            "previous_state": previous,
            "reason": job.reason,
            "objective": job.spec.get("objective"),
            "study_name": job.study_name,
            "url": f"/v1/jobs/{job.id}",
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        },
        "best": {
            "trial_number": job.best_trial,
            "value": job.best_value,
            "direction": job.direction,
            "params": best.get("params") if best else None,
        },
        "trials": {
            "n_trials": job.n_trials,
            "finished": job.finished,
            **{state.lower(): n for state, n in counts.items()},
        },
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None
