"""Real ``tuner serve`` processes on 127.0.0.1 for the service benchmarks, and the
client calls they share (submit a job, wait for it, read its trials).

Servers run with the shipped defaults (worker poll interval, torch threads per
worker), on a temporary SQLite database each, so the figures are what a user gets.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 180.0
JOB_TIMEOUT_S = 600.0
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One ``python -m api.server`` process tree (API + embedded workers)."""

    url: str
    database_url: str
    workers: int
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready in {STARTUP_S:g} s; see {self.log}")


def _launch(root: Path, workers: int) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    database_url = f"sqlite:///{root / 'tuner.db'}"
    env = {
        **os.environ,
        "TUNER_DATABASE_URL": database_url,
        "TUNER_HOST": "127.0.0.1",
        "TUNER_PORT": str(port),
        "TUNER_WORKERS": str(workers),
        "TUNER_ARTIFACT_ROOT": str(root / "artifacts"),
        "TUNER_DATA_ROOT": str(root / "data"),
        # Benchmarks send many requests from one client: the per-client limit is not
        # what is measured here.
        "TUNER_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.server"], env=env, stdout=out,
            stderr=subprocess.STDOUT, cwd=ROOT,
        )
    return Server(f"http://127.0.0.1:{port}", database_url, workers, process, log)


@contextmanager
def servers(root: Path, worker_counts: tuple[int, ...]) -> Iterator[dict[int, Server]]:
    """One server per worker count, started together, stopped on exit."""
    with ExitStack() as stack:
        started: dict[int, Server] = {}
        for n in worker_counts:
            server = _launch(root / f"workers-{n}", n)
            stack.callback(server.stop)
            started[n] = server
        deadline = time.monotonic() + STARTUP_S
        for server in started.values():
            server.wait_ready(deadline)
        yield started


# --- client calls -----------------------------------------------------------------------


def submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def wait_done(client: httpx.Client, job_id: str, poll_s: float = 0.02) -> dict[str, Any]:
    """Poll until the job ends (bounded); its final JSON. Polling is light: a small job."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in TERMINAL:
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['state']}: {job.get('reason')}")
            return job
        time.sleep(poll_s)
    raise RuntimeError(f"job {job_id} did not finish in {JOB_TIMEOUT_S:g} s")


def run_job(client: httpx.Client, spec: dict[str, Any]) -> tuple[float, str]:
    """Submit ``spec`` and wait for it: wall seconds from POST to seeing it done, job id."""
    started = time.perf_counter()
    job_id = submit(client, spec)
    wait_done(client, job_id)
    return time.perf_counter() - started, job_id


def trials(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """Every trial of a job, page by page."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/jobs/{job_id}/trials", params=params).json()
        out += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


TRIAL_S = 0.3
"""Seconds of training per trial that the service benchmarks are sized for (the issue's)."""


def small_job(
    smoke: bool, n_trials: int, seed: int, parallelism: int = 1, epochs: int | None = None
) -> dict[str, Any]:
    """A job of short, even trials (see ``trial_epochs`` for their length; far less at
    smoke size): only lr is searched, nothing is pruned."""
    rows, default_epochs = (300, 3) if smoke else (5000, 10)
    epochs = epochs or default_epochs
    return {
        "name": f"bench-{seed}",
        "objective": "mlp",
        "dataset": {
            "name": "synthetic_classification",
            "options": {"n_samples": rows, "n_features": 20, "n_classes": 4, "seed": 1},
        },
        "budget": {"n_trials": n_trials, "max_epochs": epochs},
        "parallelism": parallelism,
        "seed": seed,
        "sampler": {"name": "random", "seed": seed},
        "pruner": {"name": "none"},
        "search_space": {
            "lr": {"low": 1e-3, "high": 1e-2, "log": True}, "epochs": epochs, "batch_size": 64,
            "depth": 2, "width": 64, "optimizer": "adam", "batch_norm": False, "dropout": 0.0,
            "schedule": "none", "loss": "cross_entropy", "weight_decay": 0.0, "patience": 0,
        },
    }


def warm(started: dict[int, Server], smoke: bool) -> None:
    """One small job per server first, so every worker has imported and loaded what a
    long-lived worker has (lazy imports, the dataset) before anything is timed."""
    for server in started.values():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            run_job(client, small_job(smoke, server.workers, 0, parallelism=server.workers))


@functools.cache
def trial_epochs(url: str, smoke: bool) -> int:
    """Epochs that make ``small_job``'s trials train for about ``TRIAL_S`` on this
    machine as it is during the run, measured once through the server at ``url``: a
    fixed size drifts with the machine (10 epochs took 0.13 s on a quiet day, 0.33 s on
    a loaded one)."""
    probe = small_job(smoke, 5, 0)
    with httpx.Client(base_url=url, timeout=60) as client:
        _, job_id = run_job(client, probe)
        done = trials(client, job_id)
    per_epoch = sorted(t["metrics"]["train_seconds"] / t["metrics"]["epochs_run"] for t in done)
    return max(1, round(trial_target_s(smoke) / per_epoch[len(per_epoch) // 2]))


def trial_target_s(smoke: bool) -> float:
    """Seconds of training per trial to size for: ``TRIAL_S``, a tenth at smoke size."""
    return TRIAL_S / 10 if smoke else TRIAL_S
