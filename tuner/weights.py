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
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from safetensors.torch import save_file

from tuner.engine import ranked_trials
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


def upload_weights(
    trial: optuna.Trial, result: TrainResult, hp: dict[str, Any], store: FileSystemArtifactStore
) -> None:
    """Attach the trial's weights to it (Optuna accepts artifacts only while it runs)."""
    with tempfile.TemporaryDirectory() as folder:
        path = save_model(result, Path(folder) / f"trial-{trial.number}{SUFFIX}", hp)
        upload_artifact(study_or_trial=trial, file_path=str(path), artifact_store=store)


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
        for meta in get_all_artifact_meta(trial, storage=study._storage):
            if meta.filename.endswith(SUFFIX):
                with contextlib.suppress(ArtifactNotFound):
                    store.remove(meta.artifact_id)
