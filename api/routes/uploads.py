"""Uploaded datasets: send a csv or npz file, name it in a spec, list and delete it.

The body is the file itself (``curl --data-binary @train.csv
'.../v1/datasets?name=train&format=csv&target=label'``): it streams to disk under
``<data_root>/uploads/<owner>/``, capped at ``TUNER_MAX_DATASET_MB``, and is kept only
if the dataset loader reads it (numeric features, the target column; npz without
pickle). A spec then names it as ``dataset.path: uploads/<owner>/<name>.<format>``;
other owners cannot (their submit gets 422).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentOwner, PrincipalDep, Read, SettingsDep, Submit, VisibleOwner
from api.errors import Conflict
from api.limits import UPLOADS_DIR
from api.schemas import CONFLICT, INVALID, ErrorOut, UploadOut
from tuner.data import DatasetError, load_dataset
from tuner.jobs.store import InvalidRequest
from tuner.settings import Settings
from tuner.spec import DatasetSpec, Task

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
FILE = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}\.(csv|npz)$"
MAX_UPLOADS_PER_OWNER = 50
"""Files one owner may keep; with the size cap this bounds an owner's disk use."""
FORMATS = ("csv", "npz")

BODY = {
    "required": True,
    "description": "The file's bytes (not multipart): csv text or an .npz archive.",
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _owner_dir(settings: Settings, owner: str) -> Path:
    return settings.data_root / UPLOADS_DIR / owner


def _describe(file: Path, owner: str) -> UploadOut:
    stat = file.stat()
    return UploadOut(
        name=file.stem,
        format=file.suffix[1:],  # type: ignore[arg-type]
        owner=owner,
        path=f"{UPLOADS_DIR}/{owner}/{file.name}",
        size_bytes=stat.st_size,
        created_at=datetime.fromtimestamp(stat.st_mtime, UTC),
    )


def _files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        f for f in directory.iterdir()
        if f.suffix[1:] in FORMATS and not f.name.startswith(".") and f.is_file()
    )


def _validate(part: Path, file: str, fmt: str, target: str | None, task: Task | None,
              settings: Settings) -> None:
    """Load the file the way a worker will; refuse it with the loader's advice."""
    relative = part.relative_to(settings.data_root).as_posix()
    try:
        spec = DatasetSpec(name=fmt, path=relative, target=target, task=task)  # type: ignore[arg-type]
        load_dataset(spec, settings.data_root)
    except (DatasetError, ValueError) as exc:
        raise InvalidRequest(f"{file}: {str(exc).replace(relative, file)}") from None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    responses={
        **INVALID,
        **CONFLICT,
        413: {"model": ErrorOut, "description": "Over TUNER_MAX_DATASET_MB."},
    },
    dependencies=[Submit],
    openapi_extra={"requestBody": BODY},
    summary="Upload a dataset file (csv or npz), yours to name in specs",
)
async def upload_dataset(
    request: Request,
    settings: SettingsDep,
    owner: CurrentOwner,
    name: Annotated[str, Query(pattern=NAME, description="File name without extension.")],
    format: Annotated[Literal["csv", "npz"], Query(description="What the body holds.")],
    target: Annotated[
        str | None, Query(max_length=128, description="The label column (csv).")
    ] = None,
    task: Annotated[Task | None, Query(description="Default: inferred from the labels.")] = None,
) -> UploadOut:
    if format == "csv" and not target:
        raise InvalidRequest("a csv upload needs ?target=<the label column's name>")
    directory = _owner_dir(settings, owner)
    file = f"{name}.{format}"
    if (directory / file).exists():
        raise Conflict(
            f"you already have an upload {file}; delete it first "
            f"(DELETE /v1/datasets/uploads/{file}) or pick another name"
        )
    if len(_files(directory)) >= MAX_UPLOADS_PER_OWNER:
        raise Conflict(
            f"you have {MAX_UPLOADS_PER_OWNER} uploads, the most one owner may keep; "
            "delete some (DELETE /v1/datasets/uploads/<file>)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f".{name}.{secrets.token_hex(4)}.{format}"
    try:
        with part.open("wb") as out:
            async for chunk in request.stream():
                out.write(chunk)
        if part.stat().st_size == 0:
            raise InvalidRequest(f"the body is empty; send the {format} file's bytes")
        await run_in_threadpool(_validate, part, file, format, target, task, settings)
        try:
            os.link(part, directory / file)  # fails, rather than overwrite, on a race
        except FileExistsError:
            raise Conflict(f"you already have an upload {file}; delete it first") from None
    finally:
        part.unlink(missing_ok=True)
    return _describe(directory / file, owner)


@router.get(
    "/uploads",
    response_model=list[UploadOut],
    dependencies=[Read],
    summary="Your uploaded datasets (every owner's with an admin key)",
)
def list_uploads(settings: SettingsDep, owner: VisibleOwner) -> list[UploadOut]:
    root = settings.data_root / UPLOADS_DIR
    owners = [owner] if owner is not None else (
        sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    )
    return [_describe(f, o) for o in owners for f in _files(_owner_dir(settings, o))]


@router.delete(
    "/uploads/{file}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"model": ErrorOut, "description": "No such upload of yours."}},
    dependencies=[Submit],
    summary="Delete one of your uploads (jobs already using it will fail to load it)",
)
def delete_upload(
    settings: SettingsDep,
    principal: PrincipalDep,
    file: Annotated[str, PathParam(pattern=FILE, description="<name>.<format>")],
    owner: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="Admin: whose."),
    ] = None,
) -> Response:
    whose = owner if owner is not None and principal.is_admin else principal.owner
    path = _owner_dir(settings, whose) / file
    if not path.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"no upload {file!r}; GET /v1/datasets/uploads lists yours",
        )
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
