"""The resmlp plugin on its own: its space, its models, and one real tuning trial."""

from __future__ import annotations

from importlib.metadata import entry_points

import optuna
import pytest
import torch
from tuner_example_objective import RESMLP, ResidualBlock

from tuner.data import load_dataset
from tuner.objective import evaluate, get_objective
from tuner.space import resolve_space
from tuner.spec import DatasetSpec, Range, parse_spec

torch.set_num_threads(1)


def test_registered_under_the_tuner_objectives_group() -> None:
    (point,) = entry_points(group="tuner.objectives", name="resmlp")
    assert point.load() is RESMLP
    assert get_objective("resmlp") is RESMLP


def test_default_space_searches_blocks_instead_of_depth() -> None:
    space = RESMLP.default_space("classification")
    assert space["blocks"] == Range(low=1, high=4)
    assert "depth" not in space
    assert "loss" in space and "lr" in space  # the common dimensions stay


@pytest.mark.parametrize(("name", "outputs"), [("iris", 3), ("diabetes", 1)])
def test_build_maps_features_to_the_task_outputs(name: str, outputs: int) -> None:
    data = load_dataset(DatasetSpec(name=name), None)  # type: ignore[arg-type]
    hp = {"blocks": 3, "width": 16, "dropout": 0.1, "batch_norm": True}
    model = RESMLP.build(hp, data)
    assert sum(isinstance(m, ResidualBlock) for m in model.modules()) == 3
    assert model(data.x_train[:5]).shape == (5, outputs)


def test_a_block_is_identity_plus_a_branch() -> None:
    block = ResidualBlock(4, dropout=0.0, batch_norm=False)
    torch.nn.init.zeros_(block.linear.weight)
    torch.nn.init.zeros_(block.linear.bias)
    x = torch.randn(2, 4)
    assert torch.equal(block(x), x)


def test_a_spec_searches_blocks_and_one_trial_trains() -> None:
    spec = parse_spec({
        "name": "resmlp-iris", "objective": "resmlp", "dataset": {"name": "iris"},
        "budget": {"n_trials": 1, "max_epochs": 3},
        "search_space": {"blocks": {"low": 1, "high": 2}, "width": 16, "batch_size": 32},
    })
    space = resolve_space(spec, RESMLP, "classification")
    assert space["blocks"] == Range(low=1, high=2)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: evaluate(spec, trial), n_trials=1)
    trial = study.best_trial
    assert trial.params["blocks"] in (1, 2)
    assert 0.0 <= trial.value <= 1.0
    assert trial.user_attrs["epochs_run"] >= 1
