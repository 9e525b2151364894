"""What a job leaves behind: the best configuration as a runnable spec, and its weights."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from api.deps import JobDep, SettingsDep, StorageDep
from api.errors import Conflict
from api.schemas import NOT_FOUND, ErrorOut
from api.views import load_study
from tuner.engine import UsageError
from tuner.export import export_best, model_path, pick_trial
from tuner.spec import dump_spec

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["artifacts"])

MEDIA_TYPES = {"yaml": "application/yaml", "json": "application/json"}
NOT_READY = {409: {"model": ErrorOut, "description": "No trial has completed yet."}}


def _no_best_yet(job_id: int) -> Conflict:
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
    },
    summary="Download the best configuration as a runnable spec",
)
def best_config(
    job: JobDep,
    storage: StorageDep,
    format: Annotated[Literal["yaml", "json"], Query(description="File format.")] = "yaml",
) -> Response:
    """Retrain it with ``tuner train best.yaml``; ``provenance`` says which trial it is."""
    try:
        spec = export_best(storage, job.study_name)
    except UsageError:
        raise _no_best_yet(job.id) from None
    return Response(
        dump_spec(spec, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{job.name}-best.{format}"'},
    )


@router.get(
    "/best-model",
    response_class=FileResponse,
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
def best_model(job: JobDep, storage: StorageDep, settings: SettingsDep) -> FileResponse:
    """Weights are kept for the job's top trials only; the best is always among them."""
    study = load_study(storage, job.study_name)
    try:
        number = pick_trial(study).number if study else None
    except UsageError:
        number = None
    if number is None:
        raise _no_best_yet(job.id)
    path = model_path(settings.artifact_root, job.study_name, number)
    if not path.is_file():
        raise Conflict(
            f"the weights of job {job.id}'s best trial ({number}) are not saved yet; "
            "they are written when the trial ends, so try again in a moment"
        )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{job.name}-trial{number}.safetensors",
    )
