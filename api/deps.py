"""Typed dependencies shared by the routers: one place to add auth and tenants.

Routers ask for what they need by type (``store: StoreDep``, ``owner: CurrentOwner``,
``job: JobDep``); the app factory puts the shared objects on ``app.state``.
Authentication will replace :func:`current_owner`; every job lookup already goes
through the owner, so another owner's job reads as not found.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from optuna.artifacts._protocol import ArtifactStore
from optuna.storages import BaseStorage

from tuner.jobs import Job, JobStore
from tuner.settings import Settings

LOCAL_OWNER = "local"
"""The owner of every job while the service runs without API keys."""


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _storage(request: Request) -> BaseStorage:
    return request.app.state.storage


def _artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts


def current_owner() -> str:
    """Who is asking. Without API keys every caller is the local owner."""
    return LOCAL_OWNER


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
StorageDep = Annotated[BaseStorage, Depends(_storage)]
ArtifactsDep = Annotated[ArtifactStore, Depends(_artifacts)]
CurrentOwner = Annotated[str, Depends(current_owner)]
JobId = Annotated[
    str, Path(description="The job's id, as returned by POST /v1/jobs.", max_length=64)
]


def _job(job_id: JobId, store: StoreDep, owner: CurrentOwner) -> Job:
    return store.get(job_id, owner=owner)


JobDep = Annotated[Job, Depends(_job)]
"""The job named in the path, if the caller owns it (else 404)."""
