"""Model families (objectives) and the Optuna objective that trains one trial.

An objective is a model family that the service can tune. Built-ins (``mlp``, ``cnn``)
and plugins are found the same way: entry points in the ``tuner.objectives`` group.
Requests name a registered objective; they never carry code.

Writing a plugin (see docs/plugins.md and examples/tuner-example-objective)
------------------------------------------------------------------------------

Subclass :class:`Objective` and register an instance (or the class) in your
package's ``pyproject.toml``::

    [project.entry-points."tuner.objectives"]
    resmlp = "tuner_example_objective:RESMLP"

then ``pip install`` the package where the server and the workers run and restart them
(the registry is read once per process). The protocol:

- ``name`` (str): the entry point's name, what specs write in ``objective``.
- ``description`` (str): one line for ``GET /v1/objectives``.
- ``params`` (dict[str, type]): the family's own search dimensions and their types
  (``int``, ``float``, ``bool`` or ``str``), e.g. ``{"blocks": int}``. Specs may search
  or fix them in ``search_space`` beside the common dimensions (``spec.SCALARS``,
  ``spec.NESTED``); their names must not be common ones. Integer ranges become
  ``suggest_int``.
- ``default_space(task) -> dict[str, Dimension]``: the space for every dimension a
  spec leaves out; ``task`` is ``"classification"``, ``"regression"`` or None (not
  known yet). Call ``super().default_space(task)`` to keep the common defaults
  (learning rate, batch size, optimizer, loss, regularisation) and add or fix your own.
- ``build(hp, data) -> torch.nn.Module``: the model for one trial. ``hp`` holds the
  resolved hyperparameters (plain values; ``hp["blocks"]``, ``hp["width"]``, ...);
  ``data`` is a :class:`tuner.data.Dataset` (``n_features``, ``n_classes``, ``task``,
  ``image_shape``). The model maps ``[batch, n_features]`` float inputs to
  ``[batch, n_outputs(data)]``: class logits, or one value for regression. Training,
  losses, optimizers, pruning, metrics and weights are the service's.

>>> get_objective("mlp").name
'mlp'
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from tuner import data as datasets
from tuner import models, train
from tuner.pruning import EpochReporter
from tuner.space import distributions, resolve_space, suggest
from tuner.spec import (
    CLASSIFICATION_LOSSES,
    DEFAULT_METRIC,
    GLOBAL_METRICS,
    LOSSES,
    NESTED,
    SCALARS,
    Branches,
    Choice,
    Dimension,
    Metric,
    Range,
    SpecError,
    StudySpec,
    Task,
)
from tuner.trial_writes import write

__all__ = [
    "CNN",
    "INTERRUPTED",
    "MLP",
    "TRIAL_FAILURES",
    "Cancelled",
    "ModelTooLarge",
    "Objective",
    "ResultHook",
    "check_smallest_model",
    "evaluate",
    "fit",
    "get_objective",
    "list_objectives",
    "load_data",
    "n_outputs",
    "resolved_metrics",
]


log = logging.getLogger(__name__)

GROUP = "tuner.objectives"
"""The entry point group objectives are registered in."""
PARAM_TYPES = (int, float, bool, str)
"""Types an objective's own parameters may have."""


class Cancelled(Exception):
    """Raised between epochs when the trial's job was cancelled."""


class Objective:
    """A model family: its default search space and how to build a model from hp.

    Subclass it for a plugin (the protocol is in this module's docstring).
    """

    name: str = ""
    description: str = ""
    params: dict[str, type] = {}  # noqa: RUF012 - read-only class default

    def default_space(self, task: Task | None) -> dict[str, Dimension]:
        """Search space used for every dimension the spec leaves out."""
        space: dict[str, Dimension] = {
            "lr": Range(low=1e-4, high=0.3, log=True),
            "batch_size": Choice(choices=[32, 64, 128]),
            "optimizer": Branches(choices={
                "sgd": {
                    "momentum": Range(low=0.0, high=0.99),
                    "nesterov": Choice(choices=[True, False]),
                },
                "adam": {},
                "adamw": {},
            }),
            "weight_decay": Range(low=1e-6, high=1e-2, log=True),
            "dropout": Range(low=0.0, high=0.5),
            "l1": 0.0,
            "batch_norm": Choice(choices=[True, False]),
            "patience": 5,
            "grad_clip": 0.0,
            "depth": Range(low=1, high=4),
            "width": Range(low=16, high=256, log=True),
            "schedule": Choice(choices=["none", "cosine"]),
        }
        if task is not None:  # unknown until loaded: train then uses the task's usual loss
            space["loss"] = Choice(choices=_default_losses(task))
        return space

    def build(self, hp: dict[str, Any], data: datasets.Dataset) -> nn.Module:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Name, description and default space as JSON, for ``GET /v1/objectives``."""
        return {
            "name": self.name,
            "description": self.description,
            "params": {k: v.__name__ for k, v in self.params.items()},
            "default_space": {
                task: {
                    dim: value.model_dump(mode="json") if hasattr(value, "model_dump") else value
                    for dim, value in self.default_space(task).items()
                }
                for task in ("classification", "regression")
            },
        }


def _default_losses(task: Task) -> list[str]:
    if task == "classification":
        return ["cross_entropy", "label_smoothing"]
    return [name for name in LOSSES if name not in CLASSIFICATION_LOSSES][:3]


def n_outputs(data: datasets.Dataset) -> int:
    """Width of a model's output for ``data``: one logit per class, or one value."""
    return data.n_classes if data.task == "classification" else 1


class _MLP(Objective):
    name = "mlp"
    description = "Fully connected network (depth hidden layers of width units) for tabular data."

    def build(self, hp: dict[str, Any], data: datasets.Dataset) -> nn.Module:
        return models.build_mlp(
            data.n_features, n_outputs(data), depth=hp["depth"], width=hp["width"],
            dropout=hp["dropout"], batch_norm=hp["batch_norm"],
        )


class _CNN(Objective):
    name = "cnn"
    description = (
        "Small convolutional network for image-shaped data such as digits 8x8 "
        "(depth conv blocks, width = channels); falls back to 1-D rows for tabular data."
    )

    def default_space(self, task: Task | None) -> dict[str, Dimension]:
        return {
            **super().default_space(task),
            "depth": 2,
            "width": Choice(choices=[8, 16, 32]),
        }

    def build(self, hp: dict[str, Any], data: datasets.Dataset) -> nn.Module:
        return models.build_cnn(
            data.image_shape, data.n_features, n_outputs(data), depth=hp["depth"],
            width=hp["width"], dropout=hp["dropout"], batch_norm=hp["batch_norm"],
        )


MLP = _MLP()
CNN = _CNN()


@cache
def get_objective(name: str) -> Objective:
    """The objective registered under ``name`` in the ``tuner.objectives`` group."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=GROUP))
        raise SpecError(f"unknown objective {name!r}; registered: {', '.join(known)}")
    point = next(iter(found))
    try:
        loaded = point.load()
    except Exception as exc:
        raise SpecError(
            f"objective {name!r} is registered ({point.value}) but does not load: "
            f"{type(exc).__name__}: {exc}; fix or reinstall the package that provides it"
        ) from None
    return _checked(name, point.value, loaded)


def _checked(name: str, where: str, loaded: Any) -> Objective:
    """The plugin's objective, or a SpecError telling its author what to fix."""
    if isinstance(loaded, type) and issubclass(loaded, Objective):
        loaded = loaded()
    problem = None
    if not isinstance(loaded, Objective):
        problem = f"it is a {type(loaded).__name__}, not a tuner.objective.Objective"
    elif loaded.name != name:
        problem = f"its name is {loaded.name!r}; make it match the entry point name"
    elif clash := sorted(set(loaded.params) & (set(SCALARS) | set(NESTED))):
        problem = f"its params {', '.join(clash)} are common dimensions; rename them"
    elif bad := sorted(k for k, t in loaded.params.items() if t not in PARAM_TYPES):
        problem = f"params {', '.join(bad)} must have type int, float, bool or str"
    if problem:
        raise SpecError(f"objective {name!r} ({where}) is not usable: {problem}")
    return loaded


def list_objectives() -> list[dict[str, Any]]:
    """Every registered objective, described as JSON; broken plugins are logged, skipped."""
    described = []
    for name in sorted({ep.name for ep in entry_points(group=GROUP)}):
        try:
            described.append(get_objective(name).describe())
        except SpecError as exc:
            log.error("%s", exc)
    return described


# --- metrics -------------------------------------------------------------------------


def resolved_metrics(spec: StudySpec, task: Task | None) -> list[Metric]:
    """The spec's metrics with directions, or the task's default when it lists none."""
    if spec.metrics:
        return [m.model_copy(update={"direction": m.resolved_direction}) for m in spec.metrics]
    if task is None:
        raise SpecError(
            f"dataset {spec.dataset.name!r} does not say its task: set dataset.task "
            "(classification or regression) or list metrics"
        )
    default = Metric(name=DEFAULT_METRIC[task])
    return [default.model_copy(update={"direction": default.resolved_direction})]


def _monitor(metric: Metric) -> str | None:
    """The first metric when the training loop can report it after each epoch."""
    if metric.name.startswith("val_") and metric.base not in GLOBAL_METRICS:
        return metric.name
    return None


# --- one trial -----------------------------------------------------------------------


_ON_DEVICE: dict[tuple[str, str], datasets.Dataset] = {}
_MAX_ON_DEVICE = 8


def load_data(
    spec: StudySpec, data_root: str | Path | None, device: torch.device | str
) -> datasets.Dataset:
    """The spec's dataset on ``device``: loaded once per process (``data`` caches), moved once."""
    data = datasets.load_dataset(spec.dataset, None if data_root is None else Path(data_root))
    key = (data.fingerprint, str(device))
    if key not in _ON_DEVICE:
        if len(_ON_DEVICE) >= _MAX_ON_DEVICE:
            _ON_DEVICE.pop(next(iter(_ON_DEVICE)))
        _ON_DEVICE[key] = data.to(device)
    return _ON_DEVICE[key]


EpochHook = Callable[[int, dict[str, float]], None]
ResultHook = Callable[[optuna.Trial, train.TrainResult, dict[str, Any], list[float]], None]
"""``on_result(trial, result, hp, values)``: a finished training, its objective values."""


class ModelTooLarge(ValueError):
    """A configuration whose model has more parameters than the settings allow."""


INTERRUPTED = "interrupted"
"""How the ``fail_reason`` of a trial stopped before its end (Ctrl-C, a cancel) begins:
such a trial does not count toward a budget (``engine.counted_trials``)."""

TRIAL_FAILURES = (train.Diverged, ModelTooLarge)
"""Errors that fail one trial, with its ``fail_reason``, while the study goes on (pass
them as ``catch`` to ``study.optimize``)."""


def _check_size(
    objective: Objective, hp: dict[str, Any], data: datasets.Dataset, limit: int
) -> None:
    """Build the model on the meta device (shapes, no memory) and refuse one over
    ``limit`` parameters: a width or depth from a request must not take a worker's
    memory (width 10^8 asked for 40 PB and left the worker holding 5.6 GB)."""
    n = _n_params(objective, hp, data)
    if n > limit:
        raise ModelTooLarge(
            f"this configuration builds a model of {n:,} parameters, over the limit of "
            f"{limit:,} (TUNER_MAX_MODEL_PARAMS); narrow width or depth"
        )


def _n_params(objective: Objective, hp: dict[str, Any], data: datasets.Dataset) -> int:
    with torch.device("meta"):
        return models.count_parameters(objective.build(hp, data))


def check_smallest_model(spec: StudySpec, limit: int, data: datasets.Dataset | None = None) -> None:
    """Refuse a search space whose smallest model is over ``limit`` parameters, since
    every trial would fail (``width: 16384, depth: 200`` fixed). The smallest is the low
    end of every searched value, which holds for the common dimensions (depth, width,
    batch norm); a space that searches an objective's own parameters, whose effect on
    size is unknown, is left to the per-trial check. Without ``data`` (the API does not
    generate a job's data) a one-feature, one-output stand-in makes the count a lower
    bound."""
    objective = get_objective(spec.objective)
    task = data.task if data is not None else spec.task
    space = resolve_space(spec, objective, task)
    low = _low_end(space)
    if set(low) & set(objective.params):
        return
    hp = suggest(optuna.trial.FixedTrial(low), space)
    try:
        n = _n_params(objective, hp, data or _stand_in(task))
    except Exception:  # an objective that cannot build this: its trials will say why
        return
    if n > limit:
        shown = ", ".join(f"{dim} {hp[dim]}" for dim in ("depth", "width") if dim in hp)
        raise SpecError(
            f"search_space: its smallest model{f' ({shown})' if shown else ''} has "
            f"{'' if data else 'at least '}{n:,} parameters, over the limit of "
            f"{limit:,} (TUNER_MAX_MODEL_PARAMS); narrow width or depth"
        )


def _low_end(space: dict[str, Dimension]) -> dict[str, Any]:
    """The lowest value of every searched parameter (False before True; a list of
    names: its first)."""
    low: dict[str, Any] = {}
    for name, dist in distributions(space).items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            numbers = [c for c in dist.choices if isinstance(c, int | float)]
            low[name] = min(numbers) if len(numbers) == len(dist.choices) else dist.choices[0]
        else:
            low[name] = dist.low  # type: ignore[attr-defined]
    return low


def _stand_in(task: Task | None) -> datasets.Dataset:
    """One row of one feature and, unless the task says classification, one output:
    the least any dataset gives a model to take in and put out."""
    x = torch.zeros(1, 1)
    classes = task == "classification"
    y = torch.zeros(1, dtype=torch.long if classes else torch.float32)
    return datasets.Dataset(
        task="classification" if classes else "regression",
        x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y,
        n_features=1, n_classes=2 if classes else 0, image_shape=None, fingerprint="stand-in",
    )


def fit(
    spec: StudySpec,
    hp: dict[str, Any],
    data: datasets.Dataset,
    device: torch.device | str,
    on_epoch: EpochHook | None = None,
    max_params: int | None = None,
) -> train.TrainResult:
    """Seed, build and train one configuration: the same steps for a trial and a retrain
    (``max_params``: refuse a bigger model, before it takes any memory). The result
    names the objective, so saved weights can be rebuilt into the same model."""
    metric = resolved_metrics(spec, data.task)[0]
    monitor = _monitor(metric)
    objective = get_objective(spec.objective)
    if max_params is not None:
        _check_size(objective, hp, data, max_params)
    train.seed_everything(spec.seed, device)
    model = objective.build(hp, data)
    result = train.train(
        model, data, hp, seed=spec.seed, device=device,
        monitor=monitor or "val_loss",
        direction=metric.direction if monitor else "minimize",  # type: ignore[arg-type]
        on_epoch=on_epoch,
    )
    return dataclasses.replace(result, objective=objective.name)


def evaluate(
    spec: StudySpec,
    trial: optuna.Trial,
    *,
    data_root: str | Path | None = None,
    device: torch.device | str = "cpu",
    should_stop: Callable[[], bool] | None = None,
    on_result: ResultHook | None = None,
    max_params: int | None = None,
) -> float | list[float]:
    """The Optuna objective: suggest, train with per-epoch pruning, return the metrics.

    Stores ``hp``, ``metrics``, ``curves``, ``epochs_run``, ``task``,
    ``dataset_fingerprint`` and ``torch_threads`` as trial user attributes (``fail_reason`` for
    ``TRIAL_FAILURES``: a divergence, a model over ``max_params``).
    ``on_result(trial, result, hp, values)`` sees a finished training with finite values
    while the trial still runs (workers keep the weights with it).
    """
    data = load_data(spec, data_root, device)
    hp = suggest(trial, resolve_space(spec, get_objective(spec.objective), data.task))
    write(trial, user_attrs={
        "hp": hp, "task": data.task, "dataset_fingerprint": data.fingerprint,
        "torch_threads": torch.get_num_threads(),  # CPU sums differ in the last bits by it
    })
    metrics = resolved_metrics(spec, data.task)
    monitor = _monitor(metrics[0])
    prunable = len(metrics) == 1 and monitor is not None
    curves: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    reporter = EpochReporter(trial, spec, hp["epochs"])

    def on_epoch(epoch: int, values: dict[str, float]) -> None:
        for name, curve in curves.items():
            curve.append(values[name])
        if should_stop is not None and should_stop():
            raise Cancelled(f"cancelled after epoch {epoch}")
        if prunable:
            reporter.report(epoch, values[monitor])  # type: ignore[index]

    try:
        result = fit(spec, hp, data, device, on_epoch, max_params)
    except (optuna.TrialPruned, Cancelled, KeyboardInterrupt, *TRIAL_FAILURES) as exc:
        ended: dict[str, Any] = {"curves": curves, "epochs_run": len(curves["train_loss"])}
        if isinstance(exc, TRIAL_FAILURES):
            ended["fail_reason"] = str(exc)
        if isinstance(exc, KeyboardInterrupt):  # not counted: a resumed run replaces it
            ended["fail_reason"] = f"{INTERRUPTED} (Ctrl-C)"
        reporter.flush(ended)
        raise
    ended = {
        "metrics": result.metrics, "curves": result.curves,
        "epochs_run": int(result.metrics["epochs_run"]),
    }
    missing = [m.name for m in metrics if m.name not in result.metrics]
    if missing:
        reporter.flush(ended)
        raise SpecError(f"training did not produce {', '.join(missing)}")
    values = [float(result.metrics[m.name]) for m in metrics]
    finite = all(math.isfinite(v) for v in values)
    if not finite:
        ended["fail_reason"] = f"metric is not a number: {values}"
    reporter.flush(ended)
    if finite and on_result is not None:
        on_result(trial, result, hp, values)
    return values[0] if len(values) == 1 else values
