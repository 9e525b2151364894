"""Optuna's own tables, the few columns tuner aggregates over, as SQLAlchemy Core.

Optuna's RDB schema is public and versioned by its own migrations; reading it with
Core lets one query count a study's trials by state (webhook payloads, in the same
transaction that ends a job) or bucket every trial's duration (``/metrics``) without
loading trials one by one. Optuna stores states by name (``COMPLETE``) and times as
naive UTC.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, column, table
from sqlalchemy.types import DateTime

studies = table(
    "studies",
    column("study_id", Integer),
    column("study_name", String),
)

trials = table(
    "trials",
    column("trial_id", Integer),
    column("study_id", Integer),
    column("state", String),
    column("datetime_start", DateTime),
    column("datetime_complete", DateTime),
)

TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
"""Every ``optuna.trial.TrialState`` name, in the order reports list them."""
