"""Typed dependencies shared by the routers: the caller, its scopes and its jobs.

Routers ask for what they need by type (``store: StoreDep``, ``owner: CurrentOwner``,
``job: JobDep``); the app factory puts the shared objects on ``app.state``.
:class:`api.security.Guard` has already authenticated the request; here each route
states the scope it needs (``dependencies=[Read]``). Job lookups go through the
caller's owner (every owner for an admin key), so another owner's job reads as not
found, on every sub-resource too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from optuna.artifacts._protocol import ArtifactStore
from optuna.storages import RDBStorage

from api.cache import ReadCache
from tuner.jobs.models import Job
from tuner.jobs.store import JobStore
from tuner.keys import KeyStore, Principal, Scope
from tuner.settings import Settings

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `tuner keys create`, as a Bearer token."
)
_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The same API key, in its own header."
)


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> JobStore:
    return request.app.state.store


async def _keys(request: Request) -> KeyStore:
    return request.app.state.keys


async def _storage(request: Request) -> RDBStorage:
    return request.app.state.storage


async def _artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


async def _principal(
    request: Request,
    _bearer_key: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    _header_key: Annotated[str | None, Security(_api_key)],
) -> Principal:
    """Who is asking, as the Guard found out (the parameters declare the schemes)."""
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):  # the Guard was bypassed: never serve that
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send an API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(_principal)]


def require(scope: Scope) -> Any:
    """A route dependency that answers 403 unless the caller's key has ``scope``."""

    async def check(principal: PrincipalDep) -> None:
        if not principal.allows(scope):
            have = ", ".join(sorted(principal.scopes)) or "none"
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this needs a key with the {scope!r} scope (this key has: {have}); "
                f"ask an admin for one: tuner keys create --owner {principal.owner} "
                f"--scopes {scope}",
            )

    return Depends(check)


Read = require("read")
Submit = require("submit")
Admin = require("admin")


async def current_owner(principal: PrincipalDep) -> str:
    """The owner new jobs and uploads belong to."""
    return principal.owner


async def _visible_owner(principal: PrincipalDep) -> str | None:
    """Whose jobs the caller sees: its own, or everyone's (None) with an admin key."""
    return None if principal.is_admin else principal.owner


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
KeysDep = Annotated[KeyStore, Depends(_keys)]
StorageDep = Annotated[RDBStorage, Depends(_storage)]
ArtifactsDep = Annotated[ArtifactStore, Depends(_artifacts)]
CurrentOwner = Annotated[str, Depends(current_owner)]
VisibleOwner = Annotated[str | None, Depends(_visible_owner)]
JobId = Annotated[
    str, Path(description="The job's id, as returned by POST /v1/jobs.", max_length=64)
]


async def _job(request: Request, job_id: JobId, store: StoreDep, owner: VisibleOwner) -> Job:
    """Concurrent requests for the same job by the same owner share one row read (the
    owner check is part of it); the next request reads anew. With many clients polling
    one job, that read was most of what a cached answer cost."""
    job_rows: ReadCache = request.app.state.job_rows
    return await job_rows.get((job_id, owner), lambda: store.get(job_id, owner=owner))


JobDep = Annotated[Job, Depends(_job)]
"""The job named in the path, if the caller may see it (else 404)."""
