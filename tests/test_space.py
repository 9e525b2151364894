"""Search space -> Optuna suggestions: types, conditional branches, fixing, grids."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from pydantic import TypeAdapter

from tuner import space as spaces
from tuner.objective import MLP, Objective
from tuner.spec import Dimension, SpecError, parse_spec

SPACE = TypeAdapter(dict[str, Dimension])


def dims(data: dict[str, Any]) -> dict[str, Any]:
    """Dimensions exactly as a spec would hold them."""
    return SPACE.validate_python(data)


def ask(space: dict[str, Any], n: int, seed: int = 0) -> list[tuple[dict[str, Any], Any]]:
    """Suggest n times from a real study; return (hp, trial) pairs."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        hp = spaces.suggest(trial, space)
        study.tell(trial, 0.0)
        out.append((hp, study.trials[-1]))
    return out


NESTED_SPACE = {
    "lr": {"low": 1e-4, "high": 0.1, "log": True},
    "batch_size": {"low": 16, "high": 128, "step": 16},
    "dropout": 0.25,
    "l1": 0.0,
    "optimizer": {"choices": {
        "sgd": {"momentum": {"low": 0.0, "high": 0.99}, "nesterov": {"choices": [True, False]}},
        "adamw": {},
    }},
    "loss": {"choices": ["cross_entropy", "label_smoothing"]},
    "schedule": "cosine",
}


def test_conditional_branches_suggest_only_the_chosen_branch_params() -> None:
    results = ask(dims(NESTED_SPACE), 30)
    branches = {hp["optimizer"]["name"] for hp, _ in results}
    assert branches == {"sgd", "adamw"}
    for hp, trial in results:
        if hp["optimizer"]["name"] == "sgd":
            assert {"optimizer.sgd.momentum", "optimizer.sgd.nesterov"} <= set(trial.params)
            assert hp["optimizer"]["momentum"] == trial.params["optimizer.sgd.momentum"]
            assert 0.0 <= hp["optimizer"]["momentum"] <= 0.99
        else:
            assert not any(name.startswith("optimizer.sgd") for name in trial.params)
            assert set(hp["optimizer"]) == {"name", *spaces.BRANCH_DEFAULTS["optimizer"]["adamw"]}


def test_plain_values_are_fixed_not_suggested_and_types_follow_the_dimension() -> None:
    for hp, trial in ask(dims(NESTED_SPACE), 10):
        assert set(trial.params) >= {"lr", "batch_size", "optimizer", "loss"}
        assert not {"dropout", "l1", "schedule"} & set(trial.params)
        assert hp["dropout"] == 0.25 and hp["l1"] == 0.0
        assert hp["schedule"] == {"name": "cosine", **spaces.BRANCH_DEFAULTS["schedule"]["cosine"]}
        assert isinstance(hp["batch_size"], int) and hp["batch_size"] % 16 == 0
        assert isinstance(trial.distributions["batch_size"], IntDistribution)
        assert isinstance(trial.distributions["lr"], FloatDistribution)
        assert trial.distributions["lr"].log
        # A choice of names is a nested dimension: its branch params take the defaults.
        loss = hp["loss"]
        assert loss == {"name": loss["name"], **spaces.BRANCH_DEFAULTS["loss"][loss["name"]]}


def test_single_choice_and_single_branch_are_fine_and_not_suggested() -> None:
    space = dims({
        "batch_size": {"choices": [32]},
        "optimizer": {"choices": {"sgd": {"momentum": {"low": 0.1, "high": 0.9}}}},
    })
    (hp, trial), = ask(space, 1)
    assert hp["batch_size"] == 32
    assert hp["optimizer"]["name"] == "sgd"
    assert set(trial.params) == {"optimizer.sgd.momentum"}


def test_fix_round_trips_every_trial_to_exactly_its_hp() -> None:
    space = spaces.resolve_space(
        parse_spec({"name": "s", "dataset": {"name": "iris"}, "search_space": NESTED_SPACE}), MLP
    )
    for hp, trial in ask(space, 15, seed=3):
        fixed = spaces.fix(space, trial.params)
        assert spaces.distributions(fixed) == {}
        assert spaces.suggest(optuna.trial.FixedTrial({}), fixed) == hp
        # The fixed space is a valid spec's search space (what export writes).
        dumped = SPACE.dump_python(fixed, mode="json")
        parse_spec({"name": "s", "dataset": {"name": "iris"}, "search_space": dumped})


def test_fix_refuses_params_from_another_space() -> None:
    with pytest.raises(SpecError, match="no value for lr"):
        spaces.fix(dims({"lr": {"low": 0.01, "high": 0.1}}), {})


def test_resolve_space_lays_the_spec_over_the_objective_defaults() -> None:
    spec = parse_spec({
        "name": "s", "dataset": {"name": "diabetes"}, "budget": {"max_epochs": 7},
        "search_space": {"optimizer": "adam", "dropout": 0.1},
    })
    space = spaces.resolve_space(spec, MLP)
    assert space["optimizer"] == "adam"  # replaced whole, not merged with sgd/adamw
    assert space["dropout"] == 0.1
    assert space["epochs"] == 7
    assert space["lr"] == MLP.default_space("regression")["lr"]
    assert set(space["loss"].choices) <= {"mse", "l1", "huber", "smooth_l1"}


class Tiny(Objective):
    """A plugin-style objective with parameters of its own."""

    name = "tiny"
    params = {"kernel": int, "alpha": float}  # noqa: RUF012


def test_objective_params_are_checked_and_int_params_suggest_ints() -> None:
    spec = parse_spec({
        "name": "s", "dataset": {"name": "iris"},
        "search_space": {
            "kernel": {"low": 1, "high": 7, "step": 2}, "alpha": {"low": 0, "high": 1},
        },
    })
    space = spaces.resolve_space(spec, Tiny())
    assert isinstance(spaces.distributions(space)["kernel"], IntDistribution)
    assert isinstance(spaces.distributions(space)["alpha"], FloatDistribution)
    for hp, _ in ask(space, 5):
        assert hp["kernel"] in (1, 3, 5, 7) and isinstance(hp["kernel"], int)
    bad = parse_spec({"name": "s", "dataset": {"name": "iris"}, "search_space": {"kernal": 3}})
    with pytest.raises(SpecError, match=r"no parameter 'kernal'.*\(kernel, alpha\)"):
        spaces.resolve_space(bad, Tiny())


def test_distributions_name_branch_params_like_optuna_sees_them() -> None:
    found = spaces.distributions(dims(NESTED_SPACE))
    assert set(found) == {
        "lr", "batch_size", "optimizer", "optimizer.sgd.momentum", "optimizer.sgd.nesterov", "loss",
    }


def test_grid_expands_discrete_ranges_and_refuses_continuous_or_huge_ones() -> None:
    grid = spaces.grid(dims({
        "batch_size": {"low": 32, "high": 128, "step": 32},
        "dropout": {"low": 0.0, "high": 0.5, "step": 0.25},
        "optimizer": {"choices": {"sgd": {"nesterov": {"choices": [True, False]}}, "adam": {}}},
    }))
    assert grid == {
        "batch_size": [32, 64, 96, 128],
        "dropout": [0.0, 0.25, 0.5],
        "optimizer": ["sgd", "adam"],
        "optimizer.sgd.nesterov": [True, False],
    }
    with pytest.raises(SpecError, match="but lr are continuous ranges"):
        spaces.grid(dims({"lr": {"low": 1e-3, "high": 1e-1, "log": True}}))
    with pytest.raises(SpecError, match="points"):
        spaces.grid(dims({"width": {"low": 1, "high": 1000}, "depth": {"low": 1, "high": 100}}))
