"""A real ``tuner serve`` (``python -m api.server``) on a free 127.0.0.1 port, for e2e tests."""

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

import httpx

STARTUP_S = 120.0


def free_port() -> int:
    """A 127.0.0.1 port nobody listens on (until someone binds it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    database_url: str
    root: Path
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """SIGTERM, as an operator would; the exit code (0: workers stopped cleanly).

        A server that does not stop in time is killed with its whole process group
        (its own session, so its workers only).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def start_server(root: Path, workers: int = 2) -> LiveServer:
    """Start the server on a temporary SQLite database and wait until /readyz says ok."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database_url = f"sqlite:///{root / 'tuner.db'}"
    env = {
        **os.environ,
        "TUNER_DATABASE_URL": database_url,
        "TUNER_HOST": "127.0.0.1",
        "TUNER_PORT": str(port),
        "TUNER_WORKERS": str(workers),
        "TUNER_TORCH_THREADS": "1",
        "TUNER_POLL_INTERVAL_S": "0.1",
        "TUNER_ARTIFACT_ROOT": str(root / "artifacts"),
        "TUNER_DATA_ROOT": str(root / "data"),
    }
    for name in ("TUNER_SERVER", "TUNER_API_KEY"):  # the client's settings, not the server's
        env.pop(name, None)
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.server"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", database_url, root, process, log)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"the server did not get ready in {STARTUP_S} s:\n{log.read_text()}")


@contextmanager
def live_server(root: Path, workers: int = 1) -> Iterator[str]:
    """A started server for a ``with`` block: yields its URL, stops it (and its workers)."""
    server = start_server(root, workers)
    try:
        yield server.url
    finally:
        server.stop()
