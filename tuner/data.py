"""Datasets -> standardised tensors split into train/val/test, loaded once per process.

Bundled sets come from ``sklearn.datasets.load_*`` (no downloads), synthetic ones from
``make_classification`` / ``make_regression``, user files (csv, npz) from under the data
root only. The split is deterministic (``split_seed``) and stratified for
classification; features are standardised with train statistics only. Regression
targets are standardised too (train mean/std, kept as ``y_mean`` / ``y_std``) so one
learning-rate range suits every dataset; ``train`` reports mse/rmse/mae back in the
target's own units.

>>> from tuner.spec import DatasetSpec
>>> data = load_dataset(DatasetSpec(name="iris"))
>>> data.task, data.n_features, data.n_classes, tuple(data.x_train.shape)
('classification', 4, 3, (90, 4))
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from sklearn import datasets as skdata
from sklearn.model_selection import train_test_split

from tuner.settings import get_settings
from tuner.spec import BUNDLED_DATASETS, DatasetSpec, Scalar, Task

MAX_INFERRED_CLASSES = 50
"""An integer target with at most this many distinct values is taken as class labels."""
MAX_CLASSES = 1000
MIN_ROWS = 10
MAX_LABEL_CHARS = 200
"""The longest class name a csv target may hold."""


class DatasetError(ValueError):
    """A dataset that cannot be loaded, with a message that says what to change."""


@dataclass(frozen=True)
class Dataset:
    """Train/val/test tensors of one dataset, ready for the training loop.

    ``x_*`` are float32 ``[n, n_features]``; ``y_*`` are int64 class indices
    (classification) or float32 standardised targets (regression). ``x_mean``/``x_std``
    and ``y_mean``/``y_std`` are the train statistics used, so raw inputs can be mapped
    in and predictions mapped back.
    """

    task: Literal["classification", "regression"]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_features: int
    n_classes: int
    image_shape: tuple[int, int, int] | None
    fingerprint: str
    classes: tuple[str, ...] = ()
    x_mean: torch.Tensor | None = None
    x_std: torch.Tensor | None = None
    y_mean: float = 0.0
    y_std: float = 1.0

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with every tensor on ``device`` (moved once, not per batch)."""
        moved = {
            f.name: value.to(device)
            for f in dataclasses.fields(self)
            if isinstance(value := getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


# --- sources: name -> raw arrays ---------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    x: np.ndarray  # [n, ...] numeric
    y: np.ndarray  # [n] numeric or text
    task: Task | None  # None: infer from y
    image_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class _Option:
    default: int | float
    low: float
    high: float
    help: str

    @property
    def kind(self) -> type:
        return type(self.default)


_SEED = _Option(0, 0, 2**31 - 1, "random seed of the generator")
_SYNTHETIC_CLASSIFICATION = {
    "n_samples": _Option(1000, MIN_ROWS, 1_000_000, "rows"),
    "n_features": _Option(20, 1, 10_000, "features"),
    "n_informative": _Option(10, 1, 10_000, "features that carry signal (<= n_features)"),
    "n_classes": _Option(2, 2, 100, "classes (<= 2 ** n_informative)"),
    "class_sep": _Option(1.0, 1e-6, 100.0, "distance between classes; larger is easier"),
    "flip_y": _Option(0.01, 0.0, 0.99, "fraction of labels flipped at random"),
    "seed": _SEED,
}
_SYNTHETIC_REGRESSION = {
    "n_samples": _Option(1000, MIN_ROWS, 1_000_000, "rows"),
    "n_features": _Option(20, 1, 10_000, "features"),
    "n_informative": _Option(10, 1, 10_000, "features that carry signal (<= n_features)"),
    "noise": _Option(0.1, 0.0, 1e6, "standard deviation of the noise added to y"),
    "seed": _SEED,
}


def _options(spec: DatasetSpec, known: dict[str, _Option]) -> dict[str, Any]:
    """Check ``spec.options`` against ``known`` and fill in defaults."""
    if not known and spec.options:
        raise DatasetError(f"dataset {spec.name!r} takes no options; remove options")
    values: dict[str, Any] = {}
    for name, value in spec.options.items():
        if name not in known:
            raise DatasetError(
                f"dataset {spec.name!r} has no option {name!r}; its options: {', '.join(known)}"
            )
        values[name] = _check_option(spec.name, name, value, known[name])
    return {name: values.get(name, opt.default) for name, opt in known.items()}


def _check_option(dataset: str, name: str, value: Scalar, opt: _Option) -> int | float:
    where = f"dataset {dataset!r} option {name}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DatasetError(f"{where} must be a number, got {value!r}")
    if opt.kind is int and not float(value).is_integer():
        raise DatasetError(f"{where} must be a whole number, got {value!r}")
    if not (math.isfinite(value) and opt.low <= value <= opt.high):
        raise DatasetError(f"{where} must be between {opt.low:g} and {opt.high:g}, got {value!r}")
    return opt.kind(value)


def _check_size(n_rows: int, n_features: int, max_bytes: int, what: str) -> None:
    need = n_rows * n_features * 4
    if need > max_bytes:
        raise DatasetError(
            f"{what} would take {need / 2**20:.1f} MB as float32, over the limit of "
            f"{max_bytes / 2**20:.1f} MB (TUNER_MAX_DATASET_MB); use fewer rows or features"
        )


def _classification_options(spec: DatasetSpec, max_bytes: int) -> dict[str, Any]:
    o = _options(spec, _SYNTHETIC_CLASSIFICATION)
    _check_synthetic(o, max_bytes, spec.name)
    if o["n_classes"] > 2 ** o["n_informative"]:
        raise DatasetError(
            f"n_classes ({o['n_classes']}) needs n_informative >= "
            f"{math.ceil(math.log2(o['n_classes']))}; raise n_informative or lower n_classes"
        )
    return o


def _synthetic_classification(spec: DatasetSpec, root: Path, max_bytes: int) -> _Raw:
    o = _classification_options(spec, max_bytes)
    x, y = skdata.make_classification(
        n_samples=o["n_samples"], n_features=o["n_features"], n_informative=o["n_informative"],
        n_redundant=0, n_classes=o["n_classes"], n_clusters_per_class=1,
        class_sep=o["class_sep"], flip_y=o["flip_y"], random_state=o["seed"],
    )
    return _Raw(x, y, "classification")


def _check_synthetic(o: dict[str, Any], max_bytes: int, name: str) -> None:
    """What both generators need: informative features among the features, and a size
    within the limit."""
    if o["n_informative"] > o["n_features"]:
        raise DatasetError(
            f"n_informative ({o['n_informative']}) must not exceed n_features "
            f"({o['n_features']}); lower n_informative or raise n_features"
        )
    _check_size(o["n_samples"], o["n_features"], max_bytes, name)


def _regression_options(spec: DatasetSpec, max_bytes: int) -> dict[str, Any]:
    o = _options(spec, _SYNTHETIC_REGRESSION)
    _check_synthetic(o, max_bytes, spec.name)
    return o


def _synthetic_regression(spec: DatasetSpec, root: Path, max_bytes: int) -> _Raw:
    o = _regression_options(spec, max_bytes)
    x, y = skdata.make_regression(
        n_samples=o["n_samples"], n_features=o["n_features"], n_informative=o["n_informative"],
        noise=o["noise"], random_state=o["seed"],
    )
    return _Raw(x, y, "regression")


Source = Callable[[DatasetSpec, Path, int], _Raw]
"""(spec, data root, byte limit) -> raw arrays."""


def _bundled(
    loader: Callable[..., Any], image_shape: tuple[int, int, int] | None = None
) -> Source:
    def load(spec: DatasetSpec, root: Path, max_bytes: int) -> _Raw:
        _options(spec, {})
        x, y = loader(return_X_y=True)
        return _Raw(x, y, BUNDLED_DATASETS[spec.name], image_shape)  # type: ignore[arg-type]

    return load


# --- user files ----------------------------------------------------------------------


def resolve_path(path: str, data_root: Path) -> Path:
    """The file ``path`` names under ``data_root``, refusing anything that leaves it.

    Symlinks are resolved first, so a link pointing outside the root is refused too.
    """
    root = data_root.resolve()
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise DatasetError(f"path {path!r} must be relative to the data root, without '..'")
    try:
        target = (root / path).resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise DatasetError(
            # The root itself is not named: API clients need not learn server paths.
            f"no file {path!r} under the data root; check the path "
            "(it is relative to the data root: --data-root or TUNER_DATA_ROOT)"
        ) from None
    if not target.is_relative_to(root):
        raise DatasetError(f"path {path!r} leads outside the data root (a symlink?); refused")
    if not target.is_file():
        raise DatasetError(f"path {path!r} is not a regular file")
    return target


def _check_file_size(path: Path, size: int, max_bytes: int, what: str = "") -> None:
    if size > max_bytes:
        raise DatasetError(
            f"{path.name}{what} is {size / 2**20:.1f} MB, over the limit of "
            f"{max_bytes / 2**20:.1f} MB (TUNER_MAX_DATASET_MB); use a smaller file"
        )


def _csv(spec: DatasetSpec, root: Path, max_bytes: int) -> _Raw:
    _options(spec, {})
    path = resolve_path(spec.path or "", root)
    _check_file_size(path, path.stat().st_size, max_bytes)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DatasetError(f"{spec.path} is empty; it needs a header row and data rows")
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DatasetError(
                        f"{spec.path} line {reader.line_num} has {len(row)} fields, the header "
                        f"has {len(header)}; fix that row"
                    )
                rows.append(row)
    except UnicodeDecodeError:
        raise DatasetError(f"{spec.path} is not UTF-8 text; save it as UTF-8 csv") from None
    except csv.Error as exc:
        raise DatasetError(f"{spec.path} is not valid csv: {exc}") from None
    header = [h.strip() for h in header]
    if spec.target not in header:
        raise DatasetError(
            f"{spec.path} has no column {spec.target!r}; its columns: {', '.join(header)}"
        )
    if len(header) < 2:
        raise DatasetError(f"{spec.path} has only the target column; add feature columns")
    if not rows:
        raise DatasetError(f"{spec.path} has a header but no data rows")
    # Objects, not a fixed-width str array: that pads every cell to the longest one (a
    # 130,000-character cell made a 146 KB file take 8 GB).
    table = np.array(rows, dtype=object)
    t = header.index(spec.target)
    features = np.delete(table, t, axis=1)
    try:
        x = features.astype(np.float64)
    except ValueError:
        names = [h for i, h in enumerate(header) if i != t]
        r, c = next((r, c) for (r, c), v in np.ndenumerate(features) if not _is_number(v))
        raise DatasetError(
            f"{spec.path} row {r + 1} column {names[c]!r} is not a number "
            f"({_clip(features[r, c])!r}); feature columns must be numeric: encode or drop "
            "that column, fill empty cells"
        ) from None
    labels = [cell.strip() for cell in table[:, t]]
    if empty := labels.count(""):
        raise DatasetError(
            f"{spec.path} has {empty} empty {spec.target!r} cells; fill or drop those rows"
        )
    return _Raw(x, _targets(labels, spec.path or ""), spec.task)


def _targets(labels: list[str], path: str) -> np.ndarray:
    """A csv target column as numbers, or as class names of bounded length."""
    try:
        return np.array(labels, dtype=object).astype(np.float64)
    except ValueError:
        pass
    longest = max(labels, key=len)
    if len(longest) > MAX_LABEL_CHARS:
        raise DatasetError(
            f"{path} has a target label of {len(longest)} characters "
            f"({_clip(longest)!r}); class names may have at most {MAX_LABEL_CHARS}"
        )
    return np.array(labels, dtype=str)


def _clip(text: str, chars: int = 40) -> str:
    """A cell short enough to quote in an error message."""
    return text if len(text) <= chars else text[:chars] + "..."


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _npz(spec: DatasetSpec, root: Path, max_bytes: int) -> _Raw:
    _options(spec, {})
    path = resolve_path(spec.path or "", root)
    _check_file_size(path, path.stat().st_size, max_bytes)
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
            _check_file_size(path, unpacked, max_bytes, " (unpacked)")
            for info in zf.infolist():
                if info.filename in ("X.npy", "y.npy"):
                    _check_npy_header(zf, info, spec.path or "")
    except zipfile.BadZipFile:
        raise DatasetError(
            f"{spec.path} is not an .npz archive; save it with np.savez(path, X=..., y=...)"
        ) from None
    try:
        with np.load(path, allow_pickle=False) as archive:
            files = list(archive.files)
            arrays = {k: archive[k] for k in ("X", "y") if k in files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{spec.path} cannot be read without pickle ({exc}); store plain numeric arrays "
            "(object arrays are refused)"
        ) from None
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DatasetError(
            f"{spec.path} lacks array {' and '.join(missing)}; it holds "
            f"{', '.join(files) or 'nothing'}; save with np.savez(path, X=..., y=...)"
        )
    x, y = arrays["X"], arrays["y"]
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise DatasetError(f"{spec.path}: X has dtype {x.dtype}; it must be real numbers")
    if x.ndim not in (2, 3, 4):
        raise DatasetError(
            f"{spec.path}: X has shape {x.shape}; use [n, features], [n, h, w] or [n, c, h, w]"
        )
    image_shape = None
    if x.ndim > 2:
        image_shape = (1, *x.shape[1:]) if x.ndim == 3 else x.shape[1:]
        x = x.reshape(len(x), -1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(
            f"{spec.path}: y has shape {y.shape}, X has {len(x)} rows; y must be [n] (one "
            "label or value per row of X)"
        )
    if y.dtype.kind not in "biuf" and y.dtype.kind != "U":
        raise DatasetError(f"{spec.path}: y has dtype {y.dtype}; use numbers or strings")
    return _Raw(x.astype(np.float64), y, spec.task, image_shape)  # type: ignore[arg-type]


def _check_npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> None:
    """Refuse an array whose header claims more data than its member holds: numpy would
    allocate the claimed shape before it noticed (a 80-byte member claiming 745 GiB)."""
    name = info.filename.removesuffix(".npy")
    fmt = np.lib.format
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    try:
        with zf.open(info) as member:
            version = fmt.read_magic(member)
            if version not in readers:
                raise ValueError(f"npy format {version[0]}.{version[1]}")
            shape, _, dtype = readers[version](member)
    except ValueError as exc:
        raise DatasetError(
            f"{path}: {name} is not a numpy array ({exc}); save it with np.savez"
        ) from None
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > info.file_size:
        raise DatasetError(
            f"{path}: {name} claims shape {shape} ({claimed} bytes) but holds "
            f"{info.file_size} bytes; the file is damaged, save it again with np.savez"
        )


_SOURCES: dict[str, Source] = {
    "digits": _bundled(skdata.load_digits, (1, 8, 8)),
    "iris": _bundled(skdata.load_iris),
    "wine": _bundled(skdata.load_wine),
    "breast_cancer": _bundled(skdata.load_breast_cancer),
    "diabetes": _bundled(skdata.load_diabetes),
    "synthetic_classification": _synthetic_classification,
    "synthetic_regression": _synthetic_regression,
    "csv": _csv,
    "npz": _npz,
}
_DESCRIPTIONS = {
    "digits": "8x8 images of handwritten digits, 10 classes, 1797 rows (sklearn)",
    "iris": "iris flowers, 4 features, 3 classes, 150 rows (sklearn)",
    "wine": "wine cultivars, 13 features, 3 classes, 178 rows (sklearn)",
    "breast_cancer": "breast cancer diagnosis, 30 features, 2 classes, 569 rows (sklearn)",
    "diabetes": "diabetes progression, 10 features, regression, 442 rows (sklearn)",
    "synthetic_classification": "generated classes (sklearn make_classification)",
    "synthetic_regression": "generated linear regression (sklearn make_regression)",
    "csv": "a csv file under the data root: header row, numeric features, `target` column",
    "npz": "an .npz file under the data root with arrays X ([n, ...]) and y ([n])",
}


def dataset_catalog() -> list[dict[str, Any]]:
    """Every dataset a spec can name, for ``GET /v1/datasets`` and ``tuner datasets``."""
    options = {
        "synthetic_classification": _SYNTHETIC_CLASSIFICATION,
        "synthetic_regression": _SYNTHETIC_REGRESSION,
    }
    return [
        {
            "name": name,
            "task": BUNDLED_DATASETS.get(name, "inferred (or set task)"),
            "description": _DESCRIPTIONS[name],
            "needs_path": name not in BUNDLED_DATASETS,
            "needs_target": name == "csv",
            "options": {
                opt: {"default": o.default, "min": o.low, "max": o.high, "help": o.help}
                for opt, o in options.get(name, {}).items()
            },
        }
        for name in _SOURCES
    ]


# --- raw arrays -> Dataset -----------------------------------------------------------


def _labels(raw: _Raw, spec: DatasetSpec) -> tuple[Task, np.ndarray, tuple[str, ...]]:
    """Decide the task and encode y: class indices 0..k-1, or float targets."""
    y = raw.y
    numeric = y.dtype.kind in "biuf"
    if numeric and not np.isfinite(y).all():
        raise DatasetError(f"{spec.name}: y has missing or infinite values; fill or drop them")
    task = raw.task
    if task is None:
        whole = numeric and bool(np.all(np.mod(y, 1) == 0))
        few = len(np.unique(y)) <= MAX_INFERRED_CLASSES
        task = "classification" if (not numeric or (whole and few)) else "regression"
    if task == "regression":
        if not numeric:
            raise DatasetError(
                f"{spec.name}: the target holds text (e.g. {y[0]!r}); a regression target "
                "must be numeric, or set task: classification"
            )
        return task, y.astype(np.float64), ()
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DatasetError(f"{spec.name}: the target has one class only; it needs two or more")
    if len(classes) > MAX_CLASSES:
        raise DatasetError(
            f"{spec.name}: the target has {len(classes)} distinct values, too many classes; "
            "set task: regression if it is a quantity"
        )
    names = tuple(_label_name(c) for c in classes)
    return task, codes.astype(np.int64), names


def _label_name(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _split(
    y: np.ndarray, task: Task, spec: DatasetSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (stratified for classification) train/val/test row indices."""
    idx = np.arange(len(y))
    strat = y if task == "classification" else None
    try:
        if spec.test_fraction > 0:
            rest, test = train_test_split(
                idx, test_size=spec.test_fraction, random_state=spec.split_seed, stratify=strat
            )
        else:
            rest, test = idx, idx[:0]
        train, val = train_test_split(
            rest,
            test_size=spec.val_fraction / (1 - spec.test_fraction),
            random_state=spec.split_seed,
            stratify=None if strat is None else strat[rest],
        )
    except ValueError as exc:
        raise DatasetError(
            f"cannot split {len(y)} rows into train/val/test"
            f"{' stratified by class' if strat is not None else ''}: {exc} "
            "Add rows, merge rare classes, or change val_fraction/test_fraction."
        ) from None
    return train, val, test


def _fingerprint(x: np.ndarray, y: np.ndarray, task: Task, spec: DatasetSpec) -> str:
    h = hashlib.sha256(b"tuner-dataset-v1")
    for arr in (np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y)):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    settings = {
        "task": task,
        "val_fraction": spec.val_fraction,
        "test_fraction": spec.test_fraction,
        "split_seed": spec.split_seed,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _standardise(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def _build(spec: DatasetSpec, raw: _Raw) -> Dataset:
    x = np.asarray(raw.x, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(raw.y):
        raise DatasetError(f"{spec.name}: X must be [n, features] with one y per row")
    if len(x) < MIN_ROWS:
        raise DatasetError(f"{spec.name} has {len(x)} rows; it needs at least {MIN_ROWS}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DatasetError(f"{spec.name}: X has {bad} missing or infinite values; fill or drop")
    task, y, classes = _labels(raw, spec)
    train, val, test = _split(y, task, spec)
    x_mean, x_std = _standardise(x[train])
    y_mean, y_std = (0.0, 1.0)
    if task == "regression":
        y_mean, y_std = (float(v) for v in _standardise(y[train]))
    xs = ((x - x_mean) / x_std).astype(np.float32)
    ys = y if task == "classification" else ((y - y_mean) / y_std).astype(np.float32)

    def tensors(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(xs[rows]), torch.from_numpy(ys[rows])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = map(tensors, (train, val, test))
    return Dataset(
        task=task,
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val,
        x_test=x_test, y_test=y_test,
        n_features=x.shape[1],
        n_classes=len(classes),
        image_shape=raw.image_shape,
        fingerprint=_fingerprint(x, y, task, spec),
        classes=classes,
        x_mean=torch.from_numpy(x_mean.astype(np.float32)),
        x_std=torch.from_numpy(x_std.astype(np.float32)),
        y_mean=y_mean,
        y_std=y_std,
    )


_OPTIONS: dict[str, Callable[[DatasetSpec, int], dict[str, Any]]] = {
    "synthetic_classification": _classification_options,
    "synthetic_regression": _regression_options,
}


def validate(spec: DatasetSpec, data_root: Path | None = None) -> None:
    """Raise the ``DatasetError`` a worker would, without generating data (the API checks
    a job's dataset on submit): options and sizes; a file is loaded, as an upload is."""
    if spec.name not in BUNDLED_DATASETS:
        load_dataset(spec, data_root)
        return
    max_bytes = int(get_settings().max_dataset_mb * 2**20)
    _OPTIONS.get(spec.name, lambda s, _: _options(s, {}))(spec, max_bytes)


def load_dataset(spec: DatasetSpec, data_root: Path | None = None) -> Dataset:
    """Load, split and standardise a dataset; repeated calls in a process hit a cache.

    The cache key is the spec, the resolved data root and, for files, their size and
    modification time, so an edited file is read again. ``data_root`` defaults to
    ``TUNER_DATA_ROOT``. Raises ``DatasetError`` with advice on anything it cannot use.
    """
    settings = get_settings()
    root = (data_root if data_root is not None else settings.data_root).resolve()
    stamp: tuple[int, int] | None = None
    if spec.name not in BUNDLED_DATASETS:
        stat = resolve_path(spec.path or "", root).stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
    max_bytes = int(settings.max_dataset_mb * 2**20)
    return _load_cached(spec.model_dump_json(), str(root), stamp, max_bytes)


@lru_cache(maxsize=16)
def _load_cached(
    spec_json: str, root: str, stamp: tuple[int, int] | None, max_bytes: int
) -> Dataset:
    spec = DatasetSpec.model_validate_json(spec_json)
    return _build(spec, _SOURCES[spec.name](spec, Path(root), max_bytes))
