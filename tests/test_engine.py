"""Engine: storage, samplers, pruners, studies; real training on tiny data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from sqlalchemy import text

from tuner import engine, models
from tuner.errors import UsageError
from tuner.objective import Cancelled, check_smallest_model, evaluate, list_objectives
from tuner.spec import SpecError, StudySpec
from tuner.storage import make_storage

Spec = Callable[..., StudySpec]
SetEnv = Callable[[str, str], None]


def states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.trials]


# --- storage -------------------------------------------------------------------------


def test_sqlite_storage_runs_wal_normal_sync_and_a_long_busy_timeout(sqlite_url: str) -> None:
    storage = make_storage(sqlite_url)
    assert Path(sqlite_url.removeprefix("sqlite:///")).parent.is_dir()
    with storage.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 30_000


@pytest.mark.postgres
def test_postgres_storage_has_a_bounded_pool_and_runs_a_study(
    postgres_url: str, make_spec: Spec
) -> None:
    storage = make_storage(postgres_url.replace("postgresql+psycopg", "postgresql"))
    assert storage.engine.dialect.driver == "psycopg"
    assert storage.engine.pool.size() == engine.get_settings().db_pool_size
    study = engine.run_study(make_spec(), storage_url=postgres_url, n_trials=2, device="cpu")
    assert states(study) == [TrialState.COMPLETE] * 2


def test_what_the_engine_writes_is_read_by_optuna_and_its_cli(
    sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(name="readable")
    engine.run_study(spec, storage_url=sqlite_url, n_trials=2, device="cpu")
    (summary,) = optuna.get_all_study_summaries(sqlite_url)
    assert summary.study_name == "readable" and summary.n_trials == 2
    study = optuna.load_study(study_name="readable", storage=sqlite_url)
    assert study.metric_names == ["val_accuracy"]
    assert engine.load_spec_of(study) == spec
    trial = study.best_trial
    assert {"hp", "metrics", "curves", "epochs_run", "dataset_fingerprint"} <= set(trial.user_attrs)
    assert len(trial.user_attrs["curves"]["val_loss"]) == trial.user_attrs["epochs_run"] == 3
    out = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "studies", "--storage", sqlite_url],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    assert "readable" in out


# --- samplers and pruners ----------------------------------------------------------


@pytest.mark.parametrize("name", ["tpe", "random", "grid", "gp", "cmaes", "nsga2", "qmc"])
def test_every_sampler_builds_and_runs_trials(
    name: str, sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(
        sampler={"name": name, "seed": 1, "n_startup_trials": 1},
        # Grid needs discrete dimensions; the others get a continuous one too.
        search_space={"lr": {"choices": [0.01, 0.05]} if name == "grid" else {"low": 0.01,
                      "high": 0.1}},
    )
    study = engine.run_study(spec, storage_url=sqlite_url, n_trials=3, device="cpu")
    assert states(study) == [TrialState.COMPLETE] * 3
    assert type(study.sampler).__name__.lower().startswith(
        {"tpe": "tpe", "random": "random", "grid": "grid", "gp": "gp", "cmaes": "cmaes",
         "nsga2": "nsgaii", "qmc": "qmc"}[name]
    )


@pytest.mark.parametrize(
    ("pruner", "kind"),
    [
        ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"name": "median", "n_startup_trials": 1}, optuna.pruners.MedianPruner),
        ({"name": "percentile", "percentile": 25}, optuna.pruners.PercentilePruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "patient", "patience": 1}, optuna.pruners.PatientPruner),
        ({"name": "threshold", "lower": 0.0}, optuna.pruners.ThresholdPruner),
        ({"name": "none"}, optuna.pruners.NopPruner),
    ],
)
def test_every_pruner_builds_and_runs_trials(
    pruner: dict, kind: type, sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(pruner=pruner)
    assert isinstance(engine.make_pruner(spec), kind)
    study = engine.run_study(spec, storage_url=sqlite_url, n_trials=3, device="cpu")
    assert len(study.trials) == 3
    assert set(states(study)) <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_hyperband_runs_up_to_max_epochs() -> None:
    spec = StudySpec.model_validate(
        {"name": "h", "dataset": {"name": "iris"}, "budget": {"max_epochs": 27},
         "pruner": {"name": "hyperband", "min_resource": 3, "reduction_factor": 3}}
    )
    pruner = engine.make_pruner(spec)
    assert pruner._max_resource == 27 and pruner._min_resource == 3


def test_the_default_strategy_is_tpe_with_a_constant_liar_and_asha() -> None:
    spec = StudySpec.model_validate({"name": "d", "dataset": {"name": "iris"}})
    sampler = engine.make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar and sampler._n_startup_trials == engine.TPE_STARTUP_TRIALS
    # Not Hyperband, whose brackets hide each other's trials from TPE.
    pruner = engine.make_pruner(spec)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    # Default max_epochs 20: the first cut after 2 epochs, then 6 and 18.
    assert pruner._min_resource == 2 and pruner._reduction_factor == 3


@pytest.mark.parametrize(("max_epochs", "pruner", "first_cut"), [
    (27, {}, 3),
    (5, {}, 1),
    (27, {"reduction_factor": 2}, 6),
    (27, {"min_resource": 1}, 1),
])
def test_successive_halving_first_cuts_by_max_epochs_unless_told(
    max_epochs: int, pruner: dict, first_cut: int
) -> None:
    spec = StudySpec.model_validate({
        "name": "s", "dataset": {"name": "iris"}, "budget": {"max_epochs": max_epochs},
        "pruner": {"name": "successive_halving", **pruner},
    })
    assert engine.make_pruner(spec)._min_resource == first_cut


def test_a_threshold_nobody_reaches_prunes_every_trial_after_one_epoch(
    sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(pruner={"name": "threshold", "lower": 1.01})
    study = engine.run_study(spec, storage_url=sqlite_url, n_trials=3, device="cpu")
    assert states(study) == [TrialState.PRUNED] * 3
    for trial in study.trials:
        assert trial.user_attrs["epochs_run"] == 1
        assert list(trial.intermediate_values) == [1]


def test_the_median_pruner_stops_poor_trials(sqlite_url: str, make_spec: Spec) -> None:
    spec = make_spec(
        budget={"n_trials": 10, "max_epochs": 5},
        pruner={"name": "median", "n_startup_trials": 3},
        search_space={"lr": {"low": 1e-5, "high": 0.3, "log": True}, "optimizer": "sgd"},
    )
    study = engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    assert TrialState.PRUNED in states(study)
    assert TrialState.COMPLETE in states(study)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(t.user_attrs["epochs_run"] < 5 for t in pruned)


# --- failures ------------------------------------------------------------------------


def test_a_diverging_lr_fails_its_trial_with_a_reason_and_the_study_goes_on(
    sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(
        dataset={"name": "diabetes"},
        budget={"n_trials": 6, "max_epochs": 3},
        search_space={"lr": {"choices": [0.01, 1.0e6]}, "optimizer": "sgd"},
    )
    study = engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    assert len(study.trials) == 6
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert failed and done
    for trial in failed:
        assert trial.params["lr"] == 1.0e6
        assert "lower lr" in trial.user_attrs["fail_reason"]
    assert all(t.params["lr"] == 0.01 for t in done)


def test_tuner_run_fails_a_model_over_the_parameter_limit_and_goes_on(
    sqlite_url: str, make_spec: Spec, set_env: SetEnv
) -> None:
    set_env("TUNER_MAX_MODEL_PARAMS", "2000")
    spec = make_spec(search_space={"width": {"choices": [8, 256]}, "depth": 2})
    study = engine.run_study(spec, storage_url=sqlite_url, device="cpu", n_trials=6)
    states = {t.params["width"]: (t.state, t.user_attrs.get("fail_reason", "")) for t in
              study.trials}
    assert states[8] == (TrialState.COMPLETE, "")
    assert states[256][0] == TrialState.FAIL
    assert "TUNER_MAX_MODEL_PARAMS" in states[256][1]


def test_tuner_run_refuses_a_space_whose_every_model_is_over_the_limit(
    sqlite_url: str, make_spec: Spec, set_env: SetEnv
) -> None:
    set_env("TUNER_MAX_MODEL_PARAMS", "2000")
    spec = make_spec(search_space={"width": 256, "depth": 2})
    with pytest.raises(SpecError, match=r"its smallest model \(depth 2, width 256\) has "
                       r"[\d,]+ parameters, over the limit of 2,000"):
        engine.run_study(spec, storage_url=sqlite_url, device="cpu", n_trials=2)
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # nothing written


def test_the_smallest_model_check_counts_a_lower_bound_and_leaves_own_parameters_alone(
    make_spec: Spec,
) -> None:
    """Without the data (the API at submit) the count is of a one-feature, one-output
    stand-in when the task is unknown; a plugin's own searched parameters have no known
    low end, so such a space is left to the per-trial check."""
    csv = {"name": "csv", "path": "rows.csv", "target": "y"}  # task unknown until loaded
    spec = make_spec(dataset=csv, search_space={"width": {"low": 2048, "high": 4096}, "depth": 3})
    least = models.count_parameters(
        models.build_mlp(1, 1, depth=3, width=2048, dropout=0.0, batch_norm=False)
    )
    with pytest.raises(SpecError, match=f"has at least {least:,} parameters"):
        check_smallest_model(spec, least - 1)
    check_smallest_model(spec, least)  # at the limit is allowed

    blocks_searched = make_spec(objective="resmlp", search_space={"width": 4096})
    check_smallest_model(blocks_searched, 1_000)  # its low end is unknown: no refusal
    blocks_fixed = make_spec(objective="resmlp", search_space={"width": 4096, "blocks": 1})
    with pytest.raises(SpecError, match="width 4096\\) has at least"):
        check_smallest_model(blocks_fixed, 1_000)


def test_a_trial_interrupted_by_ctrl_c_does_not_use_up_a_resumed_budget(
    sqlite_url: str, make_spec: Spec
) -> None:
    spec = make_spec(budget={"n_trials": 2, "max_epochs": 3})
    study = engine.create_study(spec, make_storage(sqlite_url))

    def ctrl_c() -> bool:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.optimize(lambda trial: evaluate(spec, trial, should_stop=ctrl_c), n_trials=1)
    (interrupted,) = study.trials
    assert interrupted.state == TrialState.FAIL
    assert interrupted.user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    study = engine.run_study(spec, storage_url=sqlite_url, device="cpu")  # tuner run, again
    assert len(study.trials) == 3  # two that count, after the interrupted one
    assert engine.counted_trials(study) == 2


def test_cancellation_stops_a_trial_between_epochs(sqlite_url: str, make_spec: Spec) -> None:
    spec = make_spec()
    study = engine.create_study(spec, make_storage(sqlite_url))
    study.optimize(
        lambda trial: evaluate(spec, trial, should_stop=lambda: True),
        n_trials=1, catch=(Cancelled,),
    )
    (trial,) = study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["epochs_run"] == 1


def test_unknown_dimensions_are_refused_before_any_trial(sqlite_url: str, make_spec: Spec) -> None:
    spec = make_spec(search_space={"channels": 8})
    with pytest.raises(SpecError, match="objective 'mlp' has no parameter 'channels'"):
        engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # nothing written


def test_grid_over_continuous_default_dimensions_says_what_to_fix() -> None:
    spec = StudySpec.model_validate(
        {"name": "g", "dataset": {"name": "iris"}, "sampler": {"name": "grid"},
         "search_space": {"lr": {"choices": [0.01, 0.1]}}}
    )
    with pytest.raises(SpecError, match=r"weight_decay, dropout.*objective.s defaults"):
        engine.make_sampler(spec)


# --- studies ---------------------------------------------------------------------------


def test_multi_objective_studies_give_a_pareto_front(sqlite_url: str, make_spec: Spec) -> None:
    spec = make_spec(
        budget={"n_trials": 6, "max_epochs": 3},
        metrics=[{"name": "val_accuracy"}, {"name": "n_params"}],
        sampler={"name": "nsga2", "seed": 0},
        search_space={"width": {"choices": [2, 8, 32]}, "depth": {"low": 1, "high": 2}},
    )
    study = engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "n_params"]
    front = study.best_trials
    assert front and all(len(t.values) == 2 for t in front)
    for a in front:  # no trial on the front is beaten on both metrics by another
        assert not any(
            b.values[0] >= a.values[0] and b.values[1] <= a.values[1] and b.values != a.values
            for b in study.trials if b.state == TrialState.COMPLETE
        )


def test_running_again_resumes_up_to_the_budget(sqlite_url: str, make_spec: Spec) -> None:
    spec = make_spec(budget={"n_trials": 2, "max_epochs": 2})
    engine.run_study(spec, storage_url=sqlite_url, device="cpu")
    assert len(engine.run_study(spec, storage_url=sqlite_url, device="cpu").trials) == 2
    study = engine.run_study(spec, storage_url=sqlite_url, n_trials=3, device="cpu")
    assert len(study.trials) == 3


def test_a_study_resumes_with_a_bigger_budget_but_not_with_another_recipe(
    sqlite_url: str, make_spec: Spec
) -> None:
    """Trials must still retrain to their results after a resume (export reads the
    study's spec): more trials or another sampler are fine, another training is not."""
    storage = make_storage(sqlite_url)
    engine.create_study(make_spec(name="s"), storage)
    engine.create_study(
        make_spec(name="s", budget={"n_trials": 50, "max_epochs": 3},
                  sampler={"name": "random"}),
        storage,
    )
    for same in ({"metrics": [{"name": "val_accuracy", "direction": "maximize"}]},
                 {"metrics": [{"name": "val_accuracy"}]}):  # as scored: no change
        engine.create_study(make_spec(name="s", **same), storage)
    for change, named in [
        ({"metrics": [{"name": "val_loss"}]}, "metrics"),
        ({"budget": {"n_trials": 50, "max_epochs": 4}}, "budget.max_epochs"),
        ({"search_space": {"width": 64}}, "search_space"),
        ({"seed": 7, "dataset": {"name": "wine"}}, "dataset, seed"),
    ]:
        with pytest.raises(UsageError, match=f"'s' was run with another {named}, so"):
            engine.create_study(make_spec(name="s", **change), storage)


def test_a_spec_with_another_metric_count_cannot_reuse_a_study(
    sqlite_url: str, make_spec: Spec
) -> None:
    storage = make_storage(sqlite_url)
    engine.create_study(make_spec(), storage)
    two = make_spec(metrics=[{"name": "val_accuracy"}, {"name": "n_params"}])
    with pytest.raises(UsageError, match="rename the spec"):
        engine.create_study(two, storage)


def test_load_study_names_the_studies_there_are(sqlite_url: str, make_spec: Spec) -> None:
    engine.create_study(make_spec(name="present"), make_storage(sqlite_url))
    with pytest.raises(UsageError, match=r"no study named .absent.*present"):
        engine.load_study(sqlite_url, "absent")


# --- machine ---------------------------------------------------------------------------


def test_pick_device_prefers_cuda_and_refuses_what_is_not_there() -> None:
    assert engine.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert engine.pick_device("auto").type == expected
    with pytest.raises(UsageError, match="unknown device"):
        engine.pick_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no GPU"):
            engine.pick_device("cuda:0")
    else:
        with pytest.raises(UsageError, match="does not exist"):
            engine.pick_device(f"cuda:{torch.cuda.device_count()}")


def test_configure_torch_shares_the_cores_between_parallel_trials() -> None:
    try:
        cores = engine._cores()
        assert engine.configure_torch(1) == cores == torch.get_num_threads()
        assert engine.configure_torch(cores * 2) == 1
        assert engine.configure_torch(4, threads=3) == 3
    finally:
        torch.set_num_threads(1)


def test_objectives_are_listed_with_their_default_spaces() -> None:
    listed = {o["name"]: o for o in list_objectives()}
    assert set(listed) >= {"mlp", "cnn"}
    space = listed["cnn"]["default_space"]["classification"]
    assert space["depth"] == 2
    assert space["lr"] == {"low": 1e-4, "high": 0.3, "log": True, "step": None}
    assert "loss" in space and "mse" not in space["loss"]["choices"]
