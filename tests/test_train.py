"""The training loop: losses, optimizers, regularisers, early stopping, determinism."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torch.utils.data
from sklearn import metrics as skm
from torch import nn

from tuner.data import Dataset, load_dataset
from tuner.losses import LOSSES, make_loss
from tuner.metrics import predict
from tuner.models import build_cnn, build_mlp
from tuner.optim import make_optimizer, penalised_params
from tuner.spec import (
    CLASSIFICATION_LOSSES,
    CLASSIFICATION_METRICS,
    GLOBAL_METRICS,
    NESTED,
    REGRESSION_METRICS,
    DatasetSpec,
)
from tuner.train import (
    BRANCH_DEFAULTS,
    DEFAULT_HP,
    Diverged,
    TrainResult,
    resolve_hp,
    seed_everything,
    train,
)

torch.set_num_threads(1)

SMALL = {"n_samples": 200, "n_features": 8, "n_informative": 4}


@pytest.fixture(scope="module")
def cls() -> Dataset:
    options = {**SMALL, "n_classes": 3}
    return load_dataset(DatasetSpec(name="synthetic_classification", options=options))


@pytest.fixture(scope="module")
def reg() -> Dataset:
    options = {**SMALL, "noise": 1.0}
    return load_dataset(DatasetSpec(name="synthetic_regression", options=options))


def fit(data: Dataset, hp: dict[str, Any], seed: int = 0, **kwargs: Any) -> TrainResult:
    """Seed, build a small MLP and train it, as an objective would."""
    seed_everything(seed)
    model = build_mlp(
        data.n_features, data.n_classes or 1, depth=hp.get("depth", 1), width=16,
        dropout=hp.get("dropout", 0.0), batch_norm=hp.get("batch_norm", False),
    )
    return train(model, data, hp, seed=seed, **kwargs)


def weights(result: TrainResult) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in penalised_params(result.model)])


# --- losses -----------------------------------------------------------------------


def test_focal_with_gamma_zero_is_cross_entropy_and_smaller_with_gamma() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(32, 4), torch.randint(0, 4, (32,))
    ce = F.cross_entropy(logits, y)
    focal = make_loss({"name": "focal", "gamma": 0.0}, "classification")
    assert torch.allclose(focal(logits, y), ce)
    assert 0 < make_loss({"name": "focal", "gamma": 2.0}, "classification")(logits, y) < ce


def test_label_smoothing_differs_from_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(32, 4) * 3, torch.randint(0, 4, (32,))
    smooth = make_loss({"name": "label_smoothing", "smoothing": 0.2}, "classification")
    assert not torch.isclose(smooth(logits, y), F.cross_entropy(logits, y))


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_computes_on_model_outputs(name: str) -> None:
    task = "classification" if name in CLASSIFICATION_LOSSES else "regression"
    loss = make_loss({"name": name, **BRANCH_DEFAULTS["loss"][name]}, task)
    torch.manual_seed(0)
    if task == "classification":
        value = loss(torch.randn(8, 3, requires_grad=True), torch.randint(0, 3, (8,)))
    else:
        value = loss(torch.randn(8, 1, requires_grad=True), torch.randn(8))
    assert value.ndim == 0 and math.isfinite(value.item()) and value.item() > 0
    value.backward()


def test_loss_of_the_wrong_task_is_refused() -> None:
    with pytest.raises(ValueError, match="loss 'mse' does not fit a classification dataset"):
        make_loss({"name": "mse"}, "classification")
    with pytest.raises(ValueError, match="huber delta must be positive"):
        make_loss({"name": "huber", "delta": 0.0}, "regression")


# --- optimizers and regularisers ----------------------------------------------------


@pytest.mark.parametrize("optimizer", list(BRANCH_DEFAULTS["optimizer"]))
def test_every_optimizer_brings_the_loss_down(cls: Dataset, optimizer: str) -> None:
    result = fit(cls, {"optimizer": optimizer, "lr": 0.01, "epochs": 8, "batch_size": 32})
    losses = result.curves["train_loss"]
    assert losses[-1] < 0.9 * losses[0], losses


def test_weight_decay_shrinks_weights(reg: Dataset) -> None:
    hp = {"optimizer": {"name": "sgd"}, "lr": 0.05, "epochs": 10}
    plain = weights(fit(reg, hp)).norm()
    decayed = weights(fit(reg, {**hp, "weight_decay": 0.1})).norm()
    assert decayed < 0.9 * plain


def test_decay_acts_on_weights_alone_and_without_it_one_group_steps_the_same() -> None:
    adamw = {"name": "adamw", **BRANCH_DEFAULTS["optimizer"]["adamw"]}
    model = build_mlp(8, 3, depth=2, width=16, dropout=0.0, batch_norm=True)
    trainable = {id(p) for p in model.parameters()}
    decayed = make_optimizer(model, adamw, lr=0.01, weight_decay=0.1)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in decayed.param_groups}
    assert by_decay[0.1] == {id(p) for p in penalised_params(model)}
    assert by_decay[0.1] | by_decay[0.0] == trainable and not by_decay[0.1] & by_decay[0.0]

    def steps(optimizer: Callable[[nn.Module], torch.optim.Optimizer]) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = build_mlp(8, 3, depth=2, width=16, dropout=0.0, batch_norm=False)
        opt = optimizer(net)
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    one = make_optimizer(model, adamw, lr=0.01, weight_decay=0.0)
    (group,) = one.param_groups
    assert {id(p) for p in group["params"]} == trainable
    # The same steps as weights and the rest in two groups without decay, bit for bit.
    grouped = steps(lambda net: torch.optim.AdamW([
        {"params": penalised_params(net)},
        {"params": [p for p in net.parameters() if p.ndim < 2]},
    ], lr=0.01, weight_decay=0.0, fused=True))
    single = steps(lambda net: make_optimizer(net, adamw, lr=0.01, weight_decay=0.0))
    assert all(torch.equal(a, b) for a, b in zip(grouped, single, strict=True))


def test_l1_makes_weights_sparser(cls: Dataset) -> None:
    hp = {"optimizer": "adam", "lr": 0.01, "epochs": 15}

    def sparsity(result: TrainResult) -> float:
        return (weights(result).abs() < 1e-2).float().mean().item()

    assert sparsity(fit(cls, {**hp, "l1": 1e-2})) > sparsity(fit(cls, hp)) + 0.1


def test_grad_clipping_bounds_the_step(reg: Dataset) -> None:
    hp = {"optimizer": {"name": "sgd", "momentum": 0.0}, "lr": 1.0, "epochs": 1,
          "batch_size": len(reg.x_train)}  # one full-batch step

    def step(clip: float) -> float:
        seed_everything(0)
        model = build_mlp(reg.n_features, 1, depth=1, width=16, dropout=0.0, batch_norm=False)
        before = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
        train(model, reg, {**hp, "grad_clip": clip}, seed=0)
        return (nn.utils.parameters_to_vector(model.parameters()) - before).norm().item()

    assert step(0.05) <= 0.05 * 1.0 + 1e-6
    assert step(0.0) > 0.5


def test_schedules_change_the_learning_rate(cls: Dataset) -> None:
    hp = {"lr": 0.01, "epochs": 4}
    assert fit(cls, hp).curves["lr"] == [0.01] * 4
    step = fit(cls, {**hp, "schedule": {"name": "step", "step_size": 2, "gamma": 0.5}})
    assert step.curves["lr"] == pytest.approx([0.01, 0.01, 0.005, 0.005])
    cosine = fit(cls, {**hp, "schedule": "cosine"}).curves["lr"]
    assert cosine[0] == 0.01 and all(a > b for a, b in itertools.pairwise(cosine))


def test_lone_last_row_does_not_break_batch_norm(cls: Dataset) -> None:
    assert len(cls.x_train) % 7 == 1
    result = fit(cls, {"batch_size": 7, "epochs": 1, "batch_norm": True})
    assert math.isfinite(result.metrics["val_loss"])


# --- early stopping, callbacks, divergence ------------------------------------------


def test_early_stopping_stops_and_restores_the_best_epoch(cls: Dataset) -> None:
    # Train loss falls every epoch, so "maximize train_loss" never improves after epoch 1.
    result = fit(cls, {"lr": 0.01, "epochs": 20, "patience": 2},
                 monitor="train_loss", direction="maximize")
    assert result.stopped_early and result.best_epoch == 1
    assert result.metrics["epochs_run"] == 3 and len(result.curves["val_loss"]) == 3
    assert result.metrics["val_loss"] == pytest.approx(result.curves["val_loss"][0])
    assert result.curves["val_loss"][2] != pytest.approx(result.curves["val_loss"][0])


def test_monitor_on_a_val_metric_is_tracked_per_epoch(cls: Dataset) -> None:
    result = fit(cls, {"lr": 0.01, "epochs": 4, "patience": 10},
                 monitor="val_accuracy", direction="maximize")
    accuracy = result.curves["val_accuracy"]
    assert len(accuracy) == 4 and not result.stopped_early
    assert result.metrics["val_accuracy"] == max(accuracy)
    assert accuracy[result.best_epoch - 1] == max(accuracy)


def test_on_epoch_is_called_every_epoch_and_may_raise(cls: Dataset) -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    fit(cls, {"epochs": 3}, on_epoch=lambda e, row: seen.append((e, row)),
        monitor="val_f1", direction="maximize")
    assert [e for e, _ in seen] == [1, 2, 3]
    assert set(seen[0][1]) == {"train_loss", "val_loss", "val_f1"}

    class Pruned(Exception):
        pass

    calls: list[int] = []

    def prune_at_two(epoch: int, row: dict[str, float]) -> None:
        calls.append(epoch)
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        fit(cls, {"epochs": 5}, on_epoch=prune_at_two)
    assert calls == [1, 2]


def test_huge_learning_rate_raises_diverged_with_advice(reg: Dataset) -> None:
    hp = {"optimizer": {"name": "sgd"}, "lr": 1e6, "epochs": 3}
    with pytest.raises(Diverged, match=r"at epoch 1: lower lr \(now 1e\+06\) or set grad_clip"):
        fit(reg, hp)


# --- results ----------------------------------------------------------------------


def test_same_seed_gives_identical_results_and_another_seed_differs(cls: Dataset) -> None:
    hp = {"epochs": 3, "dropout": 0.2, "lr": 0.01}

    def run(seed: int) -> tuple[dict[str, float], dict[str, list[float]]]:
        result = fit(cls, hp, seed=seed)
        result.metrics.pop("train_seconds")
        return result.metrics, result.curves

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_seeding_for_the_cpu_draws_what_torch_manual_seed_draws() -> None:
    torch.manual_seed(7)
    expected = torch.rand(5), torch.nn.Linear(4, 3).weight
    seed_everything(7, "cpu")
    assert torch.equal(torch.rand(5), expected[0])
    assert torch.equal(torch.nn.Linear(4, 3).weight, expected[1])


def test_metrics_cover_both_splits_with_spec_names(cls: Dataset) -> None:
    metrics = fit(cls, {"epochs": 1}).metrics
    expected = {f"{s}_{m}" for s in ("val", "test") for m in CLASSIFICATION_METRICS}
    assert set(metrics) == expected | GLOBAL_METRICS
    assert metrics["n_params"] == 8 * 16 + 16 + 16 * 3 + 3


def test_regression_metrics_are_in_the_targets_units(reg: Dataset) -> None:
    result = fit(reg, {"epochs": 3, "lr": 0.01})
    assert set(result.metrics) == {
        f"{s}_{m}" for s in ("val", "test") for m in REGRESSION_METRICS
    } | GLOBAL_METRICS
    raw = lambda t: t.double().numpy() * reg.y_std + reg.y_mean  # noqa: E731
    pred = raw(predict(result.model, reg.x_val).squeeze(1))
    mse = skm.mean_squared_error(raw(reg.y_val), pred)
    assert result.metrics["val_mse"] == pytest.approx(mse, rel=1e-5)
    assert result.metrics["val_r2"] == pytest.approx(skm.r2_score(raw(reg.y_val), pred), rel=1e-5)


def test_without_a_test_split_there_are_no_test_metrics() -> None:
    data = load_dataset(DatasetSpec(name="iris", test_fraction=0))
    metrics = fit(data, {"epochs": 1}).metrics
    assert not any(k.startswith("test_") for k in metrics) and "val_accuracy" in metrics


def test_cnn_trains_on_images() -> None:
    data = load_dataset(DatasetSpec(name="digits"))
    seed_everything(0)
    model = build_cnn(data.image_shape, data.n_features, 10, depth=1, width=4, dropout=0.0,
                      batch_norm=True)
    result = train(model, data, {"epochs": 2, "lr": 0.05, "batch_size": 128}, seed=0)
    assert result.curves["train_loss"][1] < result.curves["train_loss"][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_keeps_model_and_data_there(cls: Dataset) -> None:
    result = fit(cls, {"epochs": 2, "optimizer": "adamw"}, device="cuda")
    assert next(result.model.parameters()).device.type == "cuda"
    assert math.isfinite(result.metrics["val_loss"]) and "test_f1" in result.metrics


def test_one_host_sync_per_epoch_and_no_dataloader(
    cls: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the training loop must not build a DataLoader")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", refuse)
    item = torch.Tensor.item
    calls = 0

    def counting_item(self: torch.Tensor) -> Any:
        nonlocal calls
        calls += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)

    def syncs(batch_size: int) -> int:
        nonlocal calls
        calls = 0
        fit(cls, {"epochs": 2, "batch_size": batch_size})
        return calls

    assert syncs(4) == syncs(128) > 0  # 30 batches an epoch cost no more syncs than 1


# --- hyperparameters ----------------------------------------------------------------


def test_branch_defaults_cover_every_nested_choice_of_the_spec() -> None:
    assert set(BRANCH_DEFAULTS) == set(NESTED)
    for dim, branches in NESTED.items():
        assert set(BRANCH_DEFAULTS[dim]) == set(branches)
        for name, params in branches.items():
            assert set(BRANCH_DEFAULTS[dim][name]) == set(params), (dim, name)


def test_resolve_hp_fills_defaults_and_refuses_unknown_choices() -> None:
    hp = resolve_hp({"optimizer": "sgd", "channels": 8}, "regression")
    assert hp["optimizer"] == {"name": "sgd", "momentum": 0.9, "nesterov": False}
    assert hp["loss"] == {"name": "mse"} and hp["lr"] == DEFAULT_HP["lr"] and hp["channels"] == 8
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; known: sgd"):
        resolve_hp({"optimizer": "lion"}, "regression")
    with pytest.raises(ValueError, match="optimizer 'adam' has no parameter momentum"):
        resolve_hp({"optimizer": {"name": "adam", "momentum": 0.9}}, "regression")
    with pytest.raises(ValueError, match="lr must be positive"):
        resolve_hp({"lr": 0.0}, "regression")


def test_monitor_must_fit_the_task(cls: Dataset) -> None:
    with pytest.raises(ValueError, match="monitor 'val_r2' is not a classification metric"):
        fit(cls, {"epochs": 1}, monitor="val_r2")
    result = fit(cls, {"epochs": 1}, monitor="n_params")  # fixed per run: watch val_loss
    assert set(result.curves) == {"train_loss", "val_loss", "lr"}
