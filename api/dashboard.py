"""optuna-dashboard on the service's own port.

Its frontend calls ``/api/...`` and ``/static/...``, so it only works mounted at
``/``; the app factory mounts it last, after every ``/v1`` route, and it serves
whatever the service does not. It reads the same storage as the workers, so each
job's study (``job-<id>``) shows up live.
"""

from __future__ import annotations

from a2wsgi import WSGIMiddleware
from optuna.artifacts._protocol import ArtifactStore
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi
from starlette.types import ASGIApp


def dashboard_app(storage: BaseStorage, artifacts: ArtifactStore) -> ASGIApp:
    """optuna-dashboard's WSGI app behind a WSGI -> ASGI adapter; it lists each
    trial's saved weights from the same artifact store."""
    return WSGIMiddleware(wsgi(storage, artifact_store=artifacts))  # type: ignore[arg-type]
