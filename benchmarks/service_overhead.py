"""Service overhead: wall time of N short trials through the service, divided by the
sum of those trials' pure training time (``metrics.train_seconds``).

The job's trials are sized to train about 0.3 s each, the issue's size, whatever the
machine's speed: first by ``service.trial_epochs``, then again before each seed from
the training speed the previous seed measured (``TrialSizer``). Two arms, interleaved
per seed, run the same number of epochs:

- ``service``: a real ``tuner serve`` (uvicorn on 127.0.0.1, one embedded worker,
  temporary SQLite, shipped defaults) takes the job by ``POST /v1/jobs``; the clock
  runs from the POST until a ``GET /v1/jobs/{id}`` shows it succeeded.
- ``in-process worker``: the same job run by ``tuner.worker.Worker`` inside this
  process on its own SQLite file, so SQLAlchemy commits on both engines (job store
  and Optuna) can be counted, and the time split into training, the rest of each
  trial (suggest, metrics, Optuna writes) and the worker's work between trials.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import optuna
from sqlalchemy import Engine, event

from benchmarks.common import SMOKE, Goal, Report, Size, figure, interleave, ratios, stats
from benchmarks.service import (
    Server,
    run_job,
    small_job,
    trial_epochs,
    trial_target_s,
    trials,
)
from tuner.engine import configure_torch
from tuner.jobs.db import make_engine, migrate
from tuner.jobs.store import JobStore
from tuner.settings import Settings
from tuner.spec import parse_spec
from tuner.worker import Worker


def n_trials(size: Size) -> int:
    return 3 if size.smoke else 20


class TrialSizer:
    """Epochs per trial for each seed, re-sized from the last arm's training speed.

    The shared machine's speed drifts by a third within minutes, and a trial's overhead
    is a fixed number of milliseconds, so trials sized once at the start of the section
    trained 0.2 s in one run and 0.41 s in the next, and the ratio moved with them.
    Both arms of a seed get the same epochs.
    """

    def __init__(self, epochs: int, smoke: bool) -> None:
        self.target_s = trial_target_s(smoke)
        self.epochs = epochs
        self.seed: int | None = None
        self.per_epoch_s: float | None = None
        self.chosen: list[int] = []

    def for_seed(self, seed: int) -> int:
        if seed != self.seed:
            self.seed = seed
            if self.per_epoch_s is not None:
                self.epochs = max(1, round(self.target_s / self.per_epoch_s))
            self.chosen.append(self.epochs)
        return self.epochs

    def observed(self, run: dict[str, float]) -> dict[str, float]:
        """Keep the arm's training speed for the next seed; the run, unchanged."""
        self.per_epoch_s = run["train_s"] / (run["trials"] * self.epochs)
        return run


def _service(server: Server, size: Size, seed: int, epochs: int) -> dict[str, float]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wall, job_id = run_job(client, small_job(size.smoke, n_trials(size), seed, epochs=epochs))
        done = trials(client, job_id)
    return {
        "wall_s": wall,
        "train_s": sum(t["metrics"]["train_seconds"] for t in done),
        "trial_s": sum(t["duration_s"] or 0.0 for t in done),
        "trials": len(done),
    }


@contextmanager
def counting_commits(*engines: Engine) -> Iterator[list[int]]:
    """Count commits on each engine while the block runs."""
    counts = [0] * len(engines)
    listeners = []
    for i, engine in enumerate(engines):
        def on_commit(_: Any, i: int = i) -> None:
            counts[i] += 1
        event.listen(engine, "commit", on_commit)
        listeners.append((engine, on_commit))
    try:
        yield counts
    finally:
        for engine, fn in listeners:
            event.remove(engine, "commit", fn)


def _in_process(tmp: Path, size: Size, seed: int, epochs: int | None = None) -> dict[str, float]:
    tmp.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp / f'worker-{seed}.db'}"
    migrate(url)
    settings = Settings(database_url=url, workers=1)
    configure_torch(1, settings.torch_threads)  # as run_worker does
    jobs_engine = make_engine(url)
    spec = parse_spec(small_job(size.smoke, n_trials(size), seed, epochs=epochs))
    worker = Worker(settings, engine=jobs_engine)
    with counting_commits(jobs_engine, worker.storage.engine) as commits:
        started = time.perf_counter()
        job, _ = JobStore(jobs_engine, worker.storage).create(spec)
        worker.run(max_trials=spec.budget.n_trials)
        wall = time.perf_counter() - started
    done = optuna.load_study(study_name=job.study_name, storage=worker.storage).get_trials()
    worker.storage.engine.dispose()
    jobs_engine.dispose()
    n = len(done)
    return {
        "wall_s": wall,
        "train_s": sum(t.user_attrs["metrics"]["train_seconds"] for t in done),
        "trial_s": sum(t.duration.total_seconds() for t in done if t.duration),
        "trials": n,
        "job_commits_per_trial": commits[0] / n,
        "optuna_commits_per_trial": commits[1] / n,
    }


def run(size: Size, servers: dict[int, Server]) -> list[Report]:
    server = servers[1]
    sizer = TrialSizer(trial_epochs(server.url, size.smoke), size.smoke)
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        _in_process(Path(tmp) / "warm", SMOKE, 0)  # lazy imports, as a long-lived worker
        res = interleave(range(size.seeds), {
            "service": lambda seed: sizer.observed(
                _service(server, size, seed, sizer.for_seed(seed))),
            "in_process_worker": lambda seed: sizer.observed(
                _in_process(Path(tmp), size, seed, sizer.for_seed(seed))),
        })
    report = Report("service_overhead", "Service overhead: wall time / pure training time")
    report.details = {
        "n_trials": n_trials(size), "epochs_per_seed": sizer.chosen,
        "job": small_job(size.smoke, 1, 0, epochs=sizer.chosen[0]), "runs": res,
    }

    def col(arm: str, key: str) -> list[float]:
        return [r[key] for r in res[arm]]

    svc_wall, svc_train = col("service", "wall_s"), col("service", "train_s")
    report.figures += [
        figure("service wall / sum of train_seconds", ratios(svc_wall, svc_train),
               Goal("<=", 1.10), f"{n_trials(size)} trials through POST /v1/jobs, 1 worker"),
        figure("in-process worker wall / sum of train_seconds",
               ratios(col("in_process_worker", "wall_s"), col("in_process_worker", "train_s")),
               note="same job, tuner.worker.Worker in this process: no HTTP, no polling"),
        figure("service: trial duration / train_seconds",
               ratios(col("service", "trial_s"), svc_train),
               note="inside a trial: suggest, final metrics, Optuna writes"),
        figure("service: wall / sum of trial durations",
               ratios(svc_wall, col("service", "trial_s")),
               note="between trials: claim, settle, study load, idle poll, client polling"),
    ]
    job_commits = stats(col("in_process_worker", "job_commits_per_trial"))
    optuna_commits = stats(col("in_process_worker", "optuna_commits_per_trial"))
    report.details["commits_per_trial"] = {"job_store": job_commits.__dict__,
                                           "optuna": optuna_commits.__dict__}
    per_trial = stats([t / n for t, n in zip(svc_train, col("service", "trials"), strict=True)])
    report.notes += [
        f"SQLite commits per trial (in-process worker, median): job store "
        f"{job_commits.median:.1f}, Optuna {optuna_commits.median:.1f}.",
        f"Trials of {'/'.join(map(str, sizer.chosen))} epochs (seed by seed), sized to train "
        f"{sizer.target_s:g} s each from the last measured speed; through the service they "
        f"trained {per_trial.median:.3f} s (median; {per_trial.min:.3f}-{per_trial.max:.3f}).",
    ]
    return [report]
