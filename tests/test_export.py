"""Export: the best trial becomes a fixed, runnable spec that retrains to the same metric."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from safetensors import safe_open

from tuner import engine, export
from tuner.errors import UsageError
from tuner.spec import Branches, StudySpec, dump_spec, parse_spec
from tuner.storage import make_storage
from tuner.weights import save_model

Spec = Callable[..., StudySpec]


@pytest.fixture
def study_url(sqlite_url: str, make_spec: Spec) -> str:
    """A finished study 'tiny' whose trials search lr, width and the sgd/adamw branches."""
    spec = make_spec(
        budget={"n_trials": 4, "max_epochs": 4},
        sampler={"name": "random", "seed": 2},
        search_space={"optimizer": {"choices": {
            "sgd": {"momentum": {"low": 0.5, "high": 0.9}}, "adamw": {},
        }}},
    )
    engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    return sqlite_url


def test_export_fixes_every_dimension_and_records_provenance(study_url: str) -> None:
    study = optuna.load_study(study_name="tiny", storage=study_url)
    best = study.best_trial
    spec = export.export_best(study_url, "tiny")
    assert spec.budget.n_trials == 1 and spec.resolved_pruner.name == "none"
    assert spec.sampler.name == "random"
    assert [m.name for m in spec.metrics] == ["val_accuracy"]
    assert spec.search_space["lr"] == best.params["lr"]
    assert spec.search_space["width"] == best.params["width"]
    assert spec.search_space["epochs"] == 4
    optimizer = spec.search_space["optimizer"]
    if best.params["optimizer"] == "sgd":
        assert optimizer == Branches(
            choices={"sgd": {"momentum": best.params["optimizer.sgd.momentum"]}}
        )
    else:
        assert optimizer == "adamw"
    p = spec.provenance
    assert p is not None
    assert (p.study, p.trial_number, p.values) == ("tiny", best.number, best.values)
    assert p.metrics["val_accuracy"] == best.values[0]
    assert p.dataset_fingerprint == best.user_attrs["dataset_fingerprint"]
    assert {"tuner", "torch", "optuna", "python"} <= set(p.versions)
    # What is written reads back as the same spec, in either format.
    for fmt in ("yaml", "json"):
        assert parse_spec(yaml.safe_load(dump_spec(spec, fmt))) == spec  # type: ignore[arg-type]


def test_retrain_reproduces_the_trial_metric_exactly(study_url: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="tiny", storage=study_url)
    for trial in study.get_trials(states=(TrialState.COMPLETE,))[:2]:
        spec = export.export_best(study_url, "tiny", trial_number=trial.number)
        result = export.retrain(spec, device="cpu")
        assert result.metrics["val_accuracy"] == trial.values[0]
        assert result.metrics["val_loss"] == trial.user_attrs["metrics"]["val_loss"]
    path = save_model(result, tmp_path / "m.safetensors", export.fixed_hp(spec))
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(result.model.state_dict())
        assert '"lr"' in f.metadata()["hp"]


def test_retrain_runs_on_the_trials_torch_threads(study_url: str) -> None:
    """A server worker trains on its share of the cores; sums split over another number of
    threads round differently in the last bits, so the retrain takes the trial's count."""
    spec = export.export_best(study_url, "tiny")
    best = optuna.load_study(study_name="tiny", storage=study_url).best_trial
    assert spec.provenance is not None
    threads = spec.provenance.torch_threads
    assert threads is not None and threads == best.user_attrs["torch_threads"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        result = export.retrain(spec, device="cpu")
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert result.metrics["val_accuracy"] == best.values[0]


def test_retrain_refuses_a_spec_that_still_searches(make_spec: Spec) -> None:
    with pytest.raises(ValueError, match=r"still searches lr.*export a trial first"):
        export.retrain(make_spec(), device="cpu")


def test_export_of_a_pareto_study_takes_the_best_on_the_first_metric(
    sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(
        budget={"n_trials": 4, "max_epochs": 2},
        metrics=[{"name": "val_accuracy"}, {"name": "n_params"}],
        search_space={"width": {"choices": [2, 16]}},
    )
    study = engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    exported = export.export_best(sqlite_url, "tiny")
    top = max(t.values[0] for t in study.best_trials)
    assert exported.provenance is not None and exported.provenance.values[0] == top


def test_export_errors_say_what_to_do(study_url: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no trial 99"):
        export.export_best(study_url, "tiny", trial_number=99)
    with pytest.raises(UsageError, match="no study named 'nope'"):
        export.export_best(study_url, "nope")
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="foreign", storage=make_storage(empty))
    with pytest.raises(UsageError, match="not created by tuner"):
        export.export_best(empty, "foreign")

