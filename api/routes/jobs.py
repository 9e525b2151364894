"""Jobs: submit a spec, list, read, cancel, resume, raise the budget, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Response, status

from api.cache import ReadCacheDep, job_version
from api.deps import (
    ArtifactsDep,
    JobDep,
    PrincipalDep,
    Read,
    SettingsDep,
    StorageDep,
    StoreDep,
    Submit,
    VisibleOwner,
)
from api.limits import admit, check_active_jobs, check_budget
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
    Responses,
)
from api.views import job_detail, job_summary, load_study
from tuner.spec import StudySpec
from tuner.weights import artifact_ids, remove_artifacts

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

TOO_MANY: Responses = {
    429: {"model": ErrorOut, "description": "The owner has too many active jobs."}
}

@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay: this Idempotency-Key made this job."},
        409: {"model": ErrorOut, "description": "Idempotency-Key reused with another spec."},
        404: {"model": ErrorOut, "description": "warm_start_from names no job of yours."},
        **INVALID,
        **TOO_MANY,
    },
    dependencies=[Submit],
    summary="Submit a tuning job",
)
def create_job(
    spec: Annotated[StudySpec, Body(openapi_examples={"digits": {"value": EXAMPLE_SPEC}})],
    store: StoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    principal: PrincipalDep,
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
    """Validate the spec, queue the job and create its Optuna study (``job-<id>``).

    Refused, with nothing written, when the spec asks for more than this server's
    limits, names a dataset file that is missing, outside the data root or another
    owner's upload, searches nothing over several trials, can build no model within
    ``TUNER_MAX_MODEL_PARAMS``, or when the owner already has
    ``TUNER_MAX_JOBS_PER_OWNER`` active jobs (429)."""
    admit(spec, principal, settings, store)
    job, created = store.create(spec, owner=principal.owner, idempotency_key=idempotency_key)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_detail(job, storage)


@router.get(
    "",
    response_model=JobList,
    responses=INVALID,
    dependencies=[Read],
    summary="List jobs, newest first (an admin key sees every owner's)",
)
def list_jobs(
    store: StoreDep,
    owner: VisibleOwner,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    jobs, next_cursor = store.list(owner=owner, state=state, cursor=cursor, limit=limit)
    return JobList(items=[job_summary(j) for j in jobs], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses=NOT_FOUND,
    dependencies=[Read],
    summary="A job, its trials and best",
)
async def get_job(job: JobDep, storage: StorageDep, cache: ReadCacheDep) -> Response:
    """Served from the read cache (``api.cache``): at most two seconds behind, usually
    under one. The owner check (``JobDep``) runs first, on every request."""
    body = await cache.get(
        ("job", *job_version(job)), lambda: job_detail(job, storage).model_dump_json().encode()
    )
    return Response(body, media_type="application/json")  # as validated: sent as is


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT},
    dependencies=[Submit],
    summary="Cancel a job: running trials stop at their next epoch",
)
def cancel_job(job: JobDep, store: StoreDep, storage: StorageDep) -> JobOut:
    return job_detail(store.cancel(job.id, owner=job.owner), storage)


@router.post(
    "/{job_id}/resume",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT, **TOO_MANY},
    dependencies=[Submit],
    summary="Resume a cancelled or failed job with its remaining budget",
)
def resume_job(
    job: JobDep, store: StoreDep, storage: StorageDep, settings: SettingsDep
) -> JobOut:
    check_active_jobs(settings, store, job.owner)
    return job_detail(store.resume(job.id, owner=job.owner), storage)


@router.patch(
    "/{job_id}",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT, **INVALID},
    dependencies=[Submit],
    summary="Change a job's n_trials or timeout (more runs a succeeded job again)",
)
def update_job(
    job: JobDep, patch: JobPatch, store: StoreDep, storage: StorageDep, settings: SettingsDep
) -> JobOut:
    check_budget(settings, patch.n_trials, patch.timeout_s)
    updated = store.update(
        job.id, n_trials=patch.n_trials, timeout_s=patch.timeout_s, owner=job.owner
    )
    return job_detail(updated, storage)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, **CONFLICT},
    dependencies=[Submit],
    summary="Delete a job, its study and its weights",
)
def delete_job(
    job: JobDep, store: StoreDep, storage: StorageDep, artifacts: ArtifactsDep
) -> Response:
    """The job, its study and the weights its trials kept."""
    study = load_study(storage, job.study_name)
    kept = artifact_ids(study) if study is not None else []
    store.delete(job.id, owner=job.owner)
    remove_artifacts(kept, artifacts)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
