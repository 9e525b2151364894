"""Trained weights as safetensors: written by ``tuner train``, kept for a job's top trials.

Safetensors holds tensors only, so loading weights never runs code. Trials upload their
weights to Optuna's artifact store as they finish; ``keep_top_k`` then drops the weights
of trials that fell out of the top ``k``, so a long job does not keep every model.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.study import StudyDirection
from safetensors.torch import save_file
from sqlalchemy import Engine, Select, and_, bindparam, func, or_, select

from tuner.engine import ranked_trials
from tuner.jobs.optuna_tables import trial_values, trials
from tuner.train import TrainResult

SUFFIX = ".safetensors"


def save_model(result: TrainResult, path: str | Path, hp: dict[str, Any]) -> Path:
    """Write the trained weights as safetensors, the hp and metrics as metadata."""
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
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


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
