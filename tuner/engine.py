"""Sampler and pruner from a spec; create a study; run a whole study in-process.

The service (``tuner.jobs`` / ``tuner.worker``) and ``tuner run`` share these
factories, so a study looks the same whichever way it was run.

>>> storage = make_storage("sqlite:///:memory:")
>>> type(make_pruner(StudySpec.model_validate(
...     {"name": "x", "dataset": {"name": "iris"}, "pruner": {"name": "median"}}))).__name__
'MedianPruner'
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner import space as spaces
from tuner.errors import UsageError
from tuner.objective import (
    INTERRUPTED,
    TRIAL_FAILURES,
    check_smallest_model,
    evaluate,
    get_objective,
    load_data,
    resolved_metrics,
)
from tuner.pruning import min_resource
from tuner.settings import get_settings
from tuner.spec import SpecError, StudySpec, parse_spec
from tuner.storage import make_storage

__all__ = [
    "configure_torch",
    "counted_trials",
    "create_study",
    "load_spec_of",
    "load_study",
    "make_pruner",
    "make_sampler",
    "pick_device",
    "run_study",
]

# --- sampler and pruner ----------------------------------------------------------------


TPE_STARTUP_TRIALS = 5
"""Random trials before TPE models the results; Optuna's 10 is half of a default
20-trial budget, and with pruning the random trials cost little anyway
(benchmarks/time_to_target.py: 5 reached the target sooner than 10 in every pilot)."""


def make_sampler(
    spec: StudySpec, space: dict[str, Any] | None = None
) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded; ``space`` (the resolved space) is needed for grid."""
    s = spec.sampler
    startup = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    match s.name:
        case "tpe":
            # multivariate + group: experimental, and better (time-to-target task, 14
            # paired runs: the target in 6.7 s against 12.3 s for independent TPE).
            # constant_liar: trials still running count as bad, so parallel workers do
            # not all sample near the same point (Optuna's advice for distributed runs).
            # Optuna's gamma and prior weight stay: prior_weight 2 (sooner in 6 of 14
            # pairs) and no liar (13 of 25) gained nothing; gamma 0.25 n was sooner in 14
            # of 14 pairs, then in 21 of 42 on 21 other seeds.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(
                    seed=s.seed, multivariate=True, group=True, constant_liar=True,
                    n_startup_trials=TPE_STARTUP_TRIALS if s.n_startup_trials is None
                    else s.n_startup_trials,
                )
        case "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        case "grid":
            if space is None:
                space = spaces.resolve_space(spec, get_objective(spec.objective))
            return optuna.samplers.GridSampler(spaces.grid(space), seed=s.seed)
        case "gp":
            return optuna.samplers.GPSampler(
                seed=s.seed, warn_independent_sampling=False, **startup
            )
        case "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=s.seed, warn_independent_sampling=False, **startup
            )
        case "nsga2":
            # A population of 50 would leave a modest budget all random: scale it down.
            population = max(4, min(50, spec.budget.n_trials // 4))
            return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=population)
        case "qmc":
            return optuna.samplers.QMCSampler(
                seed=s.seed, scramble=s.seed is not None, warn_independent_sampling=False
            )
    raise SpecError(f"unknown sampler {s.name!r}")


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner (ASHA by default, none for several metrics); epochs are steps."""
    p = spec.resolved_pruner
    median = optuna.pruners.MedianPruner(
        n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
    )
    match p.name:
        case "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=min_resource(spec), max_resource=spec.budget.max_epochs,
                reduction_factor=p.reduction_factor,
            )
        case "median":
            return median
        case "percentile":
            return optuna.pruners.PercentilePruner(
                p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
            )
        case "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=min_resource(spec), reduction_factor=p.reduction_factor,
                bootstrap_count=p.bootstrap_count or 0,
            )
        case "patient":
            return optuna.pruners.PatientPruner(median, patience=p.patience)
        case "threshold":
            return optuna.pruners.ThresholdPruner(
                lower=p.lower, upper=p.upper, n_warmup_steps=p.n_warmup_steps
            )
        case "none":
            return optuna.pruners.NopPruner()
    raise SpecError(f"unknown pruner {p.name!r}")


# --- studies ---------------------------------------------------------------------------


def create_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage | str, study_name: str | None = None
) -> optuna.Study:
    """Create (or load, to resume) the study for ``spec``; the spec is kept in the study.

    Checks what needs the objective (unknown dimensions, grid size) before anything runs.
    """
    space = spaces.resolve_space(spec, get_objective(spec.objective))
    metrics = resolved_metrics(spec, spec.task)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name or spec.name,
        sampler=make_sampler(spec, space),
        pruner=make_pruner(spec),
        directions=[m.direction for m in metrics],
        load_if_exists=True,
    )
    names = [m.name for m in metrics]
    if len(study.directions) != len(names):
        raise UsageError(
            f"study {study.study_name!r} already exists with {len(study.directions)} "
            f"objective(s), but the spec has {len(names)} metric(s); rename the spec"
        )
    if "spec" in study.user_attrs:
        _check_resumable(study, spec)
    study.set_user_attr("spec", spec.model_dump(mode="json", exclude_none=True))
    study.set_user_attr("metrics", names)
    with warnings.catch_warnings():  # experimental since 3.2, still the way to name values
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    return study


def _trial_defining(spec: StudySpec) -> dict[str, Any]:
    """The parts of a spec that decide what a trial trains and what it scores (``export``
    takes them from the study's spec): not the budget's size, the sampler or the pruner."""
    data = spec.model_dump(mode="json", exclude_none=True)
    parts = {key: data.get(key) for key in ("objective", "dataset", "seed")}
    try:  # as they are scored: a direction written out, or the task's default metric
        metrics: Any = [(m.name, m.direction) for m in resolved_metrics(spec, spec.task)]
    except SpecError:
        metrics = data.get("metrics")  # a file's task is known once it is read
    return parts | {
        "metrics": metrics,
        "search_space": data.get("search_space"),
        "budget.max_epochs": data["budget"]["max_epochs"],
    }


def _check_resumable(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse to resume a study with a spec that trains its trials differently: its
    earlier trials would then export to a config that does not retrain to their result."""
    try:
        earlier = _trial_defining(parse_spec(study.user_attrs["spec"]))
    except SpecError:
        return  # written by another version; nothing to compare with
    now = _trial_defining(spec)
    changed = [key for key in now if now[key] != earlier[key]]
    if changed:
        raise UsageError(
            f"study {study.study_name!r} was run with another {', '.join(changed)}, so its "
            "trials would no longer retrain to their results; rename the spec to start a "
            "new study, or change it back to resume this one"
        )


def load_spec_of(study: optuna.Study) -> StudySpec:
    """The spec a study was created from."""
    data = study.user_attrs.get("spec")
    if data is None:
        raise UsageError(
            f"study {study.study_name!r} was not created by tuner (it has no spec); "
            "export and show work only on tuner studies"
        )
    return parse_spec(data)


def load_study(storage: optuna.storages.BaseStorage | str, study_name: str) -> optuna.Study:
    """Load a study by name, or say which studies the storage has."""
    if isinstance(storage, str):
        storage = make_storage(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UsageError(
            f"no study named {study_name!r} in this storage; "
            f"it has: {', '.join(names) or 'no studies'}"
        ) from None


# --- running ---------------------------------------------------------------------------


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials, best first: for several metrics the Pareto front comes first,
    then each group by the metrics in order, then by trial number."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    signs = [1 if d == StudyDirection.MINIMIZE else -1 for d in study.directions]
    front = {t.number for t in study.best_trials} if len(signs) > 1 and done else set()
    return sorted(
        done,
        key=lambda t: (
            t.number not in front,
            *(s * v for s, v in zip(signs, t.values, strict=True)),
            t.number,
        ),
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_torch(parallel: int, threads: int | None = None) -> int:
    """Give each of ``parallel`` trials on this machine an equal share of the cores."""
    n = threads or max(1, _cores() // max(1, parallel))
    torch.set_num_threads(n)
    return n


def pick_device(requested: str = "auto") -> torch.device:
    """cuda when present (``auto``), else cpu; ``cuda:N`` pins one GPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device {requested!r} asked for, but no GPU is visible; use cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"device {requested!r} does not exist: this machine has {count} GPU(s), "
                f"cuda:0..cuda:{count - 1}"
            )
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {requested!r}; use auto, cpu, cuda or cuda:N")
    return device


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def counted_trials(study: optuna.Study) -> int:
    """Trials that count toward the budget: the finished ones, except those interrupted
    (Ctrl-C, a cancel), which would otherwise use up a resumed study's budget."""
    return sum(
        not str(t.user_attrs.get("fail_reason", "")).startswith(INTERRUPTED)
        for t in study.get_trials(deepcopy=False, states=FINISHED)
    )


def run_study(
    spec: StudySpec,
    *,
    storage_url: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    data_root: str | Path | None = None,
    device: str = "auto",
) -> optuna.Study:
    """Run a study in this process until it holds ``n_trials`` finished trials.

    ``n_trials`` (default ``budget.n_trials``) counts trials already in the study
    (``counted_trials``), so running the same spec again resumes an interrupted study.
    Trials run one at a time with every core: threads within torch beat Python threads
    around it, and ``parallelism`` is for the service's workers (separate processes).
    """
    settings = get_settings()
    torch_device = pick_device(device)
    root = data_root or settings.data_root
    configure_torch(1, settings.torch_threads)
    # Now, so a bad dataset or a model too large for any trial fails before the study.
    check_smallest_model(spec, settings.max_model_params, load_data(spec, root, torch_device))
    storage = make_storage(storage_url or settings.database_url)
    study = create_study(spec, storage, spec.name)
    total = n_trials or spec.budget.n_trials
    done = counted_trials(study)
    if done < total:
        study.optimize(
            lambda trial: evaluate(
                spec, trial, data_root=root, device=torch_device,
                max_params=settings.max_model_params,
            ),
            n_trials=total - done,
            timeout=timeout or spec.budget.timeout_s,
            catch=TRIAL_FAILURES,
            callbacks=list(callbacks),
            gc_after_trial=False,
        )
    return study
