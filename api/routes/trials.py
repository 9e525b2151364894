"""A job's trials: list, read one, and enqueue known configurations (warm start)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from api.deps import JobDep, Read, StorageDep, StoreDep, Submit
from api.schemas import (
    CONFLICT,
    INVALID,
    NOT_FOUND,
    TRIAL_STATES,
    EnqueueOut,
    EnqueueRequest,
    TrialList,
    TrialOut,
    TrialStateName,
)
from api.views import load_study

router = APIRouter(prefix="/v1/jobs/{job_id}/trials", tags=["trials"])


def _trials(storage: StorageDep, study_name: str) -> tuple[list[FrozenTrial], bool]:
    """The study's trials and whether its first metric is maximised."""
    study = load_study(storage, study_name)
    if study is None:
        return [], False
    return study.get_trials(deepcopy=False), study.directions[0] == StudyDirection.MAXIMIZE


@router.get(
    "",
    response_model=TrialList,
    responses={**NOT_FOUND, **INVALID},
    dependencies=[Read],
    summary="A job's trials",
)
def list_trials(
    job: JobDep,
    storage: StorageDep,
    sort: Annotated[
        Literal["number", "value"],
        Query(description="number: oldest first; value: best first by the first metric."),
    ] = "number",
    state: Annotated[TrialStateName | None, Query(description="Only trials in this state.")] = None,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,9}$", description="next_cursor of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> TrialList:
    trials, maximize = _trials(storage, job.study_name)
    if state is not None:
        trials = [t for t in trials if t.state == TRIAL_STATES[state]]
    if sort == "value":
        # Trials with a value first, best first; the rest after, by number.
        sign = -1.0 if maximize else 1.0
        trials = sorted(
            trials, key=lambda t: (t.values is None, sign * t.values[0] if t.values else 0.0)
        )
    start = int(cursor or 0)
    page = trials[start : start + limit]
    more = start + limit < len(trials)
    return TrialList(
        items=[TrialOut.of(t) for t in page], next_cursor=str(start + limit) if more else None
    )


@router.get(
    "/{number}",
    response_model=TrialOut,
    responses=NOT_FOUND,
    dependencies=[Read],
    summary="One trial of a job",
)
def get_trial(
    job: JobDep,
    storage: StorageDep,
    number: Annotated[int, Path(ge=0, le=2**31 - 1, description="The trial's number.")],
) -> TrialOut:
    trials, _ = _trials(storage, job.study_name)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"job {job.id} has no trial {number}; it has {len(trials)} trials numbered from 0",
        )
    return TrialOut.of(found)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EnqueueOut,
    responses={**NOT_FOUND, **CONFLICT, **INVALID},
    dependencies=[Submit],
    summary="Enqueue known configurations to try first (warm start)",
)
def enqueue_trials(job: JobDep, body: EnqueueRequest, store: StoreDep) -> EnqueueOut:
    """Each configuration names Optuna parameters (``lr``, ``optimizer``,
    ``optimizer.sgd.momentum``); missing ones are sampled as usual."""
    return EnqueueOut(enqueued=store.enqueue(job.id, body.params, owner=job.owner))
