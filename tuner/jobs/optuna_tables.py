"""Optuna's own tables, the few columns tuner reads, as SQLAlchemy Core.

Optuna's RDB schema is public and versioned by its own migrations; reading it with
Core lets one query count a study's trials by state (webhook payloads, in the same
transaction that ends a job), bucket every trial's duration (``/metrics``) or pick one
page of trials for the API without loading the whole study. Optuna stores states and
value types by name (``COMPLETE``, ``INF_POS``) and times as naive UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    Connection,
    Enum,
    Float,
    Integer,
    String,
    Text,
    column,
    extract,
    func,
    table,
)
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import DateTime

TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
"""Every ``optuna.trial.TrialState`` name, in the order reports list them."""

# Optuna's enum columns are PostgreSQL enum types: typed as such, a comparison with a
# name binds that type (as String it binds VARCHAR, which PostgreSQL refuses to compare).

studies = table(
    "studies",
    column("study_id", Integer),
    column("study_name", String),
)

trials = table(
    "trials",
    column("trial_id", Integer),
    column("number", Integer),
    column("study_id", Integer),
    column("state", Enum(*TRIAL_STATES, name="trialstate")),
    column("datetime_start", DateTime),
    column("datetime_complete", DateTime),
)

study_directions = table(
    "study_directions",
    column("study_id", Integer),
    column("objective", Integer),
    column("direction", Enum("NOT_SET", "MINIMIZE", "MAXIMIZE", name="studydirection")),
)

trial_values = table(
    "trial_values",
    column("trial_id", Integer),
    column("objective", Integer),
    column("value", Float),
    column("value_type", Enum("FINITE", "INF_POS", "INF_NEG", name="trialvaluetype")),
)

trial_params = table(
    "trial_params",
    column("param_id", Integer),
    column("trial_id", Integer),
    column("param_name", String),
    column("param_value", Float),
    column("distribution_json", Text),
)

trial_user_attributes = table(
    "trial_user_attributes",
    column("trial_id", Integer),
    column("key", String),
    column("value_json", Text),
)

trial_intermediate_values = table(
    "trial_intermediate_values",
    column("trial_id", Integer),
    column("step", Integer),
    column("intermediate_value", Float),
    column(
        "intermediate_value_type",
        Enum("FINITE", "INF_POS", "INF_NEG", "NAN", name="trialintermediatevaluetype"),
    ),
)


def seconds_between(
    conn: Connection, start: ColumnElement[object], end: ColumnElement[object]
) -> ColumnElement[float]:
    """``end - start`` in seconds, in the database's own date arithmetic (SQLite's
    date functions keep milliseconds)."""
    if conn.dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)
