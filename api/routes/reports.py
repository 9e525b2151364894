"""A job's report: plots, top trials and a diagnosis in words (HTML), or a PNG history."""

from __future__ import annotations

import gzip

import optuna
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from optuna.storages import BaseStorage
from starlette.concurrency import run_in_threadpool

from api.deps import JobDep, Read, StorageDep
from api.errors import Conflict
from api.schemas import NOT_FOUND
from api.views import load_study
from tuner.jobs.models import Job
from tuner.report import build_report, history_png

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["reports"], dependencies=[Read])


@router.get(
    "/report",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "The report."}, **NOT_FOUND},
    summary="A self-contained HTML report of the job",
)
async def report(job: JobDep, storage: StorageDep, request: Request) -> Response:
    """Optimization history, importances, parallel coordinates, slices, learning curves,
    the Pareto front (several metrics), the top trials, and a diagnosis of their curves.
    Works offline: plotly.js is inlined, so the page is ~5 MB, ~1.5 MB gzipped for a
    client that accepts it (browsers, httpx, ``curl --compressed``)."""
    page = await run_in_threadpool(build_report, _study(job, storage))
    headers = {
        "Content-Disposition": f'inline; filename="{job.name}-report.html"',
        "Vary": "Accept-Encoding",
    }
    if "gzip" not in request.headers.get("accept-encoding", ""):
        return HTMLResponse(page, headers=headers)
    body = await run_in_threadpool(gzip.compress, page.encode(), 6)
    return HTMLResponse(body, headers={**headers, "Content-Encoding": "gzip"})


@router.get(
    "/report.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "A PNG."}, **NOT_FOUND},
    summary="The optimization history as a PNG",
)
async def report_png(job: JobDep, storage: StorageDep) -> Response:
    """For places that cannot run JavaScript (CI logs, chat, e-mail)."""
    png = await run_in_threadpool(history_png, _study(job, storage))
    return Response(png, media_type="image/png")


def _study(job: Job, storage: BaseStorage) -> optuna.Study:
    study = load_study(storage, job.study_name)
    if study is None:
        raise Conflict(f"job {job.id} has no study (it is being created or deleted); retry")
    return study
