"""in_top_k counts in SQL what ranked_trials would order in Python."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from tuner.engine import ranked_trials
from tuner.storage import make_storage
from tuner.weights import in_top_k

VALUES = [0.5, 0.2, 0.9, 0.2, 0.7, 0.4]


def _study(url: str, direction: str) -> optuna.Study:
    study = optuna.create_study(storage=make_storage(url), direction=direction)
    study.ask()  # trial 0 still runs: it ranks ahead of later trials with its value
    for value in VALUES:
        study.add_trial(optuna.trial.create_trial(value=value, state=TrialState.COMPLETE))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED))
    return study


def _agrees(url: str, direction: str) -> None:
    study = _study(url, direction)
    engine = study._storage._backend.engine  # type: ignore[attr-defined]
    for value in (0.1, 0.2, 0.3, 0.45, 0.5, 0.8, 1.0):
        for number in (0, 99):  # before and after the trials with the same value
            for k in (1, 2, 3, 6, 7):
                as_if = optuna.trial.create_trial(value=value, state=TrialState.COMPLETE)
                as_if.number = number
                ranked = sorted(
                    [*ranked_trials(study), as_if],
                    key=lambda t: ((1 if direction == "minimize" else -1) * t.value, t.number),
                )
                expected = number in {t.number for t in ranked[:k]}
                assert in_top_k(engine, study, value, number, k) == expected, (value, number, k)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_in_top_k_agrees_with_the_ranking_on_sqlite(sqlite_url: str, direction: str) -> None:
    _agrees(sqlite_url, direction)


@pytest.mark.postgres
def test_in_top_k_agrees_with_the_ranking_on_postgres(postgres_url: str) -> None:
    _agrees(postgres_url, "maximize")
