"""``tuner serve``: migrate, start the embedded workers, serve the API and dashboard.

One process tree on one port: uvicorn runs the app; ``settings.workers`` worker
processes (none with ``workers=0``) run trials against the same database. Stopping
the server (Ctrl-C, SIGTERM) stops the workers too, then exits 0.

Run directly with ``python -m api.server`` (settings from TUNER_* variables).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from api.app import create_app
from tuner.jobs import migrate
from tuner.settings import Settings, get_settings
from tuner.worker import WorkerPool

log = logging.getLogger(__name__)


def _note_stop(signum: int, _: FrameType | None) -> None:
    """uvicorn re-raises the signal that stopped it; this keeps it from killing us
    before the workers are stopped."""
    log.info("received %s; stopping the workers", signal.Signals(signum).name)


def serve(settings: Settings) -> None:
    """Serve until interrupted; returns after the workers have stopped."""
    migrate(settings.database_url)
    pool = WorkerPool(settings, settings.workers) if settings.workers else None
    if pool is not None:
        pool.start()
    previous = {sig: signal.signal(sig, _note_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="info",
            timeout_graceful_shutdown=5,
        )
    finally:
        if pool is not None:
            pool.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    serve(get_settings())
