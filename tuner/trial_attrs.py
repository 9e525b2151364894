"""Several user attributes of a running trial in one transaction.

``Trial.set_user_attr`` commits each key on its own, and a trial sets half a dozen
(``hp``, ``metrics``, ``curves``, ...): on a database every commit is a round trip and
a write. Optuna has no batch call, so this writes the rows of Optuna's public
``trial_user_attributes`` table with SQLAlchemy Core, under the same rules as Optuna:
the trial must still be running, a key set twice keeps the last value, values are JSON.
Other storages (in memory, tests) get one ``set_user_attr`` per key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

_UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Set ``attrs`` on the running ``trial`` at once: all of them or, if it finished
    meanwhile, none (``UpdateFinishedTrialError``, as ``set_user_attr`` raises)."""
    if not attrs:
        return
    backend = getattr(trial.storage, "_backend", trial.storage)  # under Optuna's cache
    insert = _UPSERTS.get(backend.engine.name) if isinstance(backend, RDBStorage) else None
    if insert is None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    # Here, not at the top: tuner.jobs imports the engine, which imports the objective.
    from tuner.jobs.optuna_tables import trial_user_attributes, trials

    rows = [
        {"trial_id": trial._trial_id, "key": key, "value_json": json.dumps(value)}
        for key, value in attrs.items()
    ]
    with backend.engine.begin() as conn:
        # Write first: the trial's row lock (PostgreSQL) or the write lock (SQLite) is
        # taken before anything is read, so a concurrent finish waits or wins outright.
        running = conn.execute(
            update(trials)
            .where(trials.c.trial_id == trial._trial_id, trials.c.state == "RUNNING")
            .values(state=trials.c.state)
        ).rowcount
        if running != 1:
            exists = conn.execute(
                select(trials.c.trial_id).where(trials.c.trial_id == trial._trial_id)
            ).first()
            if exists is None:
                raise KeyError(f"no trial with id {trial._trial_id}")
            raise UpdateFinishedTrialError(
                f"trial #{trial.number} has already finished and cannot be updated"
            )
        stmt = insert(trial_user_attributes).values(rows)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=["trial_id", "key"], set_={"value_json": stmt.excluded.value_json}
        ))
    # The live Trial answers user_attrs from its own copy, as after set_user_attr.
    trial._cached_frozen_trial.user_attrs.update(attrs)
