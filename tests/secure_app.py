"""The real app on a temporary SQLite database, with keys and row counts, for the
security tests (auth, limits, bad input, uploads, fuzzing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from api.app import create_app
from tuner.jobs.db import make_engine, migrate
from tuner.keys import KeyStore
from tuner.settings import Settings


@dataclass
class Service:
    """An app with no workers (jobs stay queued), its settings and its key store."""

    app: FastAPI
    settings: Settings
    keys: KeyStore

    @property
    def data_root(self) -> Path:
        return self.settings.data_root

    def client(self, key: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return TestClient(self.app, headers=headers)

    def key(self, owner: str, scopes: str = "read,submit") -> str:
        return self.keys.create(owner, scopes).secret

    def counts(self) -> dict[str, int]:
        """Rows that a refused request must not have added."""
        engine = make_engine(self.settings.database_url)
        try:
            with engine.connect() as conn:
                return {
                    table: conn.scalar(select(func.count()).select_from(text(table))) or 0
                    for table in ("jobs", "job_events", "studies", "trials", "api_keys")
                }
        finally:
            engine.dispose()


def make_service(root: Path, **settings: Any) -> Service:
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 'tuner.db'}"
    migrate(url)
    config = Settings(**{
        "database_url": url, "workers": 0, "artifact_root": root / "artifacts",
        "data_root": root / "data", "host": "127.0.0.1", **settings,
    })
    app = create_app(config)
    return Service(app, config, app.state.keys)
