"""Job service: tables, migrations and the store that is the only writer of jobs.

See ``tuner.jobs.store`` for how trials count toward a job's budget.
"""

from tuner.jobs.db import make_engine, migrate
from tuner.jobs.models import Job, JobEvent, JobState, SlotState, TrialSlot, WorkerRow
from tuner.jobs.store import (
    TRANSITIONS,
    Claim,
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    JobError,
    JobNotFound,
    JobStore,
)

__all__ = [
    "TRANSITIONS",
    "Claim",
    "IdempotencyConflict",
    "InvalidRequest",
    "InvalidTransition",
    "Job",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobState",
    "JobStore",
    "SlotState",
    "TrialSlot",
    "WorkerRow",
    "make_engine",
    "migrate",
]
