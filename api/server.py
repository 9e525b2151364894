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
from api.security import is_loopback
from tuner.gc_tuning import tune_gc
from tuner.jobs.db import make_engine, migrate
from tuner.keys import KeyStore
from tuner.logs import configure_logging
from tuner.settings import Settings, get_settings
from tuner.storage import shown
from tuner.worker import WorkerPool

log = logging.getLogger(__name__)


def _note_stop(signum: int, _: FrameType | None) -> None:
    """uvicorn re-raises the signal that stopped it; this keeps it from killing us
    before the workers are stopped."""
    log.info("received %s; stopping the workers", signal.Signals(signum).name)


class UnsafeBind(RuntimeError):
    """Listening beyond loopback with no API key would let anyone run jobs."""


def check_bind(settings: Settings) -> None:
    """Refuse a non-loopback host while no API key exists, unless told ``insecure``."""
    if is_loopback(settings.host) or settings.insecure:
        return
    engine = make_engine(settings.database_url)
    try:
        protected = KeyStore(engine).any_exist()
    finally:
        engine.dispose()
    if not protected:
        raise UnsafeBind(
            f"refusing to listen on {settings.host}: no API key exists, so anyone who can "
            "reach this address could run jobs and read every study. Create a key first "
            f"(tuner keys create --owner <name> --scopes admin --storage "
            f"'{shown(settings.database_url)}'), or listen on 127.0.0.1, "
            "or pass --insecure (TUNER_INSECURE=1) if something else guards the port"
        )


def serve(settings: Settings) -> None:
    """Serve until interrupted; returns after the workers have stopped.

    Raises :class:`UnsafeBind` (before starting anything) for a non-loopback host
    without API keys.
    """
    configure_logging(settings)
    migrate(settings.database_url)
    check_bind(settings)
    pool = WorkerPool(settings, settings.workers) if settings.workers else None
    if pool is not None:
        pool.start()
    previous = {sig: signal.signal(sig, _note_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        app = create_app(settings)
        tune_gc()
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level="info",
            log_config=None,  # uvicorn's records go through configure_logging's handler
            timeout_graceful_shutdown=5,
        )
    finally:
        if pool is not None:
            pool.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    try:
        serve(get_settings())
    except UnsafeBind as exc:
        raise SystemExit(f"error: {exc}") from None
