"""Epochs reach Optuna in batches, and the pruner is asked only where it can cut."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from tuner import pruning
from tuner.engine import create_study, make_pruner
from tuner.spec import StudySpec
from tuner.storage import make_storage


def _spec(pruner: dict, max_epochs: int = 27) -> StudySpec:
    return StudySpec.model_validate({
        "name": "p", "dataset": {"name": "iris"}, "budget": {"max_epochs": max_epochs},
        "metrics": [{"name": "val_accuracy"}], "pruner": pruner,
    })


@pytest.mark.parametrize(("pruner", "epochs"), [
    ({"name": "successive_halving"}, [3, 9]),
    ({"name": "successive_halving", "min_resource": 2, "reduction_factor": 2}, [2, 4, 8, 16]),
    ({"name": "hyperband"}, [1, 3, 9]),
    ({"name": "none"}, []),
    ({"name": "median", "n_warmup_steps": 25}, [25, 26]),
    ({"name": "patient", "patience": 1}, list(range(1, 27))),
])
def test_the_pruner_is_asked_only_where_it_can_cut(pruner: dict, epochs: list[int]) -> None:
    asks = pruning.may_prune(_spec(pruner))
    assert [epoch for epoch in range(1, 28) if asks(epoch)] == epochs


def _run(
    spec: StudySpec, url: str, curves: list[list[float]]
) -> tuple[optuna.Study, int]:
    """One trial per curve, reported through EpochReporter; returns how many statements
    wrote steps."""
    storage = make_storage(url)
    create_study(spec, storage)
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    writes: list[str] = []

    @event.listens_for(storage.engine, "before_cursor_execute")
    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.startswith("INSERT INTO trial_intermediate_values"):
            writes.append(statement)

    for curve in curves:
        trial = study.ask()
        reporter = pruning.EpochReporter(trial, spec, len(curve))
        try:
            for epoch, value in enumerate(curve, start=1):
                reporter.report(epoch, value)
        except optuna.TrialPruned:
            reporter.flush({"epochs_run": epoch})
            study.tell(trial, state=TrialState.PRUNED)
        else:
            reporter.flush({"epochs_run": len(curve)})
            study.tell(trial, curve[-1])
    return study, len(writes)


def test_successive_halving_cuts_at_its_rungs_from_batched_reports(sqlite_url: str) -> None:
    spec = _spec({"name": "successive_halving", "min_resource": 3}, max_epochs=9)
    good = [0.5 + 0.05 * e for e in range(9)]
    study, _ = _run(spec, sqlite_url, [good, good, good, [0.1] * 9])
    *kept, poor = study.get_trials()
    assert [t.state for t in kept] == [TrialState.COMPLETE] * 3
    # Cut at the first rung, with every epoch up to it stored.
    assert poor.state == TrialState.PRUNED
    assert poor.intermediate_values == {1: 0.1, 2: 0.1, 3: 0.1}
    assert kept[0].intermediate_values == dict(enumerate(good, start=1))


def test_the_first_trials_run_on_unless_the_spec_sets_a_bootstrap(
    sqlite_url: str, tmp_path: Path
) -> None:
    good = [0.5 + 0.05 * e for e in range(9)]
    first = [0.1] * 9  # poor, yet the first at every rung: promoted
    default = _spec({"name": "successive_halving", "min_resource": 3}, 9)
    study, _ = _run(default, sqlite_url, [first, good, good])
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    # With Optuna's bootstrap a rung promotes no one until it holds two trials.
    spec = _spec({"name": "successive_halving", "min_resource": 3, "bootstrap_count": 2}, 9)
    sampled, _ = _run(spec, f"sqlite:///{tmp_path / 'bootstrap.db'}", [good, good, good])
    assert [t.state for t in sampled.get_trials()] == [
        TrialState.PRUNED, TrialState.PRUNED, TrialState.COMPLETE]


def test_no_trial_is_cut_at_its_last_epoch(sqlite_url: str) -> None:
    """Its epochs are spent: the result counts, and a short trial's last rung is kept
    for the trials compared with it later."""
    spec = _spec({"name": "successive_halving", "min_resource": 3}, max_epochs=9)
    good = [0.5 + 0.05 * e for e in range(9)]
    late_drop = [0.9] * 8 + [0.1]  # best at rung 3, worst at its last epoch, 9
    short_poor = [0.1] * 3  # a 3-epoch trial, worst at rung 3, its last epoch
    study, _ = _run(spec, sqlite_url, [good, good, good, late_drop, short_poor])
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 5
    assert study.trials[-1].value == 0.1
    assert "completed_rung_0" in study.trials[-1].system_attrs


def test_epochs_are_written_at_rungs_and_at_the_end_only(sqlite_url: str) -> None:
    spec = _spec({"name": "successive_halving", "min_resource": 3}, max_epochs=27)
    curve = [0.01 * e for e in range(27)]
    study, writes = _run(spec, sqlite_url, [curve])
    assert study.trials[0].intermediate_values == dict(enumerate(curve, start=1))
    assert writes == 3  # at the rungs 3 and 9 and at the end, not one per epoch


def test_a_slow_trial_writes_every_epoch(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pruning, "FLUSH_S", 0.0)  # every epoch is older than FLUSH_S
    spec = _spec({"name": "none"}, max_epochs=27)
    curve = [0.01 * e for e in range(27)]
    study, writes = _run(spec, sqlite_url, [curve])
    assert study.trials[0].intermediate_values == dict(enumerate(curve, start=1))
    assert writes == 27
