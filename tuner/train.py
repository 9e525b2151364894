"""The training loop: resolved hyperparameters + model + dataset -> metrics and curves.

A tight loop over pre-loaded tensors: one shuffled copy per epoch, slices as batches,
one host sync per epoch (the summed loss), evaluation in eval mode under
``torch.inference_mode``. Early stopping restores the best epoch's weights; a loss
that stops being finite raises ``Diverged`` with advice.

>>> from tuner.data import load_dataset
>>> from tuner.models import build_mlp
>>> from tuner.spec import DatasetSpec
>>> data = load_dataset(DatasetSpec(name="iris"))
>>> seed_everything(0)
>>> model = build_mlp(data.n_features, data.n_classes, depth=1, width=16, dropout=0.0,
...                   batch_norm=False)
>>> result = train(model, data, {"lr": 0.01, "epochs": 5}, seed=0)
>>> result.metrics["epochs_run"], len(result.curves["val_loss"])
(5.0, 5)
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tuner.data import Dataset
from tuner.losses import make_loss
from tuner.metrics import evaluate_split
from tuner.models import count_parameters
from tuner.optim import make_optimizer, make_schedule, penalised_params
from tuner.spec import CLASSIFICATION_METRICS, GLOBAL_METRICS, REGRESSION_METRICS, Task

DEFAULT_HP: dict[str, Any] = {
    "lr": 1e-3,
    "batch_size": 64,
    "epochs": 20,
    "weight_decay": 0.0,
    "l1": 0.0,
    "dropout": 0.0,
    "batch_norm": False,
    "patience": 0,
    "grad_clip": 0.0,
    "depth": 2,
    "width": 64,
    "optimizer": {"name": "adamw"},
    "schedule": {"name": "none"},
}
"""Values for dimensions a resolved hp dict leaves out; the loss default is per task."""

DEFAULT_LOSS: dict[Task, str] = {"classification": "cross_entropy", "regression": "mse"}

BRANCH_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "optimizer": {
        "sgd": {"momentum": 0.9, "nesterov": False},
        "adam": {"beta1": 0.9, "beta2": 0.999},
        "adamw": {"beta1": 0.9, "beta2": 0.999},
        "rmsprop": {"momentum": 0.0, "alpha": 0.99},
        "adagrad": {},
    },
    "loss": {
        "cross_entropy": {},
        "label_smoothing": {"smoothing": 0.1},
        "focal": {"gamma": 2.0},
        "mse": {},
        "l1": {},
        "huber": {"delta": 1.0},
        "smooth_l1": {"beta": 1.0},
    },
    "schedule": {
        "none": {},
        "cosine": {},
        "step": {"step_size": 10, "gamma": 0.1},
    },
}
"""Parameters of each nested choice that a spec leaves out (``tuner.space`` uses these)."""

_TYPES: dict[str, type] = {
    "lr": float, "batch_size": int, "epochs": int, "weight_decay": float, "l1": float,
    "patience": int, "grad_clip": float,
}
_POSITIVE = {"lr", "batch_size", "epochs"}


class Diverged(ArithmeticError):
    """The loss stopped being finite; the message says which setting to change."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become the model's inputs and its outputs become predictions: the
    training data's shape, train statistics and class names. Saved with the weights, so
    a saved model predicts on raw data without the dataset it was trained on.
    """

    task: Task
    n_features: int
    image_shape: tuple[int, int, int] | None
    classes: tuple[str, ...]
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: float
    y_std: float

    @classmethod
    def of(cls, data: Dataset) -> Preprocessing:
        """``data``'s statistics on the CPU; a dataset without them was not standardised."""
        n = data.n_features
        return cls(
            task=data.task,
            n_features=n,
            image_shape=data.image_shape,
            classes=data.classes,
            x_mean=(data.x_mean if data.x_mean is not None else torch.zeros(n)).cpu(),
            x_std=(data.x_std if data.x_std is not None else torch.ones(n)).cpu(),
            y_mean=data.y_mean,
            y_std=data.y_std,
        )

    @property
    def n_outputs(self) -> int:
        """Width of the model's output: one logit per class, or one value."""
        return len(self.classes) if self.task == "classification" else 1


@dataclass
class TrainResult:
    """What one training run produced.

    ``best_epoch`` is the epoch whose weights ``model`` holds: the best one by the
    monitored metric when early stopping is on (patience > 0), else the last.
    ``objective`` names the family that built ``model`` (``objective.fit`` sets it):
    with ``preprocessing`` and the hp, what rebuilds the model from saved weights.
    """

    metrics: dict[str, float]
    curves: dict[str, list[float]]
    stopped_early: bool
    best_epoch: int
    model: nn.Module
    preprocessing: Preprocessing
    objective: str | None = None


def seed_everything(seed: int, device: str | torch.device = "cpu") -> None:
    """Seed Python, NumPy and torch; call it before building a model for repeatable init."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_torch(seed, device)


def seed_torch(seed: int, device: str | torch.device = "cpu") -> None:
    """``torch.manual_seed``; for training on the CPU, the CPU generator alone (the same
    numbers): the full call also queues the seed, with a stack trace, for every kind of
    accelerator torch might start later, 0.37 ms a call from a worker's deep stack."""
    if torch.device(device).type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def resolve_hp(hp: dict[str, Any], task: Task) -> dict[str, Any]:
    """``hp`` with defaults filled in, nested choices as ``{"name": ..., **params}``.

    Unknown extra keys (objective-specific ones such as ``channels``) pass through.
    """
    out = {**DEFAULT_HP, "loss": {"name": DEFAULT_LOSS[task]}, **hp}
    for dim, branches in BRANCH_DEFAULTS.items():
        value = out[dim]
        value = {"name": value} if isinstance(value, str) else dict(value)
        name = value.get("name")
        if name not in branches:
            raise ValueError(f"unknown {dim} {name!r}; known: {', '.join(branches)}")
        extra = set(value) - {"name"} - set(branches[name])
        if extra:
            raise ValueError(
                f"{dim} {name!r} has no parameter {', '.join(sorted(extra))}; "
                f"its parameters: {', '.join(branches[name]) or 'none'}"
            )
        out[dim] = {"name": name, **branches[name], **value}
    for key, kind in _TYPES.items():
        value = kind(out[key])
        if value < 0 or (key in _POSITIVE and value <= 0):
            raise ValueError(f"{key} must be {'positive' if key in _POSITIVE else '>= 0'}")
        out[key] = value
    return out


def _monitored(monitor: str, task: Task) -> str:
    """The per-epoch quantity to watch; global metrics do not change per epoch, so
    asking for one watches ``val_loss`` instead."""
    if monitor in GLOBAL_METRICS or monitor == "train_loss":
        return "val_loss" if monitor in GLOBAL_METRICS else monitor
    split, _, base = monitor.partition("_")
    known = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if split not in ("val", "test") or base not in known:
        raise ValueError(
            f"monitor {monitor!r} is not a {task} metric; use train_loss or one of: "
            f"{', '.join(sorted('val_' + m for m in known))}"
        )
    return monitor


class _Loop:
    """One run's fixed parts: the model, criterion, optimizer and regularisers."""

    def __init__(self, model: nn.Module, data: Dataset, hp: dict[str, Any], seed: int) -> None:
        self.model, self.data, self.hp = model, data, hp
        self.criterion = make_loss(hp["loss"], data.task)
        self.optimizer = make_optimizer(
            model, hp["optimizer"], lr=hp["lr"], weight_decay=hp["weight_decay"]
        )
        self.schedule = make_schedule(self.optimizer, hp["schedule"], epochs=hp["epochs"])
        self.penalised = penalised_params(model) if hp["l1"] > 0 else []
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.generator = torch.Generator(device=data.x_train.device).manual_seed(seed)
        n = len(data.x_train)
        self.batch_size = min(hp["batch_size"], n)
        # A lone row in the last batch would break batch norm; it is seen in other epochs.
        self.rows = n - 1 if n % self.batch_size == 1 and n > 1 else n

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def epoch(self) -> float:
        """One pass over the shuffled train split; the mean criterion loss (one sync)."""
        x, y, bs = self.data.x_train, self.data.y_train, self.batch_size
        l1, clip = self.hp["l1"], self.hp["grad_clip"]
        self.model.train()
        # One gather per epoch (a shuffled copy of the split), so batches are views.
        order = torch.randperm(len(x), generator=self.generator, device=x.device)
        x, y = x[order], y[order]
        total = torch.zeros((), device=x.device)
        for start in range(0, self.rows, bs):
            stop = min(start + bs, self.rows)
            loss = self.criterion(self.model(x[start:stop]), y[start:stop])
            objective = loss
            if self.penalised:
                objective = loss + l1 * torch.stack([p.abs().sum() for p in self.penalised]).sum()
            for param in self.params:  # zero_grad(set_to_none=True) without its wrappers
                param.grad = None
            objective.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
            self.optimizer.step()
            total += loss.detach() * (stop - start)
        if self.schedule is not None:
            self.schedule.step()
        return (total / self.rows).item()

    def evaluate(self, split: str, names: set[str] | None = None) -> dict[str, float]:
        d = self.data
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        return evaluate_split(
            self.model, x, y, d.task, self.criterion, names=names, target_scale=d.y_std
        )

    def diverged(self, what: str, value: float, epoch: int, lr: float) -> Diverged:
        clip = self.hp["grad_clip"]
        fix = f"lower grad_clip (now {clip:g})" if clip > 0 else "set grad_clip (e.g. 1.0)"
        return Diverged(f"{what} became {value} at epoch {epoch}: lower lr (now {lr:g}) or {fix}")


def train(
    model: nn.Module,
    data: Dataset,
    hp: dict[str, Any],
    *,
    seed: int,
    device: str | torch.device = "cpu",
    monitor: str = "val_loss",
    direction: Literal["minimize", "maximize"] = "minimize",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``hp`` (see ``resolve_hp``); deterministic per seed.

    Model and data move to ``device`` once. After each epoch (numbered from 1)
    ``on_epoch(epoch, {"train_loss", "val_loss", monitor})`` is called; whatever it
    raises (pruning, cancellation) propagates. With ``patience`` > 0, training stops
    after that many epochs without improvement of ``monitor`` and the best epoch's
    weights are restored.
    """
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be minimize or maximize, got {direction!r}")
    hp = resolve_hp(hp, data.task)
    monitor = _monitored(monitor, data.task)
    split, _, base = monitor.partition("_")
    model, data = model.to(device), data.to(device)
    seed_torch(seed, device)  # dropout masks
    loop = _Loop(model, data, hp, seed)
    curves: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": []}
    curves.setdefault(monitor, [])
    best_value, best_epoch, best_state, waited = math.nan, 0, None, 0
    patience, sign = hp["patience"], 1 if direction == "minimize" else -1
    started, hooked = time.perf_counter(), 0.0
    for epoch in range(1, hp["epochs"] + 1):
        lr = loop.lr
        train_loss = loop.epoch()
        if not math.isfinite(train_loss):
            raise loop.diverged("training loss", train_loss, epoch, lr)
        val = loop.evaluate("val", {"loss"} | ({base} if split == "val" else set()))
        if not math.isfinite(val["loss"]):
            raise loop.diverged("validation loss", val["loss"], epoch, lr)
        row = {"train_loss": train_loss, "val_loss": val["loss"]}
        if split == "val":
            row[monitor] = val.get(base, math.nan)
        elif split == "test":
            row[monitor] = loop.evaluate("test", {base}).get(base, math.nan)
        for key, value in (*row.items(), ("lr", lr)):
            curves[key].append(value)
        value = row[monitor]
        improved = math.isnan(best_value) or sign * value < sign * best_value
        if math.isfinite(value) and improved:
            best_value, best_epoch, waited = value, epoch, 0
            if patience:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
        if on_epoch is not None:
            called = time.perf_counter()
            on_epoch(epoch, row)
            hooked += time.perf_counter() - called
        if patience and waited >= patience:
            break
    epochs_run = len(curves["train_loss"])
    stopped_early = epochs_run < hp["epochs"]
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epochs_run
    seconds = time.perf_counter() - started - hooked  # training alone, not its reporting
    metrics = {f"val_{k}": v for k, v in loop.evaluate("val").items()}
    metrics |= {f"test_{k}": v for k, v in loop.evaluate("test").items()}
    metrics |= {
        "n_params": float(count_parameters(model)),
        "train_seconds": seconds,
        "epochs_run": float(epochs_run),
    }
    return TrainResult(
        metrics, curves, stopped_early, best_epoch, model, Preprocessing.of(data)
    )
