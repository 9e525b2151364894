"""``TunerStorage.get_trial`` reads every kind of trial exactly as Optuna's own
``RDBStorage.get_trial`` does, on SQLite and PostgreSQL."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.engine import make_storage
from tuner.storage import TunerStorage


def _trials_of_every_kind(storage: RDBStorage) -> list[int]:
    """Trial ids: running, complete, pruned, failed, waiting, and a multi-objective one
    with an infinite value; params of every distribution, attrs, odd intermediate values."""
    study = optuna.create_study(storage=storage, direction="maximize")
    running = study.ask()
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    running.suggest_int("depth", 1, 4)
    running.suggest_int("width", 16, 256, step=16)
    running.suggest_categorical("optimizer", ["sgd", "adam", None])
    running.suggest_float("dropout", 0.0, 0.5, step=0.1)
    running.set_user_attr("metrics", {"val_loss": 0.5, "nan": math.nan})
    running.set_user_attr("curves", [1.0, 0.5])
    storage.set_trial_system_attr(running._trial_id, "rung", 2)
    for step, value in {1: 0.5, 2: math.nan, 3: math.inf, 4: -math.inf}.items():
        running.report(value, step)

    complete = study.ask()
    complete.suggest_categorical("optimizer", ["sgd", "adam", None])
    study.tell(complete, 0.75)
    pruned = study.ask()
    pruned.report(0.25, 3)
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial({"lr": 0.01}, user_attrs={"attempt": 2})

    pareto = optuna.create_study(storage=storage, directions=["minimize", "maximize"])
    both = pareto.ask()
    both.suggest_float("x", -1.0, 1.0)
    pareto.tell(both, [math.inf, 0.5])
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    return [t._trial_id for t in (running, complete, pruned, failed, both)] + [waiting._trial_id]


def _reads_as_optuna(url: str) -> None:
    storage = make_storage(url)
    assert isinstance(storage, TunerStorage)
    ids = _trials_of_every_kind(storage)
    for trial_id in ids:
        ours = storage.get_trial(trial_id)
        optunas = RDBStorage.get_trial(storage, trial_id)
        # repr: every field, and NaN equal to NaN.
        assert repr(ours) == repr(optunas)
        assert ours.state == optunas.state and ours.distributions == optunas.distributions
        assert type(ours.datetime_start) is type(optunas.datetime_start)
    assert {storage.get_trial(i).state for i in ids} == set(TrialState)
    with pytest.raises(KeyError):
        storage.get_trial(max(ids) + 1)
    storage.engine.dispose()


def test_trials_read_as_optuna_reads_them_on_sqlite(sqlite_url: str) -> None:
    _reads_as_optuna(sqlite_url)


@pytest.mark.postgres
def test_trials_read_as_optuna_reads_them_on_postgres(postgres_url: str) -> None:
    _reads_as_optuna(postgres_url)
