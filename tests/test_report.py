"""Reports: the diagnosis reads curves correctly and the HTML page and PNG hold up.

Studies live in real SQLite storages; trials carry the user attributes the objective
writes (metrics, curves, hp, epochs_run, fail_reason), with curves built to show one
problem each.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from tuner import report
from tuner.engine import ranked_trials
from tuner.report import Finding, build_report, diagnose, history_png

HP = {
    "lr": 0.01,
    "batch_size": 32,
    "epochs": 8,
    "patience": 3,
    "weight_decay": 1e-5,
    "dropout": 0.1,
    "l1": 0.0,
    "depth": 2,
    "width": 64,
    "optimizer": {"name": "sgd", "momentum": 0.9},
}
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-6, 1.0, log=True),
    "batch_size": CategoricalDistribution([16, 32, 64]),
    "dropout": FloatDistribution(0.0, 0.5),
    "depth": IntDistribution(1, 4),
}

# One curve per problem, train_loss then val_loss, one value per epoch.
HEALTHY = (
    [1.0, 0.6, 0.42, 0.33, 0.28, 0.25, 0.23, 0.22],
    [1.0, 0.62, 0.45, 0.37, 0.33, 0.31, 0.3, 0.3],
)
OVERFIT = ([1.0, 0.6, 0.4, 0.3, 0.2, 0.12, 0.08, 0.05], [1.0, 0.7, 0.55, 0.5, 0.55, 0.62, 0.7, 0.8])
GAP = ([1.0, 0.3, 0.1, 0.05, 0.03, 0.02, 0.02, 0.02], [1.0, 0.6, 0.5, 0.48, 0.47, 0.47, 0.47, 0.47])
UNDERFIT = (
    [2.3, 1.95, 1.86, 1.85, 1.84, 1.84, 1.84, 1.84],
    [2.3, 2.0, 1.93, 1.91, 1.9, 1.9, 1.9, 1.9],
)
SLOW = ([2.3, 2.1, 1.95, 1.8, 1.68, 1.57, 1.47, 1.38], [2.3, 2.1, 1.96, 1.82, 1.7, 1.6, 1.5, 1.42])
FLAT = (
    [2.30, 2.29, 2.29, 2.28, 2.28, 2.28, 2.27, 2.27],
    [2.3, 2.3, 2.29, 2.29, 2.29, 2.28, 2.28, 2.28],
)
EXPLODED = ([1.0, 0.6, 0.5, 1.5, 3.0], [1.0, 0.65, 0.55, 1.6, 3.2])
# Stopped at epoch 11 of 30, best at epoch 8, long after the curve levelled off.
LEVELLED = (
    [1.0, 0.55, 0.42, 0.37, 0.35, 0.34, 0.33, 0.32, 0.315, 0.31, 0.305],
    [1.0, 0.6, 0.45, 0.40, 0.38, 0.37, 0.365, 0.36, 0.362, 0.365, 0.363],
)
# Stopped at epoch 8 of 20 right after a steep descent and one noisy epoch.
STEEP = (
    [1.0, 0.8, 0.66, 0.56, 0.5, 0.47, 0.45, 0.43],
    [1.0, 0.8, 0.65, 0.55, 0.5, 0.56, 0.52, 0.53],
)


def curves(pair: tuple[list[float], list[float]]) -> dict[str, list[float]]:
    return {"train_loss": pair[0], "val_loss": pair[1]}


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


# --- diagnosis ---------------------------------------------------------------------------


def test_healthy_curves_have_no_findings() -> None:
    assert diagnose(curves(HEALTHY), HP, epochs_run=8) == []


def test_overfitting_from_rising_validation_loss_advises_regularization_and_fewer_epochs() -> None:
    [found] = diagnose(curves(OVERFIT), HP, epochs_run=8)
    assert found.kind == "overfitting"
    assert "epoch 4" in found.message
    for name in ("weight_decay", "dropout", "l1", "epochs", "patience"):
        assert name in found.advice
    assert "(now 1e-05)" in found.advice


def test_overfitting_from_a_large_train_val_gap_advises_regularization_only() -> None:
    [found] = diagnose(curves(GAP), HP, epochs_run=8)
    assert found.kind == "overfitting"
    assert "23.5x" in found.message
    assert "weight_decay" in found.advice and "dropout" in found.advice
    assert "epochs" not in found.advice


def test_underfitting_that_levelled_off_asks_for_a_larger_model_first() -> None:
    [found] = diagnose(curves(UNDERFIT), HP, epochs_run=8)
    assert found.kind == "underfitting"
    assert "levelled off" in found.message
    assert found.advice.startswith("Use a larger model")
    for name in ("depth", "width", "lr", "epochs", "weight_decay", "dropout"):
        assert name in found.advice


def test_underfitting_still_falling_asks_for_more_epochs_first() -> None:
    [found] = diagnose(curves(SLOW), {**HP, "weight_decay": 0.0, "dropout": 0.0}, epochs_run=8)
    assert found.kind == "underfitting"
    assert "still falling" in found.message
    assert found.advice.startswith("Train longer (raise epochs (now 8))")
    assert "regularization" not in found.advice


def test_flat_training_loss_means_the_lr_is_too_low() -> None:
    [found] = diagnose(curves(FLAT), {**HP, "lr": 1e-6}, epochs_run=8)
    assert found.kind == "lr_too_low"
    assert "Raise lr (now 1e-06)" in found.advice


def test_a_diverged_trial_gets_that_finding_alone() -> None:
    reason = "training diverged at epoch 2: loss is nan; lower lr or set grad_clip"
    found = diagnose({"train_loss": [2.0, 9.0]}, {**HP, "lr": 0.9}, fail_reason=reason)
    assert kinds(found) == ["diverged"]
    assert reason in found[0].message
    assert "Lower lr (now 0.9)" in found[0].advice and "grad_clip (now off)" in found[0].advice


def test_an_exploding_or_non_finite_loss_counts_as_divergence() -> None:
    assert kinds(diagnose(curves(EXPLODED), HP, epochs_run=5)) == ["diverged"]
    nan = {"train_loss": [1.0, 0.5, float("nan")], "val_loss": [1.0, 0.6, float("nan")]}
    assert kinds(diagnose(nan, {**HP, "grad_clip": 5.0})) == ["diverged"]
    assert "grad_clip (now 5)" in diagnose(nan, {**HP, "grad_clip": 5.0})[0].advice


def test_early_stopping_after_a_plateau_suggests_capping_epochs() -> None:
    hp = {**HP, "epochs": 30, "patience": 3}
    [found] = diagnose(curves(LEVELLED), hp, epochs_run=11)
    assert found.kind == "stopped_early"
    assert "epoch 11 of 30 (patience 3)" in found.message
    assert "best at epoch 8" in found.message
    assert "epochs (now 30) can be capped near 11" in found.advice


def test_early_stopping_right_after_a_steep_descent_suggests_more_patience() -> None:
    hp = {**HP, "epochs": 20, "patience": 3}
    [found] = diagnose(curves(STEEP), hp, epochs_run=8)
    assert found.kind == "stopped_early"
    assert "raise patience (now 3)" in found.advice


def test_overfitting_and_early_stopping_are_reported_together() -> None:
    hp = {**HP, "epochs": 20}
    assert kinds(diagnose(curves(OVERFIT), hp, epochs_run=8)) == ["overfitting", "stopped_early"]


def test_short_or_missing_curves_say_nothing() -> None:
    assert diagnose({"train_loss": [1.0, 1.0]}, HP, epochs_run=2) == [
        Finding(
            "stopped_early",
            "Early stopping ended training at epoch 2 of 8 (patience 3).",
            "Raise patience or lower epochs to match.",
        )
    ]
    assert diagnose({}, {}) == []


def test_importances_in_words_name_what_mattered_and_what_to_fix() -> None:
    found = report.explain_importances({"lr": 0.7, "batch_size": 0.26, "dropout": 0.04})
    assert found is not None and found.kind == "importance"
    assert found.message == "lr (70%) mattered most, then batch_size (26%) and dropout (4%)."
    assert found.advice.startswith("Narrow the range of lr and batch_size")
    assert "dropout barely mattered" in found.advice
    assert report.explain_importances({}) is None


def test_hyperparameters_rebuilt_from_params_when_no_hp_was_stored() -> None:
    trial = optuna.trial.create_trial(
        params={"lr": 0.1, "optimizer": "sgd", "optimizer.sgd.momentum": 0.5},
        distributions={
            "lr": FloatDistribution(1e-3, 1.0),
            "optimizer": CategoricalDistribution(["sgd", "adam"]),
            "optimizer.sgd.momentum": FloatDistribution(0.0, 0.99),
        },
        value=1.0,
    )
    assert report.hyperparameters(trial) == {
        "lr": 0.1,
        "optimizer": {"name": "sgd", "momentum": 0.5},
    }


# --- studies in SQLite -------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'report.db'}"


def add_trial(
    study: optuna.Study,
    params: dict[str, Any],
    values: float | list[float] | None,
    pair: tuple[list[float], list[float]] | None = None,
    *,
    hp: dict[str, Any] | None = None,
    state: TrialState = TrialState.COMPLETE,
    fail_reason: str | None = None,
) -> None:
    """One trial as tuner's objective leaves it: params, user attrs, per-epoch reports."""
    study.enqueue_trial(params)
    trial = study.ask({k: DISTRIBUTIONS[k] for k in params})
    assert trial.params == params
    train_loss, val_loss = pair or ([], [])
    trial.set_user_attr("hp", {**HP, **params, **(hp or {})})
    trial.set_user_attr("curves", {"train_loss": train_loss, "val_loss": val_loss})
    trial.set_user_attr("epochs_run", len(train_loss))
    if fail_reason:
        trial.set_user_attr("fail_reason", fail_reason)
    if state == TrialState.COMPLETE:
        first = values[0] if isinstance(values, list) else values
        trial.set_user_attr(
            "metrics",
            {"val_accuracy": first, "val_loss": val_loss[-1], "n_params": 1234, "epochs_run": 8},
        )
    if len(study.directions) == 1:
        for epoch, loss in enumerate(val_loss, start=1):
            trial.report(1.0 - loss / 2, epoch)
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)


def make_study(storage: str, name: str, directions: list[str]) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    metrics = ["val_accuracy", "n_params"][: len(directions)]
    study.set_user_attr("metrics", metrics)
    study.set_user_attr(
        "spec",
        {
            "name": name,
            "objective": "mlp",
            "dataset": {"name": "digits"},
            "budget": {"n_trials": 20},
        },
    )
    return study


@pytest.fixture
def problem_study(storage: str) -> optuna.Study:
    """The best trial overfits, the second underfits, the third's lr is too low."""
    study = make_study(storage, "problems", ["maximize"])
    rows = [
        ({"lr": 0.05, "batch_size": 32, "dropout": 0.1, "depth": 3}, 0.95, OVERFIT),
        ({"lr": 0.003, "batch_size": 64, "dropout": 0.4, "depth": 1}, 0.80, UNDERFIT),
        ({"lr": 1e-6, "batch_size": 16, "dropout": 0.2, "depth": 2}, 0.30, FLAT),
        ({"lr": 0.01, "batch_size": 32, "dropout": 0.0, "depth": 2}, 0.20, HEALTHY),
    ]
    for params, value, pair in rows:
        add_trial(study, params, value, pair)
    add_trial(
        study,
        {"lr": 0.02, "batch_size": 16, "dropout": 0.3, "depth": 4},
        None,
        ([1.0, 0.9], [1.0, 0.95]),
        state=TrialState.PRUNED,
    )
    for lr in (0.9, 0.5):
        add_trial(
            study,
            {"lr": lr, "batch_size": 64, "dropout": 0.1, "depth": 2},
            None,
            ([2.0], [2.5]),
            state=TrialState.FAIL,
            fail_reason="training diverged at epoch 2: loss is nan",
        )
    return study


def sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="([\w-]+)"', page))


def test_report_has_every_section_and_diagnoses_the_best_trials(
    problem_study: optuna.Study,
) -> None:
    page = build_report(problem_study, top_k=3)
    assert sections(page) == {
        "summary",
        "diagnosis",
        "top-trials",
        "history",
        "importances",
        "parallel",
        "slices",
        "intermediate",
    }
    assert page.count("<script>") == 1 + 5  # plotly.js once, then one script per plot
    assert page.count('class="plotly-graph-div"') == 5
    assert "<script src" not in page and "<link" not in page  # all inline
    diagnosis = page[page.index('id="diagnosis"') : page.index('id="top-trials"')]
    assert re.findall(r'class="finding (\w+)"', diagnosis) == [
        "overfitting",
        "underfitting",
        "lr_too_low",
        "diverged",
        "importance",
    ]
    assert "Trial #0 (val_accuracy 0.95)" in diagnosis
    assert "2 trial(s) diverged, at lr 0.5, 0.9." in diagnosis
    assert "Cap the lr range below 0.5" in diagnosis
    assert "mattered most" in diagnosis
    assert "Best val_accuracy</th><td>0.95 (trial #0)" in page
    assert "4 complete, 2 fail, 1 pruned" in page
    assert "Objective</th><td>mlp on digits</td>" in page
    assert "Budget</th><td>20 trials</td>" in page
    assert "<summary>Study spec</summary>" in page


def test_top_trials_table_lists_params_and_metrics_best_first(problem_study: optuna.Study) -> None:
    page = build_report(problem_study, top_k=3)
    table = page[page.index('id="top-trials"') : page.index('id="history"')]
    assert "Top 3 of 4 completed trials" in table
    header = re.findall(r"<th>([^<]*)</th>", table)
    assert header == [
        "Trial",
        "val_accuracy",
        "lr",
        "batch_size",
        "dropout",
        "depth",
        "val_loss",
        "n_params",
        "epochs_run",
    ]
    assert re.findall(r"<tr><td>#(\d+)</td>", table) == ["0", "1", "2"]
    assert "<td>1234</td>" in table


def test_hostile_names_are_escaped(storage: str) -> None:
    study = make_study(storage, "<script>alert('study')</script>", ["minimize"])
    study.set_user_attr("metrics", ["<img src=x onerror=alert(1)>"])
    for i, value in enumerate([0.5, 0.3]):
        trial = study.ask({"<script>p</script>": FloatDistribution(0.0, 1.0)})
        trial.set_user_attr("metrics", {"<b>m</b>": i})
        trial.set_user_attr("fail_reason", "x")
        study.tell(trial, value)
    bad = study.ask({"<script>p</script>": FloatDistribution(0.0, 1.0)})
    bad.set_user_attr("fail_reason", "</p><script>alert('reason')</script>")
    study.tell(bad, state=TrialState.FAIL)
    page = build_report(study)
    assert "<script>alert" not in page and "<img" not in page and "<b>m</b>" not in page
    assert "&lt;script&gt;alert(&#x27;study&#x27;)&lt;/script&gt;" in page
    assert "<th>&lt;script&gt;p&lt;/script&gt;</th>" in page
    assert "&lt;/p&gt;&lt;script&gt;alert(&#x27;reason&#x27;)" in page
    # In plotly's JSON the same names are there, with '<' and '/' as \u escapes.
    assert "\\u003cscript\\u003ep\\u003c\\u002fscript\\u003e" in page


def test_multi_objective_study_gets_a_pareto_front_and_history_per_metric(storage: str) -> None:
    study = make_study(storage, "pareto", ["maximize", "minimize"])
    for lr, acc, size in [(0.1, 0.9, 5000), (0.01, 0.8, 1000), (0.001, 0.7, 3000)]:
        add_trial(study, {"lr": lr, "depth": 2}, [acc, size], HEALTHY)
    page = build_report(study)
    assert "pareto" in sections(page) and "intermediate" not in sections(page)
    assert page.count('id="plot-history-') == 2
    assert "Pareto front</th><td>2 trial(s): #0, #1" in page
    assert "Best n_params</th><td>1000 (trial #1)" in page
    assert re.findall(r"<tr><td>#(\d+)</td>", page) == ["0", "1", "2"]


def test_empty_study_gives_a_page_that_says_so(storage: str) -> None:
    page = build_report(make_study(storage, "empty", ["maximize"]))
    assert "No completed trials yet" in page
    assert "No completed trials to diagnose yet" in page
    assert "plotly-graph-div" not in page
    assert "Plotly" not in page  # no plot, so no 4 MB of plotly.js either


def test_one_completed_trial_explains_the_missing_plots(storage: str) -> None:
    study = make_study(storage, "single", ["maximize"])
    add_trial(study, {"lr": 0.01}, 0.9, HEALTHY)
    running = study.ask()  # a trial still running is counted, not plotted
    assert running.number == 1
    page = build_report(study)
    assert "1 complete, 1 running" in page
    assert "Parameter importances need at least two completed trials." in page
    assert 'Parallel coordinates</h2><p class="na">needs at least two completed trials' in page
    assert page.count('class="plotly-graph-div"') == 2  # history and intermediate values
    assert "Its curves show no overfitting" in page


def test_constant_params_have_no_importances(storage: str) -> None:
    study = make_study(storage, "constant", ["maximize"])
    for value in (0.5, 0.6):
        add_trial(study, {"lr": 0.01}, value, HEALTHY)
    page = build_report(study)
    assert "need parameters that vary between completed trials" in page


def test_top_k_must_be_positive(problem_study: optuna.Study) -> None:
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        build_report(problem_study, top_k=0)


def test_history_png(problem_study: optuna.Study, storage: str) -> None:
    png = history_png(problem_study)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    empty = history_png(make_study(storage, "nothing", ["minimize", "minimize"]))
    assert empty.startswith(b"\x89PNG\r\n\x1a\n")


# --- a study made by real training ------------------------------------------------------


@pytest.mark.slow
def test_report_of_a_real_study(tmp_path: Path) -> None:
    from tuner.engine import run_study
    from tuner.spec import parse_spec

    torch.set_num_threads(1)
    spec = parse_spec(
        {
            "name": "iris-report",
            "objective": "mlp",
            "dataset": {"name": "iris"},
            "budget": {"n_trials": 4, "max_epochs": 6},
            "sampler": {"name": "random", "seed": 3},
            "pruner": {"name": "none"},
            "search_space": {
                "lr": {"low": 1e-4, "high": 0.3, "log": True},
                "epochs": {"low": 3, "high": 6},
                "width": {"choices": [8, 16]},
            },
        }
    )
    study = run_study(spec, storage_url=f"sqlite:///{tmp_path / 'real.db'}", device="cpu")
    page = build_report(study)
    assert {"history", "importances", "parallel", "slices", "intermediate"} <= sections(page)
    best = ranked_trials(study)[0]
    assert f"Trial #{best.number} (" in page
    assert set(best.user_attrs["curves"]) >= {"train_loss", "val_loss"}
    assert all(f.kind in report.Kind.__args__ for f in report.diagnose_trial(best))
    assert history_png(study).startswith(b"\x89PNG")


def test_a_pruned_trial_is_not_reported_as_early_stopped() -> None:
    trial = optuna.trial.create_trial(
        params={"lr": 0.1},
        distributions={"lr": FloatDistribution(1e-3, 1.0)},
        state=TrialState.PRUNED,
        user_attrs={"curves": curves(UNDERFIT), "epochs_run": 8, "hp": {**HP, "epochs": 20}},
    )
    assert kinds(report.diagnose_trial(trial)) == ["underfitting"]


def test_odd_user_attrs_do_not_break_the_page(storage: str) -> None:
    """Studies made outside tuner (or by an older version) still get a report."""
    study = make_study(storage, "odd", ["minimize"])
    for value, attrs in [
        (0.5, {"curves": {"train_loss": [1.0, None, 0.5], "val_loss": "?"}, "epochs_run": "3"}),
        (0.4, {"curves": [1, 2, 3], "metrics": {"val_loss": None}, "hp": "lr=0.1"}),
    ]:
        trial = study.ask({"lr": DISTRIBUTIONS["lr"]})
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
    page = build_report(study)
    assert "Trial #1 (val_accuracy 0.4)" in page
    assert "diverged</b>: The loss became NaN or infinite." in page  # the None in trial #0
