"""Servers for the client and remote CLI tests: the app in process, or ``tuner serve`` for real.

``in_process`` runs the app on a fresh SQLite database with no workers (jobs stay
queued), behind transports that need no socket. ``live_server`` starts the real
server (uvicorn + one embedded worker) on a free port of 127.0.0.1, so jobs run
trials for real and events stream over a socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from a2wsgi import ASGIMiddleware
from fastapi import FastAPI

from api.app import create_app
from tuner.jobs import migrate
from tuner.settings import Settings

TINY_SPACE: dict[str, Any] = {
    "lr": {"low": 0.01, "high": 0.1, "log": True},
    "batch_size": 64,
    "epochs": 2,
    "depth": 1,
    "width": {"choices": [8, 16]},
    "batch_norm": False,
    "dropout": 0.0,
    "optimizer": "adam",
    "schedule": "none",
    "weight_decay": 0.0,
}


def tiny_spec(name: str = "tiny", n_trials: int = 3, **overrides: Any) -> dict[str, Any]:
    """A job that trains in a blink: iris, a small MLP, two epochs, random sampling."""
    return {
        "name": name,
        "objective": "mlp",
        "dataset": {"name": "iris"},
        "metrics": [{"name": "val_accuracy", "direction": "maximize"}],
        "budget": {"n_trials": n_trials, "max_epochs": 2},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search_space": TINY_SPACE,
        **overrides,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@contextmanager
def live_server(root: Path, startup_s: float = 120.0) -> Iterator[str]:
    """``python -m api.server`` with one worker; yields its URL, stops it (and its worker)."""
    port = free_port()
    env = {
        **os.environ,
        "TUNER_DATABASE_URL": f"sqlite:///{root / 'tuner.db'}",
        "TUNER_ARTIFACT_ROOT": str(root / "artifacts"),
        "TUNER_DATA_ROOT": str(root / "data"),
        "TUNER_HOST": "127.0.0.1",
        "TUNER_PORT": str(port),
        "TUNER_WORKERS": "1",
        "TUNER_TORCH_THREADS": "1",
        "TUNER_POLL_INTERVAL_S": "0.1",
    }
    for name in ("TUNER_SERVER", "TUNER_API_KEY"):
        env.pop(name, None)
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.server"], cwd=root, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, root / "server.log", startup_s)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the group this fixture started
            process.wait()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, startup_s: float) -> None:
    deadline = time.monotonic() + startup_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server did not get ready in {startup_s} s:\n{log.read_text()}")
