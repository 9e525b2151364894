"""What a job leaves behind: the best configuration as a runnable spec, and its weights."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from optuna import Study
from optuna.artifacts import get_all_artifact_meta
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from api.deps import ArtifactsDep, JobDep, Read, StorageDep
from api.errors import Conflict
from api.schemas import NOT_FOUND, ErrorOut
from api.views import load_study
from tuner.errors import UsageError
from tuner.export import export_trial, pick_trial
from tuner.jobs.models import Job
from tuner.jobs.store import InvalidRequest
from tuner.spec import dump_spec
from tuner.weights import SUFFIX

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["artifacts"], dependencies=[Read])

MEDIA_TYPES = {"yaml": "application/yaml", "json": "application/json"}
NOT_READY = {409: {"model": ErrorOut, "description": "No trial has completed yet."}}


TrialQuery = Annotated[
    int | None,
    Query(ge=0, description="A completed trial's number instead of the best (a point "
          "of a multi-objective job's Pareto front, say)."),
]


def _no_best(job: Job) -> Conflict:
    if job.is_active:
        return Conflict(
            f"job {job.id} has no completed trial yet; wait for one "
            f"(GET /v1/jobs/{job.id} shows trials.complete) and try again"
        )
    return Conflict(
        f"job {job.id} ended without a completed trial; the failed trials' reasons: "
        f"GET /v1/jobs/{job.id}/trials?state=fail"
    )


def _chosen(job: Job, storage: BaseStorage, trial: int | None) -> tuple[Study, FrozenTrial]:
    """The job's study and its trial ``trial`` (the best when None), or a refusal that
    says why not."""
    study = load_study(storage, job.study_name)
    if study is None:
        raise _no_best(job)
    try:
        return study, pick_trial(study, trial)
    except UsageError as exc:
        if trial is None:
            raise _no_best(job) from None
        raise InvalidRequest(f"{exc} (GET /v1/jobs/{job.id}/trials lists them)") from None


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
    trial: TrialQuery = None,
) -> Response:
    """Retrain it with ``tuner train best.yaml``; ``provenance`` says which trial it is."""
    spec = export_trial(*_chosen(job, storage, trial))
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
        422: {"model": ErrorOut, "description": "No completed trial of that number."},
    },
    summary="Download the best trial's weights (or a chosen trial's; safetensors)",
)
def best_model(
    job: JobDep, storage: StorageDep, artifacts: ArtifactsDep, trial: TrialQuery = None
) -> StreamingResponse:
    """Workers keep the weights of each job's top trials (``keep_top_k``) in Optuna's
    artifact store; the best trial is always among them once its weights are written."""
    _, chosen = _chosen(job, storage, trial)
    which = "best trial" if trial is None else "trial"
    metas = [
        m
        for m in get_all_artifact_meta(chosen, storage=storage)
        if m.filename.endswith(SUFFIX)
    ]
    if not metas:
        if trial is not None or not job.is_active:
            raise Conflict(
                f"job {job.id} kept no weights of trial {chosen.number}: a job keeps those "
                "of its top trials (keep_top_k); its best-config retrains them "
                "(tuner train best.yaml -o model.safetensors)"
            )
        raise Conflict(
            f"the weights of job {job.id}'s best trial ({chosen.number}) are not saved yet; "
            "they are written when the trial ends, so try again in a moment"
        )
    try:
        reader = artifacts.open_reader(metas[-1].artifact_id)
    except ArtifactNotFound:
        raise Conflict(
            f"the weights of job {job.id}'s {which} ({chosen.number}) were saved by a worker "
            "but are not in this server's artifact folder: give the server and every worker "
            "one shared TUNER_ARTIFACT_ROOT (docs/scaling.md)"
        ) from None
    filename = f"{job.name}-trial{chosen.number}.safetensors"
    return StreamingResponse(
        reader,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
