"""What a job leaves behind: the best configuration as a runnable spec, and its weights."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from optuna.artifacts import get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound

from api.deps import ArtifactsDep, JobDep, Read, StorageDep
from api.errors import Conflict
from api.schemas import NOT_FOUND, ErrorOut
from api.views import load_study
from tuner.errors import UsageError
from tuner.export import export_best, pick_trial
from tuner.jobs.store import InvalidRequest
from tuner.spec import dump_spec

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["artifacts"], dependencies=[Read])

MEDIA_TYPES = {"yaml": "application/yaml", "json": "application/json"}
NOT_READY = {409: {"model": ErrorOut, "description": "No trial has completed yet."}}


def _no_best_yet(job_id: str) -> Conflict:
    return Conflict(
        f"job {job_id} has no completed trial yet; wait for one "
        f"(GET /v1/jobs/{job_id} shows trials.complete) and try again"
    )


@router.get(
    "/best-config",
    response_class=Response,
    responses={
        200: {
            "description": "The spec with the best trial's values fixed, to run or retrain.",
            "content": {"application/yaml": {}, "application/json": {}},
        },
        **NOT_FOUND,
        **NOT_READY,
        422: {"model": ErrorOut, "description": "No completed trial of that number."},
    },
    summary="Download the best configuration (or a chosen trial's) as a runnable spec",
)
def best_config(
    job: JobDep,
    storage: StorageDep,
    format: Annotated[Literal["yaml", "json"], Query(description="File format.")] = "yaml",
    trial: Annotated[
        int | None,
        Query(ge=0, description="A completed trial's number instead of the best (a point "
              "of a multi-objective job's Pareto front, say)."),
    ] = None,
) -> Response:
    """Retrain it with ``tuner train best.yaml``; ``provenance`` says which trial it is."""
    try:
        spec = export_best(storage, job.study_name, trial_number=trial)
    except UsageError as exc:
        if trial is None:
            raise _no_best_yet(job.id) from None
        raise InvalidRequest(f"{exc} (GET /v1/jobs/{job.id}/trials lists them)") from None
    return Response(
        dump_spec(spec, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{job.name}-best.{format}"'},
    )


@router.get(
    "/best-model",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The best trial's weights (safetensors; hp and metrics in metadata).",
            "content": {"application/octet-stream": {}},
        },
        **NOT_FOUND,
        **NOT_READY,
    },
    summary="Download the best trial's weights (safetensors)",
)
def best_model(job: JobDep, storage: StorageDep, artifacts: ArtifactsDep) -> StreamingResponse:
    """Workers keep the weights of each job's top trials in Optuna's artifact store; the
    best trial is always among them once its weights are written."""
    study = load_study(storage, job.study_name)
    try:
        trial = pick_trial(study) if study else None
    except UsageError:
        trial = None
    if trial is None:
        raise _no_best_yet(job.id)
    metas = [
        m
        for m in get_all_artifact_meta(trial, storage=storage)
        if m.filename.endswith(".safetensors")
    ]
    try:
        reader = artifacts.open_reader(metas[-1].artifact_id) if metas else None
    except ArtifactNotFound:
        reader = None
    if reader is None:
        raise Conflict(
            f"the weights of job {job.id}'s best trial ({trial.number}) are not saved yet; "
            "they are written when the trial ends, so try again in a moment"
        )
    filename = f"{job.name}-trial{trial.number}.safetensors"
    return StreamingResponse(
        reader,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
