"""Jobs: submit a spec, list, read, cancel, resume, raise the budget, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response, status

from api.deps import CurrentOwner, JobDep, StorageDep, StoreDep
from api.schemas import (
    CONFLICT,
    EXAMPLE_SPEC,
    INVALID,
    NOT_FOUND,
    ErrorOut,
    JobList,
    JobOut,
    JobPatch,
    JobState,
)
from api.views import job_detail, job_summary
from tuner.spec import StudySpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])



@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay: this Idempotency-Key made this job."},
        409: {"model": ErrorOut, "description": "Idempotency-Key reused with another spec."},
        **INVALID,
    },
    summary="Submit a tuning job",
)
def create_job(
    spec: Annotated[StudySpec, Body(openapi_examples={"digits": {"value": EXAMPLE_SPEC}})],
    store: StoreDep,
    storage: StorageDep,
    owner: CurrentOwner,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=200,
            description="Retry safely: the same key and spec return the same job.",
        ),
    ] = None,
) -> JobOut:
    """Validate the spec, queue the job and create its Optuna study (``job-<id>``)."""
    job, created = store.create(spec, owner=owner, idempotency_key=idempotency_key)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_detail(job, storage)


@router.get("", response_model=JobList, responses=INVALID, summary="List jobs, newest first")
def list_jobs(
    store: StoreDep,
    owner: CurrentOwner,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    jobs, next_cursor = store.list(owner=owner, state=state, cursor=cursor, limit=limit)
    return JobList(items=[job_summary(j) for j in jobs], next_cursor=next_cursor)


@router.get(
    "/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="A job, its trials and best"
)
def get_job(job: JobDep, storage: StorageDep) -> JobOut:
    return job_detail(job, storage)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Cancel a job: running trials stop at their next epoch",
)
def cancel_job(job: JobDep, store: StoreDep, storage: StorageDep, owner: CurrentOwner) -> JobOut:
    return job_detail(store.cancel(job.id, owner=owner), storage)


@router.post(
    "/{job_id}/resume",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Resume a cancelled or failed job with its remaining budget",
)
def resume_job(job: JobDep, store: StoreDep, storage: StorageDep, owner: CurrentOwner) -> JobOut:
    return job_detail(store.resume(job.id, owner=owner), storage)


@router.patch(
    "/{job_id}",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT, **INVALID},
    summary="Raise a job's n_trials or timeout",
)
def update_job(
    job: JobDep, patch: JobPatch, store: StoreDep, storage: StorageDep, owner: CurrentOwner
) -> JobOut:
    updated = store.update(job.id, n_trials=patch.n_trials, timeout_s=patch.timeout_s, owner=owner)
    return job_detail(updated, storage)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Delete a job and its study",
)
def delete_job(job: JobDep, store: StoreDep, owner: CurrentOwner) -> Response:
    store.delete(job.id, owner=owner)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
