"""The study spec: the one contract between the CLI, the API, workers and export.

A spec names a model family (``objective``), a dataset, the metrics to optimise, a
budget and a search space. Every dimension of the space is either a range, a list of
choices, nested choices (a choice whose branches have their own parameters), or a
plain value that fixes it. Dimensions the spec omits take the objective's defaults.

>>> spec = StudySpec.model_validate({
...     "name": "digits-mlp", "objective": "mlp", "dataset": {"name": "digits"},
...     "search_space": {"lr": {"low": 1e-4, "high": 0.1, "log": True}},
... })
>>> spec.search_space["lr"].log
True
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

MAX_CHOICES = 256
"""More choices than this is a list, not a search dimension."""


def _within_float_range(value: int) -> int:
    """Refuse a whole number past float's range: every number here meets float math."""
    try:
        float(value)
    except OverflowError:
        raise ValueError("a whole number too large; numbers must lie within ±1.7e308") from None
    return value


Int = Annotated[int, AfterValidator(_within_float_range)]
"""A whole number of a spec (JSON allows any length)."""
Scalar = bool | Int | float | str
Direction = Literal["minimize", "maximize"]

BUNDLED_DATASETS = {
    "digits": "classification",
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
    "synthetic_classification": "classification",
    "synthetic_regression": "regression",
}
FILE_DATASETS = ("csv", "npz")
DatasetName = Literal[
    "digits", "iris", "wine", "breast_cancer", "diabetes",
    "synthetic_classification", "synthetic_regression", "csv", "npz",
]
Task = Literal["classification", "regression"]

OPTIMIZERS: dict[str, dict[str, type]] = {
    "sgd": {"momentum": float, "nesterov": bool},
    "adam": {"beta1": float, "beta2": float},
    "adamw": {"beta1": float, "beta2": float},
    "rmsprop": {"momentum": float, "alpha": float},
    "adagrad": {},
}
LOSSES: dict[str, dict[str, type]] = {
    "cross_entropy": {},
    "label_smoothing": {"smoothing": float},
    "focal": {"gamma": float},
    "mse": {},
    "l1": {},
    "huber": {"delta": float},
    "smooth_l1": {"beta": float},
}
CLASSIFICATION_LOSSES = ("cross_entropy", "label_smoothing", "focal")
SCHEDULES: dict[str, dict[str, type]] = {
    "none": {},
    "cosine": {},
    "step": {"step_size": int, "gamma": float},
}
NESTED: dict[str, dict[str, dict[str, type]]] = {
    "optimizer": OPTIMIZERS,
    "loss": LOSSES,
    "schedule": SCHEDULES,
}
"""Dimensions whose choices are names, each with parameters of its own."""

SCALARS: dict[str, type] = {
    "lr": float,
    "batch_size": int,
    "epochs": int,
    "weight_decay": float,
    "l1": float,
    "dropout": float,
    "batch_norm": bool,
    "patience": int,
    "grad_clip": float,
    "depth": int,
    "width": int,
}
"""Plain dimensions every objective understands, with the type of their values."""

UNIT_INTERVAL = {"dropout", "momentum", "beta1", "beta2", "alpha", "smoothing"}
NON_NEGATIVE = {"weight_decay", "l1", "grad_clip", "gamma", "delta", "beta", "patience"}
POSITIVE = {"lr", "batch_size", "epochs", "depth", "width", "step_size"}
AT_MOST = {"depth": 1_000, "width": 16_384}
"""Sanity bounds on a model's shape from a request (the parameter limit,
``Settings.max_model_params``, is checked per trial): a million layers took 24 s just to
build on the meta device, and 16,384 channels of a cnn on 8x8 digits already hold ~1 GB
of activations a batch."""

SAMPLERS = Literal["tpe", "random", "grid", "gp", "cmaes", "nsga2", "qmc"]
SINGLE_OBJECTIVE_SAMPLERS = {"cmaes"}
PRUNERS = Literal[
    "hyperband", "median", "percentile", "successive_halving", "patient", "threshold", "none"
]

CLASSIFICATION_METRICS = {
    "accuracy", "f1", "precision", "recall", "roc_auc", "average_precision", "log_loss", "loss",
}
REGRESSION_METRICS = {"mse", "rmse", "mae", "r2", "loss"}
GLOBAL_METRICS = {"n_params", "train_seconds", "epochs_run"}
DEFAULT_METRIC = {"classification": "val_accuracy", "regression": "val_rmse"}
MINIMIZED = {"loss", "log_loss", "mse", "rmse", "mae", "n_params", "train_seconds", "epochs_run"}


class SpecError(ValueError):
    """A spec that cannot be used, with a message that says what to change."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- search dimensions -------------------------------------------------------------


class Range(Strict):
    """A numeric range: ``{low: 1e-4, high: 0.1, log: true}``; ``step`` makes it discrete."""

    low: float | Int
    high: float | Int
    log: bool = False
    step: float | Int | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        if not all(math.isfinite(v) for v in (self.low, self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(
                f"low ({self.low}) must be less than high ({self.high}); "
                "to fix a value, write it plainly instead of a range"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}; raise low or drop log")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be positive, got {self.step}")
            if self.log:
                raise ValueError("a range cannot have both log and step; drop one")
        return self


class Choice(Strict):
    """A list of values to choose from: ``{choices: [16, 32, 64]}``."""

    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, v: list[Scalar]) -> list[Scalar]:
        if len({json.dumps(c) for c in v}) != len(v):
            raise ValueError("choices must not repeat a value")
        return v


class Branches(Strict):
    """Named choices with parameters of their own: ``{choices: {sgd: {momentum: ...}}}``.

    Used by optimizer, loss and schedule; a plain name fixes the choice with its
    default parameters.
    """

    choices: dict[str, dict[str, Dimension]] = Field(min_length=1, max_length=32)


def _dimension_kind(value: Any) -> str | None:
    """Pick the one shape a dimension can have, so errors speak of that shape only."""
    if isinstance(value, BaseModel):
        return type(value).__name__.lower()
    if isinstance(value, dict):
        if "choices" in value:
            return "branches" if isinstance(value["choices"], dict) else "choice"
        return "range"
    return "value" if isinstance(value, bool | int | float | str) else None


Dimension = Annotated[
    Annotated[Range, Tag("range")]
    | Annotated[Choice, Tag("choice")]
    | Annotated[Branches, Tag("branches")]
    | Annotated[Scalar, Tag("value")],
    Discriminator(
        _dimension_kind,
        custom_error_type="dimension",
        custom_error_message="a dimension is {low, high[, log, step]}, {choices: [...]}, "
        "{choices: {name: {param: ...}}} or a plain value",
    ),
]
"""A range, a list of choices, nested choices, or a plain value that fixes it."""


# --- the rest of the spec ----------------------------------------------------------


class DatasetSpec(Strict):
    """Where the data comes from. ``path`` is relative to the server's data root."""

    name: DatasetName
    path: str | None = Field(default=None, max_length=255)
    target: str | None = Field(default=None, max_length=128)
    task: Task | None = None
    options: dict[str, Scalar] = Field(default_factory=dict, max_length=32)
    val_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, ge=0, lt=0.5)
    split_seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _check_source(self) -> Self:
        if self.name in FILE_DATASETS:
            if not self.path:
                raise ValueError(
                    f"dataset {self.name!r} needs a path: {{name: {self.name}, path: "
                    "<file under the data root>}"
                )
            check_relative_path(self.path)
            if self.name == "csv" and not self.target:
                raise ValueError("a csv dataset needs target: the name of the label column")
        elif self.path is not None:
            raise ValueError(f"dataset {self.name!r} is built in; remove path")
        if self.name in BUNDLED_DATASETS and self.task and self.task != BUNDLED_DATASETS[self.name]:
            raise ValueError(
                f"dataset {self.name!r} is a {BUNDLED_DATASETS[self.name]} task; remove task"
            )
        return self

    @property
    def known_task(self) -> Task | None:
        """The task, when it is known without reading the data."""
        return self.task or BUNDLED_DATASETS.get(self.name)  # type: ignore[return-value]


_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-/]+$")


def check_relative_path(path: str) -> str:
    """Refuse paths that could leave the data root; symlinks are checked on resolve."""
    parts = Path(path).parts
    if (
        not _SAFE_PATH.match(path)
        or path.startswith("/")
        or any(p in ("..", ".") for p in parts)
        or not parts
    ):
        raise ValueError(
            f"path {path!r} must be relative to the data root, made of letters, digits, "
            "'_', '-', '.', '/', without '..'"
        )
    return path


def check_webhook_url(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials, fragment or whitespace.

    Where it may point (public addresses only, by default) is the server's rule, checked
    at submit and again at each delivery: ``tuner.webhooks``.
    """
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("remove spaces and control characters from the URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "use an absolute http:// or https:// URL with a host, "
            "e.g. https://hooks.example.com/tuner"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "remove the user and password from the URL; the service signs each request "
            "instead (X-Tuner-Signature): check that on the receiving side"
        )
    if parts.fragment:
        raise ValueError("remove the #fragment from the URL")
    if port == 0:
        raise ValueError("port 0 is not a port; give a real one or none")
    return url


class Metric(Strict):
    """A metric to optimise. ``val_`` and ``test_`` prefixes pick the split."""

    name: str = Field(max_length=64)
    direction: Direction | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        base = name.removeprefix("val_").removeprefix("test_")
        known = CLASSIFICATION_METRICS | REGRESSION_METRICS | GLOBAL_METRICS
        if base not in known or (base in GLOBAL_METRICS and base != name):
            names = sorted({f"val_{m}" for m in known - GLOBAL_METRICS} | GLOBAL_METRICS)
            raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(names)}")
        return name

    @property
    def base(self) -> str:
        return self.name.removeprefix("val_").removeprefix("test_")

    @property
    def resolved_direction(self) -> Direction:
        if self.direction:
            return self.direction
        return "minimize" if self.base in MINIMIZED else "maximize"


class Budget(Strict):
    # Strict whole numbers: true or "5" are mistakes, not 1 and 5 trials.
    n_trials: int = Field(default=20, ge=1, le=100_000, strict=True)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600, allow_inf_nan=False)
    max_epochs: int = Field(default=20, ge=1, le=10_000, strict=True)


class SamplerSpec(Strict):
    name: SAMPLERS = "tpe"
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    n_startup_trials: int | None = Field(default=None, ge=0, le=10_000)


class PrunerSpec(Strict):
    name: PRUNERS = "successive_halving"
    min_resource: int | None = Field(default=None, ge=1)
    """Epochs before the first cut; None: 1 for hyperband, for successive halving
    ``max_epochs // reduction_factor**2`` (``pruning.asha_min_resource``)."""
    reduction_factor: int = Field(default=3, ge=2, le=100)
    bootstrap_count: int | None = Field(default=None, ge=0)
    """Successive halving: trials a rung must hold before it promotes any (Optuna's
    ``bootstrap_count``); None or 0 lets the first trials run on. Cutting the first two
    at each rung made no difference to the time to target (benchmarks/time_to_target.py,
    28 paired runs: sooner in 12, median 6.0 s against 7.0 s), and a study's first
    result came later."""
    n_startup_trials: int = Field(default=5, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    percentile: float = Field(default=50.0, gt=0, lt=100)
    patience: int = Field(default=3, ge=0)
    lower: float | None = Field(default=None, allow_inf_nan=False)
    upper: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _threshold_bounds(self) -> Self:
        if self.name == "threshold" and self.lower is None and self.upper is None:
            raise ValueError("the threshold pruner needs lower or upper")
        if self.lower is not None and self.upper is not None and self.lower >= self.upper:
            raise ValueError(
                f"the threshold pruner's lower ({self.lower:g}) must be below its upper "
                f"({self.upper:g}): trials outside [lower, upper] are pruned"
            )
        return self


class Provenance(Strict):
    """Where an exported spec came from; ignored when the spec is run again."""

    study: str = Field(max_length=200)
    trial_number: int
    trial_id: int | None = None
    values: list[float]
    metrics: dict[str, float] = Field(default_factory=dict, max_length=64)
    dataset_fingerprint: str | None = Field(default=None, max_length=128)
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    hp: dict[str, Any] | None = Field(
        default=None, max_length=64, description="The trial's hyperparameters, as trained."
    )
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    versions: dict[str, str] = Field(default_factory=dict, max_length=16)
    exported_at: str | None = Field(default=None, max_length=64)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"


class StudySpec(Strict):
    """Everything needed to run, resume or reproduce a tuning study."""

    name: str = Field(pattern=_NAME, description="Letters, digits, '_', '-', '.'; 1-100 chars.")
    objective: str = Field(default="mlp", max_length=64)
    dataset: DatasetSpec
    metrics: list[Metric] = Field(default_factory=list, max_length=4)
    budget: Budget = Field(default_factory=Budget)
    parallelism: PositiveInt = Field(
        default=4, le=64, description="Trials of this job that may run at once, across workers."
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed for training runs.")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec | None = None
    search_space: dict[str, Dimension] = Field(
        default_factory=dict, max_length=64
    )
    warm_start_from: str | None = Field(default=None, max_length=64)
    webhook_url: str | None = Field(
        default=None, max_length=2048,
        description="The service POSTs a signed JSON notice here when the job succeeds, "
        "fails or is cancelled (http or https; see docs/webhooks.md).",
    )
    provenance: Provenance | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_metric(cls, data: Any) -> Any:
        """Name the metric when the dataset's task says it, so a stored or exported spec
        is explicit: val_accuracy for classification, val_rmse for regression."""
        if not isinstance(data, dict) or data.get("metrics"):
            return data
        dataset = data.get("dataset")
        task = None
        if isinstance(dataset, dict):
            task = dataset.get("task") or BUNDLED_DATASETS.get(dataset.get("name"))  # type: ignore[arg-type]
        elif isinstance(dataset, DatasetSpec):
            task = dataset.known_task
        if task in DEFAULT_METRIC:
            return {**data, "metrics": [{"name": DEFAULT_METRIC[task]}]}
        return data

    @field_validator("objective")
    @classmethod
    def _registered(cls, name: str) -> str:
        known = objective_names()
        if name not in known:
            raise ValueError(f"unknown objective {name!r}; registered: {', '.join(known)}")
        return name

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, url: str | None) -> str | None:
        return None if url is None else check_webhook_url(url)

    @model_validator(mode="after")
    def _check(self) -> Self:
        for dim, value in self.search_space.items():
            try:
                _check_dimension(dim, value)
            except ValueError as exc:
                raise ValueError(f"search_space.{dim}: {exc}") from None
        task = self.dataset.known_task
        for metric in self.metrics:
            if task and metric.base not in GLOBAL_METRICS and metric.base not in _task_metrics(
                task
            ):
                raise ValueError(
                    f"metric {metric.name!r} does not apply to a {task} dataset; "
                    f"use one of: {', '.join(sorted('val_' + m for m in _task_metrics(task)))}"
                )
        if len({m.name for m in self.metrics}) != len(self.metrics):
            raise ValueError("metrics must not repeat a name")
        if task:
            _check_losses(self.search_space.get("loss"), task)
        multi = len(self.metrics) > 1
        if multi and self.sampler.name in SINGLE_OBJECTIVE_SAMPLERS:
            raise ValueError(
                f"sampler {self.sampler.name!r} cannot optimise {len(self.metrics)} metrics; "
                "use nsga2, tpe, random, gp or qmc, or keep one metric"
            )
        if multi and self.pruner and self.pruner.name != "none":
            raise ValueError(
                "Optuna cannot prune multi-objective studies; set pruner to none or keep one metric"
            )
        epochs = self.search_space.get("epochs")
        top = epochs.high if isinstance(epochs, Range) else epochs
        if isinstance(epochs, Choice):
            top = max(epochs.choices)  # type: ignore[type-var]
        if isinstance(top, int | float) and top > self.budget.max_epochs:
            raise ValueError(
                f"epochs reaches {top} but budget.max_epochs is {self.budget.max_epochs}; "
                "raise max_epochs or lower epochs"
            )
        if self.sampler.name == "grid":
            for dim, value in self.search_space.items():
                if isinstance(value, Range) and value.step is None:
                    raise ValueError(
                        f"the grid sampler needs discrete dimensions: give {dim} a step "
                        "or a list of choices"
                    )
        return self

    @property
    def task(self) -> Task | None:
        return self.dataset.known_task

    @property
    def directions(self) -> list[Direction]:
        return [m.resolved_direction for m in self.metrics]

    @property
    def resolved_pruner(self) -> PrunerSpec:
        """Successive halving (asynchronous, ASHA) by default; none for multi-objective.

        Not Hyperband: its brackets each keep their own trials from TPE, so TPE stays
        random for ten trials per bracket, which a short budget never gets past
        (benchmarks/time_to_target.py measures both).
        """
        if self.pruner is not None:
            return self.pruner
        return PrunerSpec(name="none" if len(self.metrics) > 1 else "successive_halving")


def _task_metrics(task: Task) -> set[str]:
    return CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS


def _check_losses(loss: Any, task: Task) -> None:
    names = [loss] if isinstance(loss, str) else list(loss.choices) if loss else []
    wrong = [n for n in names if (n in CLASSIFICATION_LOSSES) != (task == "classification")]
    if wrong:
        fitting = [n for n in LOSSES if (n in CLASSIFICATION_LOSSES) == (task == "classification")]
        raise ValueError(
            f"loss {', '.join(wrong)} does not fit a {task} dataset; use {', '.join(fitting)}"
        )


def _check_dimension(dim: str, value: Any) -> None:
    if dim in NESTED:
        _check_nested(dim, value)
    elif dim in SCALARS:
        _check_scalar(dim, value, SCALARS[dim])
    elif isinstance(value, Branches):
        raise ValueError(f"{dim}: only {', '.join(NESTED)} take nested choices")
    # Other names are objective parameters, checked against the objective at run time.


def _check_nested(dim: str, value: Any) -> None:
    known = NESTED[dim]
    if isinstance(value, str):
        branches: dict[str, dict[str, Any]] = {value: {}}
    elif isinstance(value, Branches):
        branches = value.choices
    elif isinstance(value, Choice) and all(isinstance(c, str) for c in value.choices):
        branches = {str(c): {} for c in value.choices}
    else:
        raise ValueError(
            f"{dim} takes a name ({', '.join(known)}) or {{choices: {{name: {{param: ...}}}}}}"
        )
    for name, params in branches.items():
        if name not in known:
            raise ValueError(f"unknown {dim} {name!r}; known: {', '.join(known)}")
        for param, sub in params.items():
            if param not in known[name]:
                allowed = ", ".join(known[name]) or "none"
                raise ValueError(
                    f"{dim} {name!r} has no parameter {param!r}; its parameters: {allowed}"
                )
            _check_scalar(f"{dim}.{name}.{param}", sub, known[name][param])


def _check_scalar(path: str, value: Any, kind: type) -> None:
    leaf = path.rsplit(".", 1)[-1]
    values: list[Any]
    if isinstance(value, Branches):
        raise ValueError(f"{path} takes a range, a list of choices or a plain value")
    if isinstance(value, Range):
        if kind is bool or kind is str:
            raise ValueError(f"{path} is a {kind.__name__}: give choices, not a range")
        ends = (value.low, value.high, *(() if value.step is None else (value.step,)))
        if kind is int and not all(float(v).is_integer() for v in ends):
            raise ValueError(f"{path} is a whole number: low, high and step must be integers")
        values = [value.low, value.high]
    elif isinstance(value, Choice):
        values = list(value.choices)
    else:
        values = [value]
    for v in values:
        if kind is bool and not isinstance(v, bool):
            raise ValueError(f"{path} must be true or false, got {v!r}")
        if kind in (int, float) and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(f"{path} must be a number, got {v!r}")
        if kind is int and not float(v).is_integer():
            raise ValueError(f"{path} must be a whole number, got {v!r}")
        if kind in (int, float):
            _check_domain(path, leaf, float(v))


def _check_domain(path: str, leaf: str, v: float) -> None:
    if not math.isfinite(v):
        raise ValueError(f"{path} must be finite, got {v}")
    if leaf in UNIT_INTERVAL and not 0 <= v < 1:
        raise ValueError(f"{path} must be in [0, 1), got {v:g}")
    if leaf in NON_NEGATIVE and v < 0:
        raise ValueError(f"{path} must not be negative, got {v:g}")
    if leaf in POSITIVE and v <= 0:
        raise ValueError(f"{path} must be positive, got {v:g}")
    if leaf in AT_MOST and v > AT_MOST[leaf]:
        raise ValueError(f"{path} must be at most {AT_MOST[leaf]:,}, got {v:g}")


@cache
def objective_names() -> tuple[str, ...]:
    """Objectives registered under the ``tuner.objectives`` entry point group."""
    return tuple(sorted(ep.name for ep in entry_points(group="tuner.objectives")))


# --- loading -----------------------------------------------------------------------


_ADAPTER = TypeAdapter(StudySpec)


def parse_spec(data: Any) -> StudySpec:
    """Validate a mapping into a spec, turning pydantic's report into a SpecError."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise SpecError(format_errors(exc)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec from a YAML or JSON file."""
    return parse_spec(read_spec_data(path))


def read_spec_data(path: str | Path) -> dict[str, Any]:
    """A spec file's mapping, unvalidated (JSON is YAML, so one parser reads both).

    The client sends it as it is: the server knows which objectives it has installed.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path} must hold a mapping with name, objective, dataset, ...")
    return data


def dump_spec(spec: StudySpec, fmt: Literal["yaml", "json"] = "yaml") -> str:
    """Write a spec back in the same shape it is read, leaving out what is unset."""
    data = spec.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.safe_dump(data, sort_keys=False)


def format_errors(exc: ValidationError) -> str:
    """One line per problem: where it is and what to change."""
    lines = []
    errors = exc.errors(include_url=False)
    explained = {_where(e) for e in errors if e["type"] == "value_error"}
    for err in errors:
        where = _where(err)
        if where in explained and err["type"] != "value_error":
            continue  # a union's other members ("not a boolean") beside the real reason
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it (check the spelling)"
        if err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] == _NAME:
            msg = "use 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"
        lines.append(f"{where}: {msg}" if where else msg)  # a whole-spec check names its own
    return "\n".join(dict.fromkeys(lines))


def _where(err: Any) -> str:
    return ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))


def _is_union_tag(part: Any) -> bool:
    return part in {"range", "choice", "branches", "value", "bool", "int", "float", "str"} or (
        str(part).startswith("function-after[")
    )

