"""A running trial's user attrs and intermediate values in one transaction, read back
by Optuna."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from sqlalchemy import event

from tuner.storage import make_storage
from tuner.trial_writes import write

ATTRS = {
    "hp": {"lr": 0.01, "optimizer": {"name": "adam"}},
    "metrics": {"val_loss": 0.5, "nan": math.nan},
    "curves": {"train_loss": [1.0, 0.5]},
    "epochs_run": 2,
    "task": None,
}
STEPS = {1: 0.5, 2: math.nan, 3: math.inf, 4: -math.inf, 5: 0.25}


def _writes_in_one_commit(url: str) -> None:
    storage = make_storage(url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.set_user_attr("epochs_run", 1)  # set before: replaced, not duplicated
    trial.report(0.75, 1)  # reported before: kept, as Trial.report keeps the first
    commits: list[None] = []
    event.listen(storage.engine, "commit", lambda conn: commits.append(None))

    write(trial, user_attrs=ATTRS, steps=STEPS)

    assert len(commits) == 1
    # The live trial sees them, as after set_user_attr and report.
    assert trial.user_attrs == ATTRS
    assert trial._cached_frozen_trial.intermediate_values[1] == 0.75
    study.tell(trial, 1.0)
    stored = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
    assert stored.user_attrs["hp"] == ATTRS["hp"] and stored.user_attrs["epochs_run"] == 2
    assert stored.user_attrs["task"] is None and math.isnan(stored.user_attrs["metrics"]["nan"])
    values = stored.intermediate_values
    assert sorted(values) == [1, 2, 3, 4, 5]
    assert values[1] == 0.75 and math.isnan(values[2]) and values[5] == 0.25
    assert values[3] == math.inf and values[4] == -math.inf
    with pytest.raises(UpdateFinishedTrialError):
        write(trial, user_attrs={"late": True}, steps={6: 0.1})
    stored = optuna.load_study(study_name=study.study_name, storage=url).trials[0]
    assert "late" not in stored.user_attrs and 6 not in stored.intermediate_values
    storage.engine.dispose()


def test_attrs_and_steps_are_written_in_one_commit_on_sqlite(sqlite_url: str) -> None:
    _writes_in_one_commit(sqlite_url)


@pytest.mark.postgres
def test_attrs_and_steps_are_written_in_one_commit_on_postgres(postgres_url: str) -> None:
    _writes_in_one_commit(postgres_url)


def test_other_storages_get_one_call_per_key_and_step() -> None:
    study = optuna.create_study()
    trial = study.ask()
    write(trial, user_attrs=ATTRS, steps={1: 0.5, 2: 0.25})
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == ATTRS
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 0.25}
