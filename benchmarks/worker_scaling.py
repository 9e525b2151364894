"""Worker scaling: trials per minute of one job with 1 and with 2 embedded workers.

Two real ``tuner serve`` processes with the shipped defaults (threads per worker
included), one with 1 worker and one with 2, each on its own SQLite file; per seed
both get the same job of short trials (``parallelism`` = their worker count), one
after the other, while the other server idles. Trials are sized by the same probe as
``service_overhead``'s: about 0.3 s of training on the 1-worker server. Trials per
minute count from the POST to seeing the job succeeded.
"""

from __future__ import annotations

import httpx

from benchmarks.common import Goal, Report, Size, figure, interleave, ratios
from benchmarks.service import TRIAL_S, Server, run_job, small_job, trial_epochs


def n_trials(size: Size) -> int:
    return 4 if size.smoke else 16


def trials_per_minute(server: Server, size: Size, seed: int, epochs: int) -> float:
    job = small_job(size.smoke, n_trials(size), seed, parallelism=server.workers, epochs=epochs)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wall, _ = run_job(client, job)
    return 60 * n_trials(size) / wall


def run(size: Size, servers: dict[int, Server]) -> list[Report]:
    epochs = trial_epochs(servers[1].url, size.smoke)
    res = interleave(range(size.seeds), {
        f"{n} worker(s)": (lambda seed, s=s: trials_per_minute(s, size, seed, epochs))
        for n, s in sorted(servers.items())
    })
    one, two = res["1 worker(s)"], res["2 worker(s)"]
    report = Report("worker_scaling", "Worker scaling: trials per minute, 2 workers vs 1")
    report.details = {"n_trials": n_trials(size), "trials_per_minute": res}
    report.figures.append(figure(
        "2 workers / 1 worker: trials per minute", ratios(two, one), Goal(">=", 1.8),
        f"one job of {n_trials(size)} trials of {epochs} epochs (~{TRIAL_S:g} s on 1 worker); "
        "workers use the default torch threads",
    ))
    return [report]
