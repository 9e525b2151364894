"""The study spec: what it accepts, and a message that says what to change for what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner.spec import Branches, Choice, Range, SpecError, dump_spec, load_spec, parse_spec


def spec_with(**overrides: object) -> dict:
    base: dict = {"name": "t", "objective": "mlp", "dataset": {"name": "iris"}}
    base.update(overrides)
    return base


def error_of(data: dict) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


def test_full_design_example_parses_into_typed_dimensions() -> None:
    spec = parse_spec(
        spec_with(
            objective="cnn",
            dataset={"name": "digits"},
            metrics=[{"name": "val_accuracy", "direction": "maximize"}],
            budget={"n_trials": 60, "timeout_s": 900, "max_epochs": 40},
            search_space={
                "lr": {"low": 1e-4, "high": 0.3, "log": True},
                "batch_size": {"choices": [16, 32, 64, 128]},
                "epochs": {"low": 5, "high": 40},
                "optimizer": {
                    "choices": {
                        "sgd": {
                            "momentum": {"low": 0.0, "high": 0.99},
                            "nesterov": {"choices": [True, False]},
                        },
                        "adamw": {},
                    }
                },
                "loss": {"choices": ["cross_entropy", "label_smoothing", "focal"]},
                "l1": 0.0,
            },
        )
    )
    space = spec.search_space
    assert isinstance(space["lr"], Range) and space["lr"].log
    assert isinstance(space["batch_size"], Choice)
    assert isinstance(space["optimizer"], Branches)
    assert set(space["optimizer"].choices) == {"sgd", "adamw"}
    assert space["l1"] == 0.0
    assert spec.task == "classification"
    assert spec.directions == ["maximize"]
    assert spec.resolved_pruner.name == "successive_halving"


@pytest.mark.parametrize(
    ("overrides", "advice"),
    [
        ({"search_space": {"lr": {"low": 0.3, "high": 1e-4}}}, "must be less than high"),
        ({"search_space": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "raise low or drop log"),
        ({"search_space": {"dropout": {"choices": []}}}, "at least 1 item"),
        ({"search_space": {"dropout": {"low": 0.1, "high": 1.5}}}, "must be in [0, 1)"),
        ({"search_space": {"depth": 100_000}}, "depth must be at most 1,000"),
        ({"budget": {"timeout_s": float("nan")}}, "budget.timeout_s: Input should be a finite"),
        ({"budget": {"n_trials": "5"}}, "budget.n_trials: Input should be a valid integer"),
        ({"search_space": {"width": {"low": 16, "high": 100_000_000}}},
         "width must be at most 16,384"),
        ({"search_space": {"batch_size": {"low": 1.5, "high": 8}}}, "integers"),
        ({"search_space": {"batch_norm": {"low": 0, "high": 1}}}, "give choices"),
        ({"search_space": {"optimizer": "lamb"}}, "known: sgd, adam, adamw, rmsprop, adagrad"),
        ({"search_space": {"optimizer": {"choices": {"adam": {"momentum": 0.9}}}}},
         "its parameters: beta1, beta2"),
        ({"search_space": {"loss": "mse"}}, "use cross_entropy, label_smoothing, focal"),
        ({"search_space": {"lr": [1, 2]}}, "a dimension is"),
        ({"objective": "resnet9000"}, "registered: cnn, mlp"),
        ({"dataset": {"name": "mnist"}}, "'digits'"),
        ({"dataset": {"name": "csv", "path": "../secret.csv", "target": "y"}}, "without '..'"),
        ({"dataset": {"name": "csv", "path": "/etc/passwd", "target": "y"}}, "relative"),
        ({"dataset": {"name": "csv", "path": "x.csv"}}, "needs target"),
        ({"sampler": {"name": "bayes"}}, "'tpe'"),
        ({"pruner": {"name": "asha"}}, "'hyperband'"),
        ({"metrics": [{"name": "val_rmse"}]}, "does not apply to a classification"),
        ({"metrics": [{"name": "val_bleu"}]}, "known metrics"),
        ({"budget": {"n_trials": 10**9}}, "less than or equal"),
        ({"budget": {"max_epochs": 5}, "search_space": {"epochs": {"low": 2, "high": 10}}},
         "raise max_epochs"),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"metrics": [{"name": "val_accuracy"}, {"name": "n_params"}], "sampler": {"name": "cmaes"},
          "pruner": {"name": "none"}}, "cannot optimise 2 metrics"),
        ({"metrics": [{"name": "val_accuracy"}, {"name": "n_params"}],
          "pruner": {"name": "median"}}, "cannot prune multi-objective"),
        ({"sampler": {"name": "grid"}, "search_space": {"lr": {"low": 0.01, "high": 0.1}}},
         "give lr a step"),
        ({"name": "../x"}, "name"),
    ],
)
def test_bad_specs_get_an_actionable_message(overrides: dict, advice: str) -> None:
    assert advice in error_of(spec_with(**overrides))


def test_huge_choice_lists_are_refused() -> None:
    assert "at most 256" in error_of(
        spec_with(search_space={"width": {"choices": list(range(10**6))}})
    )


def test_plain_values_fix_dimensions_and_names_fix_branches() -> None:
    spec = parse_spec(spec_with(search_space={"dropout": 0.25, "optimizer": "adamw"}))
    assert spec.search_space == {"dropout": 0.25, "optimizer": "adamw"}


def test_multi_objective_defaults_to_no_pruning_and_infers_directions() -> None:
    spec = parse_spec(spec_with(metrics=[{"name": "val_accuracy"}, {"name": "n_params"}]))
    assert spec.directions == ["maximize", "minimize"]
    assert spec.resolved_pruner.name == "none"


def test_yaml_and_json_round_trip(tmp_path: Path) -> None:
    spec = parse_spec(spec_with(search_space={"lr": {"low": 1e-3, "high": 1e-1, "log": True}}))
    (tmp_path / "s.yaml").write_text(dump_spec(spec))
    (tmp_path / "s.json").write_text(dump_spec(spec, "json"))
    assert load_spec(tmp_path / "s.yaml") == spec
    assert load_spec(tmp_path / "s.json") == spec
    assert json.loads((tmp_path / "s.json").read_text())["search_space"]["lr"]["log"] is True


def test_unreadable_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
