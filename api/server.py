"""``tuner serve``: migrate, start the embedded workers, serve the API and dashboard.

One process tree on one port: uvicorn runs the app; ``settings.workers`` worker
processes (none with ``workers=0``) run trials against the same database. Stopping
the server (Ctrl-C, SIGTERM) stops the workers too, then exits 0.

Run directly with ``python -m api.server`` (settings from TUNER_* variables).
"""

from __future__ import annotations

import gc
import logging
import signal
from types import FrameType

import uvicorn

from api.app import create_app
from api.security import is_loopback
from tuner.jobs import make_engine, migrate
from tuner.keys import KeyStore
from tuner.logs import configure_logging
from tuner.settings import Settings, get_settings
from tuner.worker import WorkerPool

log = logging.getLogger(__name__)


def _note_stop(signum: int, _: FrameType | None) -> None:
    """uvicorn re-raises the signal that stopped it; this keeps it from killing us
    before the workers are stopped."""
    log.info("received %s; stopping the workers", signal.Signals(signum).name)


def _tune_gc() -> None:
    """Keep the cyclic collector from stopping every request for 100-400 ms.

    What is loaded by now (torch, Optuna, the app: ~400,000 objects) lives as long as
    the process: frozen, no collection walks it again. Objects that live long later
    (optuna-dashboard keeps every trial of each study it showed: ~1M objects at 10,000
    trials) made a full collection start about every second under load; collecting
    the youngest objects every 50,000 allocations instead of 700, and all of them every
    100 middle ones instead of 10 took 32 pollers' p99 from 110-240 ms to ~70 here.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


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
            "(tuner keys create --owner <name> --scopes admin), or listen on 127.0.0.1, "
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
        _tune_gc()
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
