"""Several user attributes of a running trial in one transaction, read back by Optuna."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from sqlalchemy import event

from tuner.engine import make_storage
from tuner.trial_attrs import set_user_attrs

ATTRS = {
    "hp": {"lr": 0.01, "optimizer": {"name": "adam"}},
    "metrics": {"val_loss": 0.5, "nan": math.nan},
    "curves": {"train_loss": [1.0, 0.5]},
    "epochs_run": 2,
    "task": None,
}


def _writes_in_one_commit(url: str) -> None:
    storage = make_storage(url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.set_user_attr("epochs_run", 1)  # set before: replaced, not duplicated
    commits: list[None] = []
    event.listen(storage.engine, "commit", lambda conn: commits.append(None))

    set_user_attrs(trial, ATTRS)

    assert len(commits) == 1
    assert trial.user_attrs == ATTRS  # the live trial sees them, as after set_user_attr
    study.tell(trial, 1.0)
    stored = optuna.load_study(study_name=study.study_name, storage=url).trials[0].user_attrs
    assert stored["hp"] == ATTRS["hp"] and stored["epochs_run"] == 2 and stored["task"] is None
    assert math.isnan(stored["metrics"]["nan"])
    with pytest.raises(UpdateFinishedTrialError):
        set_user_attrs(trial, {"late": True})
    assert "late" not in optuna.load_study(
        study_name=study.study_name, storage=url
    ).trials[0].user_attrs
    storage.engine.dispose()


def test_user_attrs_are_written_in_one_commit_on_sqlite(sqlite_url: str) -> None:
    _writes_in_one_commit(sqlite_url)


@pytest.mark.postgres
def test_user_attrs_are_written_in_one_commit_on_postgres(postgres_url: str) -> None:
    _writes_in_one_commit(postgres_url)


def test_other_storages_get_one_call_per_key() -> None:
    study = optuna.create_study()
    trial = study.ask()
    set_user_attrs(trial, ATTRS)
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == ATTRS
