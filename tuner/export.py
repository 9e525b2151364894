"""Best trial -> a runnable spec with every searched value fixed; retrain it; save weights.

The exported spec is an ordinary ``StudySpec``: its search space holds plain values
only, so running or retraining it trains exactly the trial's configuration, with the
same seed, and reaches the same validation metric on CPU. ``provenance`` says where
it came from (study, trial, metrics, dataset fingerprint, package versions).
"""

from __future__ import annotations

import json
import math
import platform
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel

from tuner import space as spaces
from tuner.engine import load_spec_of, load_study, pick_device, ranked_trials
from tuner.errors import UsageError
from tuner.objective import fit, get_objective, load_data, resolved_metrics
from tuner.spec import SpecError, StudySpec, parse_spec
from tuner.train import TrainResult

__all__ = [
    "config_changed", "data_changed", "export_best", "export_trial", "fixed_hp", "pick_trial",
    "retrain", "versions",
]


def versions() -> dict[str, str]:
    """Versions of what decides a trial's result, recorded in provenance."""
    found = {"python": platform.python_version()}
    for package in ("tuner", "torch", "optuna", "numpy", "scikit-learn"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


def pick_trial(study: optuna.Study, trial_number: int | None = None) -> FrozenTrial:
    """Trial ``trial_number``, or the best: for several metrics, the Pareto trial best
    on the first metric."""
    if trial_number is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == trial_number]
        if not trials:
            raise UsageError(
                f"study {study.study_name!r} has no trial {trial_number}; "
                f"trials are numbered 0..{len(study.trials) - 1}"
            )
        if trials[0].state != TrialState.COMPLETE:
            raise UsageError(
                f"trial {trial_number} is {trials[0].state.name.lower()}, not complete; "
                "export a completed trial"
            )
        return trials[0]
    ranked = ranked_trials(study)
    if not ranked:
        raise UsageError(
            f"study {study.study_name!r} has no completed trial yet; run more trials"
        )
    return ranked[0]


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def export_best(
    storage: optuna.storages.BaseStorage | str, study_name: str, *, trial_number: int | None = None
) -> StudySpec:
    """The study's spec with the chosen trial's values fixed, ready to run or retrain."""
    study = load_study(storage, study_name)
    spec = load_spec_of(study)  # a study tuner did not create says so before any trial
    return export_trial(study, pick_trial(study, trial_number), spec)


def export_trial(
    study: optuna.Study, trial: FrozenTrial, spec: StudySpec | None = None
) -> StudySpec:
    """``export_best`` for a study and trial already in hand (the API picks the trial
    first, to answer a missing one in its own words); ``spec``: the study's, if read."""
    spec = spec or load_spec_of(study)
    space = spaces.resolve_space(spec, get_objective(spec.objective), trial.user_attrs.get("task"))
    fixed = spaces.fix(space, trial.params)
    metrics = {
        k: float(v) for k, v in trial.user_attrs.get("metrics", {}).items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
    data = spec.model_dump(mode="json", exclude_none=True)
    data.update(
        metrics=[
            m.model_dump(mode="json")
            for m in resolved_metrics(spec, trial.user_attrs.get("task", spec.task))
        ],
        search_space={dim: _dump(value) for dim, value in fixed.items()},
        budget={**data["budget"], "n_trials": 1},
        pruner={"name": "none"},
        provenance={
            "study": study.study_name,
            "trial_number": trial.number,
            "trial_id": trial._trial_id,
            "values": list(trial.values),
            "metrics": metrics,
            "dataset_fingerprint": trial.user_attrs.get("dataset_fingerprint"),
            "torch_threads": trial.user_attrs.get("torch_threads"),
            "hp": trial.user_attrs.get("hp"),
            "seed": spec.seed,
            "versions": versions(),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return parse_spec({k: v for k, v in data.items() if v is not None})


def fixed_hp(spec: StudySpec, task: str | None = None) -> dict[str, Any]:
    """The hyperparameters of a spec whose every dimension is a plain value."""
    space = spaces.resolve_space(spec, get_objective(spec.objective), task)  # type: ignore[arg-type]
    try:
        return spaces.suggest(optuna.trial.FixedTrial({}), space)
    except ValueError as exc:
        if isinstance(exc, SpecError):
            raise
        searched = ", ".join(spaces.distributions(space))
        raise SpecError(
            f"this spec still searches {searched}; train needs every value fixed: "
            "export a trial first (tuner export STUDY -o best.yaml) or write plain values"
        ) from None


def retrain(
    spec: StudySpec, *, data_root: str | Path | None = None, device: str = "auto"
) -> TrainResult:
    """Train the spec's one configuration with its seed, as the trial did: on the CPU
    with the trial's torch threads too, since sums split across another number of
    threads round differently (a server worker runs with a share of the cores)."""
    target = pick_device(device)
    threads = spec.provenance.torch_threads if spec.provenance else None
    if threads and target.type == "cpu":
        torch.set_num_threads(threads)
    data = load_data(spec, data_root, target)
    return fit(spec, fixed_hp(spec, data.task), data, target)


def config_changed(spec: StudySpec, hp: dict[str, Any]) -> str | None:
    """Why a retrain is not its trial's configuration: values edited in the exported
    spec since, compared with the hyperparameters and seed the trial trained with."""
    was = spec.provenance
    if was is None or was.hp is None:
        return None
    now = json.loads(json.dumps(hp))  # as the trial's were stored: JSON
    changed = [
        f"{name} {_short(was.hp.get(name))} -> {_short(now.get(name))}"
        for name in sorted(set(was.hp) | set(now))
        if was.hp.get(name) != now.get(name)
    ]
    if was.seed is not None and was.seed != spec.seed:
        changed.append(f"seed {was.seed} -> {spec.seed}")
    if not changed:
        return None
    return (
        f"this is not trial {was.trial_number}'s configuration ({'; '.join(changed)}): "
        "its metrics are shown for reference, not as a reproduction"
    )


def _short(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("name")
        rest = ", ".join(f"{k}={_short(v)}" for k, v in value.items() if k != "name")
        return f"{name}({rest})" if rest else str(name)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def data_changed(spec: StudySpec, data_root: str | Path | None = None) -> str | None:
    """Why a retrain may not match its trial: the data differs from what the trial saw
    (an edited file, another data root), by the fingerprint the export recorded."""
    recorded = spec.provenance.dataset_fingerprint if spec.provenance else None
    if recorded is None:
        return None
    now = load_data(spec, data_root, "cpu").fingerprint
    if now == recorded:
        return None
    return (
        f"the dataset differs from the one trial {spec.provenance.trial_number} "  # type: ignore[union-attr]
        f"trained on (fingerprint {now[:12]}, was {recorded[:12]}), so the metrics may too"
    )
