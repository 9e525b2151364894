"""The FastAPI app: ``/v1`` service routes, health checks, then optuna-dashboard at ``/``.

>>> from tuner.settings import Settings
>>> app = create_app(Settings(database_url="sqlite:///studies/tuner.db"))  # doctest: +SKIP

The database must already be migrated (``tuner.jobs.db.migrate``; ``tuner serve`` does
it on start).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from optuna.artifacts import FileSystemArtifactStore
from starlette.routing import Match, Mount

from api import errors
from api.cache import ReadCache
from api.dashboard import dashboard_app
from api.limits import BodyLimit
from api.routes import (
    artifacts,
    catalog,
    events,
    health,
    jobs,
    keys,
    metrics,
    reports,
    trials,
    uploads,
)
from api.schemas import GUARDED
from api.security import Guard, SecurityHeaders
from tuner.jobs.store import JobStore
from tuner.keys import KeyStore
from tuner.settings import Settings, get_settings
from tuner.storage import make_storage
from tuner.webhooks import Deliverer

DESCRIPTION = """\
Submit PyTorch hyperparameter tuning jobs, watch them live and take away the best
configuration and weights. Studies run on Optuna; optuna-dashboard is served at `/`.

Every refusal is JSON `{"detail": "..."}` that says what to change.

Once an API key exists (`tuner keys create`), every request needs one, as
`Authorization: Bearer <key>` or `X-API-Key: <key>`; scopes are read, submit and admin.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app on ``settings`` (default: the TUNER_* environment)."""
    settings = settings or get_settings()
    storage = make_storage(settings.database_url)
    engine = storage.engine  # one pool per process: jobs, keys and Optuna share it
    artifact_store = FileSystemArtifactStore(settings.artifact_root)

    deliverer = Deliverer(engine, settings)
    dashboard = dashboard_app(storage, artifact_store, settings.database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        deliverer.start()  # webhook notices from the outbox (tuner.webhooks)
        yield
        deliverer.stop()
        dashboard.close()
        engine.dispose()

    app = FastAPI(
        title="Tuner",
        version=version("tuner"),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = JobStore(engine, storage)
    app.state.keys = KeyStore(engine)
    app.state.storage = storage
    app.state.artifacts = artifact_store
    app.state.read_cache = ReadCache()  # job detail and trial pages (api.cache)
    app.state.job_rows = ReadCache(ttl_s=0, max_age_s=0)  # shared row reads (api.deps)
    errors.install(app)
    for module in (jobs, trials, events, artifacts, reports, uploads, catalog, keys, metrics):
        app.include_router(module.router, responses=GUARDED)
    app.include_router(health.router)
    app.add_api_route(
        "/v1/{path:path}",
        _no_such_route,
        methods=list(METHODS),
        include_in_schema=False,
    )
    app.mount("/", dashboard, name="dashboard")
    # Added last = outermost: the guard answers before a body is read at all.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(Guard, keys=app.state.keys, settings=settings)
    app.add_middleware(SecurityHeaders)  # on every answer, refusals included
    return app


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _no_such_route(request: Request) -> JSONResponse:
    """Unknown ``/v1`` paths and methods get JSON advice, not the dashboard's HTML 404."""
    routes = [
        r
        for r in request.app.router.routes
        if not isinstance(r, Mount) and getattr(r, "endpoint", None) is not _no_such_route
    ]
    allowed = [
        method
        for method in METHODS
        if any(
            r.matches({"type": "http", "path": request.url.path, "method": method})[0]
            == Match.FULL
            for r in routes
        )
    ]
    if allowed:
        return JSONResponse(
            {"detail": f"{request.method} is not allowed here; use {', '.join(allowed)}"},
            status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
            headers={"Allow": ", ".join(allowed)},
        )
    return JSONResponse(
        {"detail": f"no route {request.url.path}; see /docs for the API's routes"},
        status_code=status.HTTP_404_NOT_FOUND,
    )
