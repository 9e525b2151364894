"""``TunerStorage`` reads every kind of trial exactly as Optuna's own ``RDBStorage``
does, one at a time and as a study's (changed) trials, and writes parameters as it does,
checks included, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import sqlite3

import optuna
import pytest
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from tuner.storage import TunerStorage, make_storage


def _same(ours: list[FrozenTrial], optunas: list[FrozenTrial]) -> None:
    # repr: every field, and NaN equal to NaN.
    assert [repr(t) for t in ours] == [repr(t) for t in optunas]
    for mine, theirs in zip(ours, optunas, strict=True):
        assert mine.state == theirs.state and mine.distributions == theirs.distributions
        assert type(mine.datetime_start) is type(theirs.datetime_start)


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
    _same([storage.get_trial(i) for i in ids], [RDBStorage.get_trial(storage, i) for i in ids])
    assert {storage.get_trial(i).state for i in ids} == set(TrialState)
    with pytest.raises(KeyError):
        storage.get_trial(max(ids) + 1)

    study_ids = sorted({s._study_id for s in storage.get_all_studies()})
    first, last = min(ids), max(ids)
    reads = [  # (states, included_trial_ids, trial_id_greater_than), as Optuna's cache asks
        (None, set(), -1),
        ((TrialState.WAITING,), set(), -1),
        ((TrialState.COMPLETE, TrialState.PRUNED), set(), -1),
        (None, set(), first),
        (None, {first, first + 1, last + 5}, first + 2),
        ((TrialState.RUNNING,), {first}, first + 3),
        (None, set(), last),
    ]
    for study_id in study_ids:
        for states, included, after in reads:
            _same(
                storage._get_trials(study_id, states, included, after),
                RDBStorage._get_trials(storage, study_id, states, included, after),
            )
    with pytest.raises(KeyError):
        storage._get_trials(max(study_ids) + 1, None, set(), -1)
    # Through Optuna's cache, as samplers and the dashboard read a study.
    for summary in optuna.get_all_study_summaries(storage):
        loaded = optuna.load_study(study_name=summary.study_name, storage=storage)
        _same(loaded.get_trials(), RDBStorage.get_all_trials(storage, loaded._study_id))
    storage.engine.dispose()


def test_trials_read_as_optuna_reads_them_on_sqlite(sqlite_url: str) -> None:
    _reads_as_optuna(sqlite_url)


def test_more_changed_trials_than_the_database_takes_in_one_query(sqlite_url: str) -> None:
    """Past SQLite's limit of bound variables the ids are filtered after the read, as
    Optuna does (the limit is lowered here to 4 instead of creating 32,767 trials;
    Optuna's own fallback needs more than 4)."""
    storage = make_storage(sqlite_url)
    study = optuna.create_study(storage=storage)
    running = [study.ask() for _ in range(10)]
    for trial in running[::2]:
        study.tell(trial, 1.0)
    ids = {t._trial_id for t in running[1::2]} | {running[0]._trial_id, 9999}
    after = running[6]._trial_id
    expected = RDBStorage._get_trials(storage, study._study_id, None, ids, after)
    storage.engine.dispose()
    event.listen(
        storage.engine, "connect",
        lambda conn, _: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 4),
    )
    read = storage._get_trials(study._study_id, None, ids, after)
    assert [t.number for t in read] == [0, 1, 3, 5, 7, 8, 9]
    _same(read, expected)
    storage.engine.dispose()


@pytest.mark.postgres
def test_trials_read_as_optuna_reads_them_on_postgres(postgres_url: str) -> None:
    _reads_as_optuna(postgres_url)


def _param_writes(storage: RDBStorage) -> tuple[list[str], list[tuple[object, object]]]:
    """What each parameter write did (``ok`` or the error's type), and the study's trials'
    params and distributions after them, read by Optuna's own code."""
    study_id = storage.create_new_study([StudyDirection.MINIMIZE])
    first, second = storage.create_new_trial(study_id), storage.create_new_trial(study_id)
    lr = FloatDistribution(1e-4, 1e-1, log=True)
    optimizers = CategoricalDistribution(["sgd", "adam"])
    def attempt(trial_id: int, name: str, value: float, distribution: BaseDistribution) -> str:
        try:
            storage.set_trial_param(trial_id, name, value, distribution)
        except Exception as e:  # the type is what is compared
            return type(e).__name__
        return "ok"

    outcomes = [
        attempt(first, "lr", 0.01, lr),
        attempt(first, "optimizer", 1, optimizers),
        attempt(first, "lr", 0.02, lr),  # written twice: the first value stays
        attempt(second, "lr", 0.5, FloatDistribution(1e-3, 1.0, log=True)),  # other bounds: fine
        attempt(second, "optimizer", 0, CategoricalDistribution(["sgd", "rmsprop"])),  # choices
        attempt(second, "lr", 1, IntDistribution(1, 4)),  # another kind for the name
        attempt(second, "depth", 2, IntDistribution(1, 4)),
    ]
    storage.set_trial_state_values(second, TrialState.COMPLETE, [1.0])
    outcomes += [
        attempt(second, "width", 3, IntDistribution(1, 8)),  # a finished trial
        attempt(second + 100, "lr", 0.01, lr),  # no such trial
    ]
    trials = RDBStorage.get_all_trials(storage, study_id)
    return outcomes, [(t.params, t.distributions) for t in trials]


def _writes_params_as_optuna(url: str) -> None:
    ours, optunas = make_storage(url), RDBStorage(url)
    assert _param_writes(ours) == _param_writes(optunas)
    outcomes, _ = _param_writes(ours)
    assert outcomes == ["ok", "ok", "ok", "ok", "ValueError", "ValueError", "ok",
                        "UpdateFinishedTrialError", "KeyError"]
    # Through Optuna's cache, which passes the distribution it knows for the name.
    study = optuna.create_study(storage=ours)
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_int("n", 1, 3), n_trials=3)
    with pytest.raises(ValueError, match="distribution kind"):
        study.ask().suggest_int("x", 0, 1)
    _same(study.get_trials(), RDBStorage.get_all_trials(ours, study._study_id))
    for storage in (ours, optunas):
        storage.engine.dispose()


def test_params_written_as_optuna_writes_them_on_sqlite(sqlite_url: str) -> None:
    _writes_params_as_optuna(sqlite_url)


@pytest.mark.postgres
def test_params_written_as_optuna_writes_them_on_postgres(postgres_url: str) -> None:
    _writes_params_as_optuna(postgres_url)
