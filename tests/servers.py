"""The app in process, for the client tests: no socket, no workers.

``in_process`` runs the app on a fresh SQLite database with no workers (jobs stay
queued), behind transports that need no socket. The real server, for jobs that run
trials, is ``live_server`` in live_server.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from a2wsgi import ASGIMiddleware
from fastapi import FastAPI

from api.app import create_app
from tuner.jobs.db import migrate
from tuner.settings import Settings


@dataclass
class InProcess:
    """The app, and transports to it for the sync and the async client."""

    app: FastAPI
    url: str = "http://tuner.test"

    def transport(self) -> httpx.BaseTransport:
        return httpx.WSGITransport(app=ASGIMiddleware(self.app))

    def async_transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self.app)


def in_process(root: Path) -> InProcess:
    url = f"sqlite:///{root / 'tuner.db'}"
    migrate(url)
    return InProcess(
        create_app(
            Settings(
                database_url=url, workers=0, artifact_root=root / "artifacts",
                data_root=root / "data",
            )
        )
    )
