"""A job's trials: list, read one, and enqueue known configurations (warm start)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from optuna.storages import RDBStorage
from optuna.study import StudyDirection

from api import trial_reads as reads
from api.cache import ReadCacheDep, job_version
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
from api.views import study_id_of
from tuner.jobs.models import Job

router = APIRouter(prefix="/v1/jobs/{job_id}/trials", tags=["trials"])


@router.get(
    "",
    response_model=TrialList,
    responses={**NOT_FOUND, **INVALID},
    dependencies=[Read],
    summary="A job's trials",
)
async def list_trials(
    job: JobDep,
    storage: StorageDep,
    cache: ReadCacheDep,
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
) -> Response:
    """Served from the read cache (``api.cache``): at most two seconds behind, usually
    under one. The owner check (``JobDep``) runs first, on every request."""
    start = int(cursor or 0)
    body = await cache.get(
        ("trials", *job_version(job), sort, state, start, limit),
        lambda: _trial_page(job, storage, sort, state, start, limit).model_dump_json().encode(),
    )
    return Response(body, media_type="application/json")  # as validated: sent as is


def _trial_page(
    job: Job,
    storage: RDBStorage,
    sort: Literal["number", "value"],
    state: TrialStateName | None,
    start: int,
    limit: int,
) -> TrialList:
    study_id = study_id_of(storage, job.study_name)
    if study_id is None:
        return TrialList(items=[], next_cursor=None)
    maximize = storage.get_study_directions(study_id)[0] == StudyDirection.MAXIMIZE
    with storage.engine.connect() as conn:
        ids, more = reads.page_ids(
            conn, study_id, sort=sort, maximize=maximize,
            state=TRIAL_STATES[state] if state is not None else None, offset=start, limit=limit,
        )
        page = reads.load_trials(conn, ids, TrialOut.USER_ATTRS)
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
    study_id = study_id_of(storage, job.study_name)
    with storage.engine.connect() as conn:
        found = None if study_id is None else reads.trial_id(conn, study_id, number)
        if found is None:
            counts = reads.trial_stats(conn, study_id).counts if study_id is not None else {}
            total = sum(counts.values())
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"job {job.id} has no trial {number}; it has {total} trials numbered from 0",
            )
        (trial,) = reads.load_trials(conn, [found], TrialOut.USER_ATTRS)
    return TrialOut.of(trial)


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
