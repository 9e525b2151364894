"""Trained weights as safetensors: written by ``tuner train``, kept for a job's top trials.

Safetensors holds tensors only, so loading weights never runs code. Beside the
``state_dict`` a file's metadata holds what prediction needs (the objective and hp that
rebuild the model, the input standardisation, the target scale, the class names), so
``load_model`` turns a file alone into a predictor on raw data (docs/weights.md).
Trials upload their weights to Optuna's artifact store as they finish; ``keep_top_k``
then drops the weights of trials that fell out of the top ``k``, so a long job does not
keep every model.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np
import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.study import StudyDirection
from safetensors import safe_open
from safetensors.torch import save_file
from sqlalchemy import Engine, Select, and_, bindparam, func, or_, select
from torch import nn

from tuner.data import Dataset
from tuner.engine import ranked_trials
from tuner.jobs.optuna_tables import trial_values, trials
from tuner.metrics import predict
from tuner.objective import get_objective
from tuner.spec import Task
from tuner.train import Preprocessing, TrainResult

SUFFIX = ".safetensors"
PREDICTION_KEYS = (
    "objective", "task", "n_features", "n_outputs", "classes", "image_shape",
    "x_mean", "x_std", "y_mean", "y_std",
)
"""Metadata keys that ``load_model`` needs beside ``hp``; files from before they were
written lack them."""


def save_model(result: TrainResult, path: str | Path, hp: dict[str, Any]) -> Path:
    """Write the trained weights as safetensors; the hp, the metrics and what prediction
    needs (``PREDICTION_KEYS``) as metadata, so ``load_model`` can use the file alone.

    The preprocessing goes in the metadata, not as extra tensors: the file's tensors stay
    exactly the ``state_dict``, which ``model.load_state_dict`` takes as it is.
    """
    if result.objective is None:
        raise ValueError(
            "the result does not name the objective that built its model, so the weights "
            "could not be rebuilt; train with tuner.objective.fit (or set result.objective)"
        )
    p = result.preprocessing
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in result.model.state_dict().items()
    }
    metadata = {
        "hp": json.dumps(hp),
        "metrics": json.dumps({k: v for k, v in result.metrics.items() if math.isfinite(v)}),
        "torch": torch.__version__,
        "objective": result.objective,
        "task": p.task,
        "n_features": json.dumps(p.n_features),
        "n_outputs": json.dumps(p.n_outputs),
        "classes": json.dumps(p.classes),
        "image_shape": json.dumps(p.image_shape),
        # float32 values as JSON numbers read back exactly.
        "x_mean": json.dumps(p.x_mean.tolist()),
        "x_std": json.dumps(p.x_std.tolist()),
        "y_mean": json.dumps(p.y_mean),
        "y_std": json.dumps(p.y_std),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


@dataclass(frozen=True)
class Predictor:
    """A saved model ready for raw data: inputs are standardised as in training, outputs
    mapped back to class labels or to the target's units.

    ``model`` is in eval mode on the CPU; ``hp`` and ``metrics`` are the file's record of
    how it was trained and what it reached.
    """

    model: nn.Module
    preprocessing: Preprocessing
    objective: str
    hp: dict[str, Any]
    metrics: dict[str, float]

    @cached_property
    def classes(self) -> np.ndarray:
        """The class labels, in the order of ``predict_proba``'s columns: numbers when the
        data's labels were (``tuner.data`` keeps them as text), else strings."""
        names = self.preprocessing.classes
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                return np.array([kind(name) for name in names])
        return np.array(names)

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class labels (classification) or values in the target's units (regression)
        for raw rows ``x``: ``[n, n_features]``, or ``[n, *image_shape]`` images."""
        p = self.preprocessing
        outputs = self._outputs(x)
        if p.task == "classification":
            return self.classes[outputs.argmax(dim=1).numpy()]
        return (outputs[:, 0].double() * p.y_std + p.y_mean).numpy()

    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Class probabilities ``[n, n_classes]``, columns in the order of ``classes``."""
        if self.preprocessing.task != "classification":
            raise ValueError("predict_proba needs a classifier; this model is a regression: "
                             "use predict")
        return torch.softmax(self._outputs(x).double(), dim=1).numpy()

    def _outputs(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The model's outputs for raw ``x``, standardised in float64 as ``tuner.data``
        did before its float32 cast."""
        p = self.preprocessing
        raw = (
            x.detach().to("cpu", torch.float64) if isinstance(x, torch.Tensor)
            else torch.from_numpy(np.asarray(x, dtype=np.float64))
        )
        shapes = [(p.n_features,)]
        if p.image_shape is not None:
            shapes.append(p.image_shape)
            if p.image_shape[0] == 1:
                shapes.append(p.image_shape[1:])
        if raw.ndim < 2 or tuple(raw.shape[1:]) not in shapes:
            accepted = " or ".join(str(["n", *shape]) for shape in shapes).replace("'", "")
            raise ValueError(
                f"x has shape {tuple(raw.shape)}; this model takes {accepted} "
                f"({p.n_features} features a row; one row: x.reshape(1, -1))"
            )
        flat = raw.reshape(len(raw), -1)
        return predict(self.model, ((flat - p.x_mean.double()) / p.x_std.double()).float())


def load_model(path: str | Path) -> Predictor:
    """The model saved at ``path`` by ``save_model``, rebuilt by its objective (which must
    be installed here) and ready to predict on raw data.

    The file is read as tensors and JSON (safetensors): loading it runs no code.
    """
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        missing = [key for key in ("hp", *PREDICTION_KEYS) if key not in meta]
        if missing:
            raise ValueError(
                f"{path} lacks what prediction needs ({', '.join(missing)}): it was written "
                "by an older tuner or another tool; write it again with this version "
                f"(tuner export STUDY -o best.yaml; tuner train best.yaml -o {Path(path).name})"
            )
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    shape = json.loads(meta["image_shape"])
    p = Preprocessing(
        task=cast(Task, meta["task"]),
        n_features=json.loads(meta["n_features"]),
        image_shape=None if shape is None else tuple(shape),
        classes=tuple(json.loads(meta["classes"])),
        x_mean=torch.tensor(json.loads(meta["x_mean"]), dtype=torch.float32),
        x_std=torch.tensor(json.loads(meta["x_std"]), dtype=torch.float32),
        y_mean=json.loads(meta["y_mean"]),
        y_std=json.loads(meta["y_std"]),
    )
    hp = json.loads(meta["hp"])
    model = get_objective(meta["objective"]).build(hp, _shell(p))
    model.load_state_dict(tensors)
    model.eval()
    return Predictor(model, p, meta["objective"], hp, json.loads(meta["metrics"]))


def _shell(p: Preprocessing) -> Dataset:
    """A dataset of ``p``'s shape and statistics without rows: what ``Objective.build``
    reads to size the model, as it read the training data."""
    x = torch.empty(0, p.n_features)
    y = torch.empty(0, dtype=torch.int64 if p.task == "classification" else torch.float32)
    return Dataset(
        task=p.task, x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y,
        n_features=p.n_features, n_classes=len(p.classes), image_shape=p.image_shape,
        fingerprint="", classes=p.classes, x_mean=p.x_mean, x_std=p.x_std,
        y_mean=p.y_mean, y_std=p.y_std,
    )


@cache
def _scratch() -> tempfile.TemporaryDirectory[str]:
    """This process's folder for the file ``upload_artifact`` copies (removed at exit).

    One for the process, not one per trial: creating and removing a folder waits on the
    file system's journal, tens of milliseconds on a busy disk, for every trial.
    """
    return tempfile.TemporaryDirectory(prefix="tuner-weights-")


def upload_weights(
    trial: optuna.Trial, result: TrainResult, hp: dict[str, Any], store: FileSystemArtifactStore
) -> None:
    """Attach the trial's weights to it (Optuna accepts artifacts only while it runs)."""
    path = Path(_scratch().name) / f"trial-{trial.number}{SUFFIX}"
    try:
        save_model(result, path, hp)
        upload_artifact(study_or_trial=trial, file_path=str(path), artifact_store=store)
    finally:
        path.unlink(missing_ok=True)


def in_top_k(engine: Engine, study: optuna.Study, value: float, number: int, k: int) -> bool:
    """Whether trial ``number`` would rank among the best ``k`` if it completed now with
    ``value`` (the order of ``ranked_trials``): one count in SQL, so the check does not
    read the whole study after every trial.

    Weights of a trial that would not are not worth uploading: ``keep_top_k`` would drop
    them at once, and with one metric the ``k`` completed trials ranked above it stay
    above it. With several metrics the Pareto front can change under it: always True.
    """
    if len(study.directions) > 1:
        return True
    ahead = _ahead(study.direction == StudyDirection.MINIMIZE)
    with engine.connect() as conn:
        count = conn.scalar(ahead, {"study_id": study._study_id, "value": value, "number": number})
    return (count or 0) < k


@cache
def _ahead(minimize: bool) -> Select[tuple[int]]:
    """The count of a study's completed trials ranked above ``:value`` from trial
    ``:number``, built once per direction (building costs more than running it)."""
    t, v = trials.c, trial_values.c
    value = bindparam("value")
    better = v.value < value if minimize else v.value > value
    return (
        select(func.count())
        .select_from(trials.join(trial_values, t.trial_id == v.trial_id))
        .where(
            t.study_id == bindparam("study_id"), t.state == "COMPLETE", v.objective == 0,
            or_(better, and_(v.value == value, t.number < bindparam("number"))),
        )
    )


def keep_top_k(
    study: optuna.Study, store: FileSystemArtifactStore, k: int, finished_number: int
) -> None:
    """After trial ``finished_number`` ends, drop the weights that left the top ``k``.

    Only two trials can have left it: the one that just finished (if it is not in the
    top ``k``) and the one it pushed out, so each call removes at most two files.
    """
    ranked = ranked_trials(study)
    top = {t.number for t in ranked[:k]}
    for trial in [*ranked[k : k + 1], *(t for t in ranked if t.number == finished_number)]:
        if trial.number in top:
            continue
        metas = get_all_artifact_meta(trial, storage=study._storage)
        remove_artifacts([m.artifact_id for m in metas if m.filename.endswith(SUFFIX)], store)


def artifact_ids(study: optuna.Study) -> list[str]:
    """Every file the study's trials keep in the artifact store (their weights): read
    before a job is deleted, since the study, and the trials' record of them, goes too.
    Only trials that list one are read again (a few: the top k)."""
    keeping = [
        t for t in study.get_trials(deepcopy=False)
        if any(key.startswith(ARTIFACTS_ATTR_PREFIX) for key in t.system_attrs)
    ]
    storage = study._storage
    return [m.artifact_id for t in keeping for m in get_all_artifact_meta(t, storage=storage)]


def remove_artifacts(ids: list[str], store: ArtifactStore) -> None:
    for artifact_id in ids:
        with contextlib.suppress(ArtifactNotFound):
            store.remove(artifact_id)
