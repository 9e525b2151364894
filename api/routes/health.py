"""Liveness and readiness, for load balancers and orchestrators (outside ``/v1``)."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter, Response, status
from sqlalchemy.exc import SQLAlchemyError

from api.deps import StoreDep
from api.schemas import Readiness, Status
from tuner.jobs.db import VERSION_TABLE, alembic_config

router = APIRouter(tags=["health"])


# Load balancers probe with HEAD as often as with GET (the docs show the GET alone).
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Status, summary="The process is alive")
def healthz() -> Status:
    return Status(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; detail says why."}},
    summary="The database is reachable and migrated",
)
def readyz(store: StoreDep, response: Response) -> Readiness:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    try:
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            current = set(context.get_current_heads())
    except SQLAlchemyError as exc:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(
            status="unavailable",
            database=False,
            migrations=False,
            detail=f"database unreachable: {type(exc).__name__}; check TUNER_DATABASE_URL",
        )
    if current != heads:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(
            status="unavailable",
            database=True,
            migrations=False,
            detail="database schema is not at head; run `tuner serve` or tuner.jobs.db.migrate",
        )
    return Readiness(status="ok", database=True, migrations=True)
