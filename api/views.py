"""Job rows and Optuna studies turned into the API's response models.

A job's row says what was asked and how many slots were used; its Optuna study (same
database) says what each trial did. Listing reads rows only; the detail view reads
the study too.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from api.schemas import (
    TERMINAL_STATES,
    Best,
    Budget,
    JobLinks,
    JobOut,
    JobSummary,
    TrialCounts,
    TrialOut,
    finite,
    seconds_between,
)
from tuner.jobs import Job

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def load_study(storage: BaseStorage, study_name: str) -> optuna.Study | None:
    """The job's study, or None while it does not exist (yet, or any more)."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None


def links(job: Job, study_id: int | None = None) -> JobLinks:
    base = f"/v1/jobs/{job.id}"
    return JobLinks(
        self=base,
        trials=f"{base}/trials",
        events=f"{base}/events",
        best_config=f"{base}/best-config",
        best_model=f"{base}/best-model",
        dashboard=f"/dashboard/studies/{study_id}" if study_id is not None else None,
    )


def job_summary(job: Job) -> JobSummary:
    return JobSummary(**_summary_fields(job), links=links(job))


def _summary_fields(job: Job) -> dict[str, object]:
    return {
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "state": job.state,
        "reason": job.reason,
        "objective": job.spec.get("objective", ""),
        "dataset": job.spec.get("dataset", {}).get("name", ""),
        "budget": Budget(n_trials=job.n_trials, timeout_s=job.timeout_s),
        "parallelism": job.parallelism,
        "started": job.started,
        "finished": job.finished,
        "study_name": job.study_name,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
    }


def job_detail(job: Job, storage: BaseStorage) -> JobOut:
    study = load_study(storage, job.study_name)
    trials = study.get_trials(deepcopy=False) if study else []
    counts = Counter(t.state for t in trials)
    metrics = job.spec.get("metrics") or []
    elapsed = seconds_between(job.started_at, job.ended_at)
    return JobOut(
        **_summary_fields(job),
        links=links(job, storage.get_study_id_from_name(job.study_name) if study else None),
        metrics=[m["name"] for m in metrics],
        directions=[d.name.lower() for d in study.directions] if study else [],
        trials=TrialCounts(
            started=job.started,
            finished=job.finished,
            **{state.name.lower(): counts[state] for state in TrialState},
        ),
        best=_best(study, trials) if study else None,
        elapsed_s=elapsed,
        eta_s=_eta(job, trials, elapsed),
        spec=job.spec,
    )


def _best(study: optuna.Study, trials: list[FrozenTrial]) -> Best | None:
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return None
    if len(study.directions) > 1:
        front = study.best_trials
        return Best(
            trial_number=None,
            values=None,
            params=None,
            pareto_front_size=len(front),
            pareto_front=[TrialOut.of(t) for t in front],
        )
    best = study.best_trial
    return Best(
        trial_number=best.number,
        values=[finite(v) for v in best.values],
        params=best.params,
    )


def _eta(job: Job, trials: list[FrozenTrial], elapsed: float | None) -> float | None:
    """Mean trial time x rounds still to run (remaining / parallelism), within the timeout."""
    if job.state in TERMINAL_STATES or elapsed is None:
        return None
    durations = [
        d.total_seconds() for t in trials if t.state in FINISHED and (d := t.duration) is not None
    ]
    if not durations:
        return None
    remaining = max(0, job.n_trials - job.finished)
    eta = statistics.fmean(durations) * math.ceil(remaining / max(1, job.parallelism))
    if job.timeout_s is not None:
        eta = min(eta, max(0.0, job.timeout_s - elapsed))
    return eta
