"""Job rows and Optuna studies turned into the API's response models.

A job's row says what was asked and how many slots were used; its Optuna study (same
database) says what each trial did. Listing reads rows only; the detail view adds
aggregates over the study's trials.
"""

from __future__ import annotations

import math

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy import Connection

from api import trial_reads as reads
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
from tuner.jobs.models import Job


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


def study_id_of(storage: RDBStorage, study_name: str) -> int | None:
    """The Optuna id of the job's study, or None while it does not exist."""
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        return None


def job_detail(job: Job, storage: RDBStorage) -> JobOut:
    """The job with its trial counts, best and ETA, read by aggregate queries: a
    handful whatever the number of trials (see ``api.trial_reads``)."""
    study_id = study_id_of(storage, job.study_name)
    directions = storage.get_study_directions(study_id) if study_id is not None else []
    metrics = job.spec.get("metrics") or []
    elapsed = seconds_between(job.started_at, job.ended_at)
    stats, best = reads.TrialStats(dict.fromkeys(TrialState, 0), None), None
    if study_id is not None:
        with storage.engine.connect() as conn:
            stats = reads.trial_stats(conn, study_id)
            if stats.counts[TrialState.COMPLETE]:
                best = _best(conn, study_id, directions)
    return JobOut(
        **_summary_fields(job),
        links=links(job, study_id),
        metrics=[m["name"] for m in metrics],
        directions=[d.name.lower() for d in directions],
        trials=TrialCounts.of(job, {state.name.lower(): n for state, n in stats.counts.items()}),
        best=best,
        elapsed_s=elapsed,
        eta_s=_eta(job, stats.mean_finished_s, elapsed),
        spec=job.spec,
    )


def _best(conn: Connection, study_id: int, directions: list[StudyDirection]) -> Best:
    """The best complete trial by the first value; the Pareto front for several."""
    if len(directions) > 1:
        ids = reads.pareto_front_ids(conn, study_id, directions)
        front = reads.load_trials(conn, ids, TrialOut.USER_ATTRS)
        return Best(
            trial_number=None,
            values=None,
            params=None,
            pareto_front_size=len(front),
            pareto_front=[TrialOut.of(t) for t in front],
        )
    ids, _ = reads.page_ids(
        conn, study_id, sort="value", maximize=directions[0] == StudyDirection.MAXIMIZE,
        state=TrialState.COMPLETE, limit=1,
    )
    (best,) = reads.load_trials(conn, ids, ())
    return Best(
        trial_number=best.number,
        values=[finite(v) for v in best.values],
        params=best.params,
    )


def _eta(job: Job, mean_s: float | None, elapsed: float | None) -> float | None:
    """Mean trial time x rounds still to run (remaining / parallelism), within the timeout."""
    if job.state in TERMINAL_STATES or elapsed is None or mean_s is None:
        return None
    remaining = max(0, job.n_trials - job.finished)
    eta = mean_s * math.ceil(remaining / max(1, job.parallelism))
    if job.timeout_s is not None:
        eta = min(eta, max(0.0, job.timeout_s - elapsed))
    return eta
