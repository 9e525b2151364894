"""optuna-dashboard on the service's own port.

Its frontend calls ``/api/...`` and ``/static/...``, so it only works mounted at
``/``; the app factory mounts it last, after every ``/v1`` route, and it serves
whatever the service does not. It reads the same storage as the workers, so each
job's study (``job-<id>``) shows up live.
"""

from __future__ import annotations

from a2wsgi import WSGIMiddleware
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi
from starlette.types import ASGIApp


def dashboard_app(storage: BaseStorage) -> ASGIApp:
    """optuna-dashboard's WSGI app behind a WSGI -> ASGI adapter."""
    return WSGIMiddleware(wsgi(storage))  # type: ignore[arg-type]
