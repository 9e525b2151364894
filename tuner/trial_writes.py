"""A running trial's user attributes and intermediate values, several in one transaction.

``Trial.set_user_attr`` and ``Trial.report`` commit each key or step on its own, and a
trial sets half a dozen attributes (``hp``, ``metrics``, ``curves``, ...) and reports
every epoch: on a database each commit is a round trip and a write, and the Python
around it costs more than the commit. Optuna has no batch call, so this writes the rows
of Optuna's public ``trial_user_attributes`` and ``trial_intermediate_values`` tables
with SQLAlchemy Core, under Optuna's rules: the trial must still be running, a key set
twice keeps the last value, a step reported twice keeps the first, values are JSON.
Other storages (in memory, tests) get one Optuna call per key and step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from sqlalchemy import Connection, Insert, Select, Update, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tuner.jobs.optuna_tables import trial_intermediate_values, trial_user_attributes, trials

__all__ = ["write"]

_UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
_NO_ATTRS: Mapping[str, Any] = {}
_NO_STEPS: Mapping[int, float] = {}


def write(
    trial: optuna.Trial,
    *,
    user_attrs: Mapping[str, Any] = _NO_ATTRS,
    steps: Mapping[int, float] = _NO_STEPS,
) -> None:
    """Set ``user_attrs`` and report ``steps`` (step -> value) of the running ``trial``
    at once: all of them or, if it finished meanwhile, none (``UpdateFinishedTrialError``,
    as Optuna raises). Steps already reported are kept, as ``Trial.report`` keeps them."""
    known = trial._cached_frozen_trial.intermediate_values
    steps = {int(step): float(value) for step, value in steps.items() if step not in known}
    if not user_attrs and not steps:
        return
    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache
    if not isinstance(backend, RDBStorage) or backend.engine.name not in _UPSERTS:
        for key, value in user_attrs.items():
            trial.set_user_attr(key, value)
        for step, value in steps.items():
            trial.report(value, step)
        return
    statements = _statements(backend.engine.name)
    with backend.engine.begin() as conn:
        _lock_running(conn, statements, trial)
        # One row's statement executed for many rows: SQLAlchemy compiles it once per
        # process, while a multi-row VALUES is not cached and was compiled every call.
        if user_attrs:
            conn.execute(statements.set_attrs, [
                {"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in user_attrs.items()
            ])
        if steps:
            conn.execute(statements.add_steps, [
                {"trial_id": trial._trial_id, "step": step, **_stored(value)}
                for step, value in steps.items()
            ])
    # The live Trial answers from its own copy, as after set_user_attr and report.
    trial._cached_frozen_trial.user_attrs.update(user_attrs)
    known.update(steps)


class _Statements(NamedTuple):
    """Built once per dialect: building a statement costs more than running it."""

    lock: Update  # takes the running trial's lock; matches no row once it finished
    exists: Select[Any]
    set_attrs: Insert  # a user attribute, upserted
    add_steps: Insert  # an intermediate value, kept if the step is already there


@cache
def _statements(dialect: str) -> _Statements:
    insert = _UPSERTS[dialect]
    this_trial = trials.c.trial_id == bindparam("id")
    attrs = insert(trial_user_attributes)
    return _Statements(
        lock=update(trials).where(this_trial, trials.c.state == "RUNNING")
        .values(state=trials.c.state),
        exists=select(trials.c.trial_id).where(this_trial),
        set_attrs=attrs.on_conflict_do_update(
            index_elements=["trial_id", "key"], set_={"value_json": attrs.excluded.value_json}
        ),
        add_steps=insert(trial_intermediate_values).on_conflict_do_nothing(
            index_elements=["trial_id", "step"]
        ),
    )


def _lock_running(conn: Connection, statements: _Statements, trial: optuna.Trial) -> None:
    """Raise unless ``trial`` is running in Optuna's ``trials`` table; write first, so
    the trial's row lock (PostgreSQL) or the write lock (SQLite) is taken before
    anything is read, and a concurrent finish waits or wins outright."""
    key = {"id": trial._trial_id}
    if conn.execute(statements.lock, key).rowcount == 1:
        return
    if conn.execute(statements.exists, key).first() is None:
        raise KeyError(f"no trial with id {trial._trial_id}")
    raise UpdateFinishedTrialError(
        f"trial #{trial.number} has already finished and cannot be updated"
    )


def _stored(value: float) -> dict[str, Any]:
    """Optuna's stored form of an intermediate value: NaN and infinities by type."""
    if math.isnan(value):
        return {"intermediate_value": None, "intermediate_value_type": "NAN"}
    if math.isinf(value):
        kind = "INF_POS" if value > 0 else "INF_NEG"
        return {"intermediate_value": None, "intermediate_value_type": kind}
    return {"intermediate_value": value, "intermediate_value_type": "FINITE"}
