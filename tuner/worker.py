"""Workers: long-lived processes that claim a trial slot, run one trial, and repeat.

A worker imports torch and loads each dataset once, then loops: ``JobStore.claim``
(fair across jobs, exact budget; an idle worker waits for ``jobs.wakeup``), run one
trial with
``study.optimize(objective, n_trials=1)``, ``JobStore.finish`` (or ``release`` when
interrupted). A background thread renews the slot's lease, retrying through
transient database errors, and runs the reaper every ``reaper_interval_s``: the
reaper alone fails lost trials (Optuna's own heartbeat check is off, see ``Worker``).
SIGTERM or SIGINT: take no new work, stop the running trial after its current epoch
(its slot is released and its parameters retried), exit 0.

>>> run_worker(Settings(database_url="sqlite:///studies/tuner.db"))  # doctest: +SKIP
0
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine

from tuner import engine as optuna_engine
from tuner.data import DatasetError
from tuner.errors import UsageError
from tuner.gc_tuning import tune_gc
from tuner.jobs.store import Claim, JobNotFound, JobStore
from tuner.jobs.wakeup import Wakeup
from tuner.logs import configure_logging
from tuner.objective import INTERRUPTED, TRIAL_FAILURES, Cancelled, ResultHook, evaluate
from tuner.settings import Settings
from tuner.spec import SpecError, StudySpec, parse_spec
from tuner.storage import make_storage, shown
from tuner.train import TrainResult
from tuner.weights import in_top_k, keep_top_k, upload_weights

log = logging.getLogger("tuner.worker")

JOB_ERRORS = (SpecError, DatasetError, UsageError)
"""Errors that would repeat on every trial of the job: they fail the job, with the message."""

STOP_CHECK_S = 1.0
"""How often a running trial reads its job's cancel flag and deadline (one small query)."""


FIRST_POLL_S = 0.05
"""The first idle poll after work: a job's next trial, or the next job, starts soon."""


def idle_wait(polls: int, poll_interval_s: float) -> float:
    """Seconds to wait after ``polls`` empty claims in a row: 0.05 s doubling up to
    ``poll_interval_s``, so a busy service wastes little time between trials and an
    idle one polls at the configured rate."""
    return min(poll_interval_s, FIRST_POLL_S * 2.0 ** min(polls, 16))


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(2)}"


class _Stopper:
    """``should_stop`` for one trial: worker stopping, slot fenced, job cancelled or late."""

    def __init__(self, worker: Worker, job_id: str) -> None:
        self.worker = worker
        self.job_id = job_id
        self.reason: str | None = None
        # The claim that started the trial found the job running and in time: the
        # first read is due a STOP_CHECK_S later, not at the first epoch.
        self._checked = time.monotonic()

    def __call__(self) -> bool:
        if self.worker.stop.is_set():
            self.reason = "worker shutting down"
        elif self.worker.fenced.is_set():
            self.reason = "slot reaped while the worker was silent"
        elif time.monotonic() - self._checked >= STOP_CHECK_S:
            self._checked = time.monotonic()
            try:
                self.reason = self.worker.store.stop_reason(self.job_id)
            except Exception as exc:  # a database hiccup must not stop a healthy trial
                log.warning("could not read job %s: %s", self.job_id, exc)
        return self.reason is not None


class Worker:
    """One worker process's loop; ``run`` returns the exit code.

    ``engine`` (default: the engine of Optuna's storage, so one pool per process) is
    for tests that need to reach the worker's own connections.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        stop: threading.Event | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.id = worker_id or new_worker_id()
        self.stop = stop or threading.Event()
        self.fenced = threading.Event()
        # No Optuna heartbeat: its stale-trial check (run as each trial starts) would race
        # our reaper after a crash and fail lost trials without retrying them or
        # releasing their slots, so a crash would use up the budget.
        self.storage = make_storage(settings.database_url)
        # One connection pool per process: the job store shares Optuna's engine, so a
        # worker holds at most db_pool_size + db_max_overflow connections.
        self.store = JobStore(engine or self.storage.engine, self.storage)
        self.device = optuna_engine.pick_device(settings.device)
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        self.artifacts = FileSystemArtifactStore(str(settings.artifact_root))
        self.trials_run = 0
        self._current: tuple[int, int | None] | None = None  # (slot id, Optuna trial id)
        self._uploaded: int | None = None  # number of the claim's trial whose weights are kept
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._studies: dict[str, tuple[StudySpec, optuna.Study]] = {}

    # --- main loop ------------------------------------------------------------------

    def run(self, max_trials: int | None = None) -> int:
        self.store.register_worker(self.id, socket.gethostname(), os.getpid())
        beat = threading.Thread(target=self._beat, name=f"beat-{self.id}", daemon=True)
        beat.start()
        log.info(
            "worker %s started on %s (%d torch threads), database %s", self.id, self.device,
            torch.get_num_threads(), shown(self.settings.database_url),
        )
        idle = 0
        wakeup = Wakeup(self.settings.database_url)
        try:
            while not self.stop.is_set():
                if max_trials is not None and self.trials_run >= max_trials:
                    break
                try:
                    claim = self.store.claim(self.id)
                except Exception as exc:
                    log.warning("claim failed, retrying: %s", exc)
                    claim = None
                if claim is None:
                    wakeup.wait(idle_wait(idle, self.settings.poll_interval_s), self.stop)
                    idle += 1
                    continue
                idle = 0
                self._run_claim(claim)
                self.trials_run += 1
        finally:
            wakeup.close()
            self._done.set()
            beat.join(timeout=self.settings.heartbeat_interval_s + 5)
            try:
                self.store.worker_heartbeat(self.id, "stopped")
            except Exception as exc:
                log.warning("could not mark worker %s stopped: %s", self.id, exc)
        log.info("worker %s stopped after %d trials", self.id, self.trials_run)
        return 0

    def _study(self, claim: Claim) -> tuple[StudySpec, optuna.Study]:
        """The job's spec and study, loaded once per job (samplers keep their state)."""
        if claim.job_id not in self._studies:
            spec = parse_spec(claim.spec)
            study = optuna.load_study(
                study_name=claim.study_name, storage=self.storage,
                sampler=optuna_engine.make_sampler(spec), pruner=optuna_engine.make_pruner(spec),
            )
            study.sampler.reseed_rng()  # a seeded sampler would repeat itself in every worker
            self._studies[claim.job_id] = (spec, study)
        return self._studies[claim.job_id]

    def _run_claim(self, claim: Claim) -> None:
        """Run the claimed slot's trial and settle the slot, whatever happens."""
        with self._lock:  # the lease is renewed from the claim on, not just once it runs
            self._current = (claim.slot_id, None)
            self.fenced.clear()
        self._uploaded = None
        try:
            spec, study = self._study(claim)
        except KeyError:  # the study is gone
            self._study_gone(claim)
            return
        except JOB_ERRORS as exc:
            self._fail_job(claim, exc)
            return
        stopper = _Stopper(self, claim.job_id)
        told: list[FrozenTrial] = []  # the trial as Optuna told it: settled without a read
        try:
            study.optimize(
                self._objective(claim, spec, study, stopper), n_trials=1, catch=TRIAL_FAILURES,
                gc_after_trial=False, callbacks=[lambda _, trial: told.append(trial)],
            )
        except Cancelled:
            log.info("job %s: trial stopped (%s)", claim.job_id, stopper.reason or "interrupted")
            self._settle(claim, release=stopper.reason or "interrupted")
        except JOB_ERRORS as exc:
            self._fail_job(claim, exc)
        except Exception:
            if not self._exists(study):
                self._study_gone(claim)
                return
            if self.fenced.is_set():  # Optuna refused to tell a trial the reaper failed
                log.warning(
                    "job %s: this worker was silent past the grace period, so its trial "
                    "was failed and retried elsewhere; its late result is dropped",
                    claim.job_id,
                )
            else:
                log.exception("trial of job %s failed", claim.job_id)
            self._settle(claim, release=None if self._trial_id() else "trial did not start")
        else:
            if told:
                log.info(
                    "job %s: trial %d %s %s", claim.job_id, told[0].number,
                    told[0].state.name.lower(), told[0].values or "",
                )
            self._settle(claim, release=None, told=told[0] if told else None)
        finally:
            with self._lock:
                self._current = None

    def _exists(self, study: optuna.Study) -> bool:
        try:
            self.storage.get_study_name_from_id(study._study_id)
        except KeyError:
            return False
        return True

    def _study_gone(self, claim: Claim) -> None:
        """The job's study was deleted: with the job (nothing left to do), or on its own,
        from optuna-dashboard, which leaves the job unable to go on. Releasing its slot
        would have every worker claim it again at once, failing each time."""
        self._studies.pop(claim.job_id, None)
        try:
            self.store.get(claim.job_id)
        except JobNotFound:
            self._settle(claim, release="job deleted")
            return
        self._fail_job(claim, UsageError(
            f"the job's study {claim.study_name!r} was deleted (from optuna-dashboard?), "
            "so its trials are gone; submit the job again"
        ))

    def _fail_job(self, claim: Claim, exc: Exception) -> None:
        """The job's spec or data cannot work: count the failed trial, fail the job."""
        log.warning("job %s cannot run: %s", claim.job_id, exc)
        self._settle(claim, release=None if self._trial_id() else "job cannot run")
        self._call(lambda: self.store.fail(claim.job_id, str(exc)))

    def _objective(
        self, claim: Claim, spec: StudySpec, study: optuna.Study, stopper: _Stopper
    ) -> Callable[[optuna.Trial], float | list[float]]:
        def objective(trial: optuna.Trial) -> float | list[float]:
            attempt = int(trial.user_attrs.get("attempt", 1))
            with self._lock:
                self._current = (claim.slot_id, trial._trial_id)
            if not self.store.attach_trial(claim.slot_id, trial._trial_id, trial.number, attempt):
                self.fenced.set()
            try:
                return evaluate(
                    spec, trial, data_root=self.settings.data_root, device=self.device,
                    should_stop=stopper, on_result=self._keep_weights(study),
                    max_params=self.settings.max_model_params,
                )
            except Cancelled as exc:
                trial.set_user_attr("fail_reason", f"{INTERRUPTED}: {stopper.reason or exc}")
                raise
            except (*TRIAL_FAILURES, optuna.TrialPruned):
                raise
            except Exception as exc:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}")
                raise

        return objective

    def _keep_weights(self, study: optuna.Study) -> ResultHook:
        """``on_result``: upload the weights of a trial that enters the job's top k."""

        def keep(
            trial: optuna.Trial, result: TrainResult, hp: dict[str, Any], values: list[float]
        ) -> None:
            if in_top_k(
                self.storage.engine, study, values[0], trial.number, self.settings.top_k_models
            ):
                upload_weights(trial, result, hp, self.artifacts)
                self._uploaded = trial.number

        return keep

    def _trial_id(self) -> int | None:
        with self._lock:
            return self._current[1] if self._current else None

    def _settle(
        self, claim: Claim, *, release: str | None, told: FrozenTrial | None = None
    ) -> None:
        """Count the trial (``release`` None) or release the slot with that reason;
        ``told`` is the finished trial when Optuna handed it back, else it is read."""
        trial_id = self._trial_id()

        def settle() -> bool:
            if release is not None or trial_id is None:
                return self.store.release(claim.slot_id, release or "trial did not start")
            try:
                trial = told or self.storage.get_trial(trial_id)
            except KeyError:  # deleted with its job
                return self.store.finish(claim.slot_id, TrialState.FAIL, None)
            state = trial.state if trial.state.is_finished() else TrialState.FAIL
            return self.store.finish(claim.slot_id, state, trial.values, params=trial.params)

        if self._call(settle) is False:
            log.warning("slot %s was reaped meanwhile; its result does not count", claim.slot_id)
        elif release is None and self._uploaded is not None:
            number = self._uploaded
            self._call(lambda: self._drop_weights_outside_top_k(claim, number))

    def _drop_weights_outside_top_k(self, claim: Claim, number: int) -> None:
        _, study = self._study(claim)
        with contextlib.suppress(KeyError):  # the study was deleted with its job
            keep_top_k(study, self.artifacts, self.settings.top_k_models, number)

    def _call(self, fn: Callable[[], Any], tries: int = 5) -> Any:
        """Retry a store call through transient database errors (the slot's lease waits)."""
        for attempt in range(tries):
            try:
                return fn()
            except Exception as exc:
                if attempt == tries - 1:
                    log.error("giving up after %d tries: %s", tries, exc)
                    return None
                log.warning("database call failed, retrying: %s", exc)
                time.sleep(min(2.0, 0.2 * 2**attempt))
        return None

    # --- background: lease, heartbeat, reaper -------------------------------------------

    def _beat(self) -> None:
        """Renew the running slot's lease; run the reaper now and then. Never dies on an
        error: a failed beat is retried soon, well within the grace period."""
        interval = self.settings.heartbeat_interval_s
        next_reap = 0.0
        while not self._done.is_set():
            ok = True
            with self._lock:
                current = self._current
            try:
                if current is not None:
                    self._renew_lease(current[0])
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.settings.reaper_interval_s
                    self.store.worker_heartbeat(self.id)
                    s = self.settings
                    reaped = self.store.reap(s.grace_period_s, s.max_retries)
                    if reaped:
                        log.warning("reaped %d trial(s) of lost workers", reaped)
            except Exception as exc:
                ok = False
                log.warning("heartbeat failed, retrying: %s", exc)
            self._done.wait(interval if ok else min(interval, 0.25))

    def _renew_lease(self, slot_id: int) -> None:
        """Renew the slot's lease. A refusal fences the trial only while that slot is
        still the one running here: the beat may have read a slot that has since
        finished, and must not stop the next trial."""
        if self.store.heartbeat(slot_id, self.id):
            return
        with self._lock:
            if self._current is not None and self._current[0] == slot_id:
                self.fenced.set()

    def release_current(self, reason: str) -> None:
        """Give back the running slot now (used when shutdown runs out of time)."""
        with self._lock:
            current = self._current
        if current is not None:
            self._call(lambda: self.store.release(current[0], reason), tries=2)


def _not_a_stop(record: logging.LogRecord) -> bool:
    """Optuna warns, with a traceback, of every trial its objective ended by raising; a
    stop (cancel, timeout, shutdown) is no failure, and the worker logs it in a line."""
    return not (record.exc_info and isinstance(record.exc_info[1], Cancelled))


logging.getLogger("optuna.study._optimize").addFilter(_not_a_stop)


def run_worker(
    settings: Settings,
    *,
    worker_id: str | None = None,
    stop: threading.Event | None = None,
    max_trials: int | None = None,
) -> int:
    """Run a worker until stopped (SIGTERM/SIGINT, ``stop``, or ``max_trials``): exit code."""
    optuna_engine.configure_torch(1, settings.torch_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(settings, worker_id=worker_id, stop=stop)
    tune_gc()  # after the imports and the storage: the process's lifelong part
    if threading.current_thread() is threading.main_thread():
        _handle_signals(worker)
    return worker.run(max_trials)


def _handle_signals(worker: Worker) -> None:
    """First signal: finish cleanly; if that takes longer than the shutdown timeout,
    release the slot and exit 0 anyway."""

    def on_signal(signum: int, frame: Any) -> None:
        if worker.stop.is_set():
            return
        log.info("worker %s: %s, stopping", worker.id, signal.Signals(signum).name)
        worker.stop.set()
        timer = threading.Timer(worker.settings.shutdown_timeout_s, _force_exit, (worker,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _force_exit(worker: Worker) -> None:
    worker.release_current("worker shutdown timed out")
    os._exit(0)


# --- a supervised pool of worker processes ------------------------------------------------


def _pool_main(settings: Settings, worker_id: str, parent_pid: int) -> None:
    """Entry point of a pooled worker process; stops when its parent is gone."""
    configure_logging(settings)
    stop = threading.Event()

    def watch_parent() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("worker %s: parent %d is gone, stopping", worker_id, parent_pid)
                stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    raise SystemExit(run_worker(settings, worker_id=worker_id, stop=stop))


class WorkerPool:
    """``n`` worker processes (spawned), each with cores / n torch threads; a worker
    that dies is replaced. Used by ``tuner serve``.

    >>> pool = WorkerPool(settings, 4); pool.start()  # doctest: +SKIP
    >>> pool.stop()                                    # doctest: +SKIP
    """

    def __init__(self, settings: Settings, n: int, *, check_interval_s: float = 1.0) -> None:
        if n < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {n}")
        threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // n)
        self.settings = settings.model_copy(update={"torch_threads": threads})
        self.n = n
        self.check_interval_s = check_interval_s
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.replaced = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._prefix = f"{socket.gethostname()[:40]}-{os.getpid()}"

    def _spawn(self, index: int) -> multiprocessing.process.BaseProcess:
        worker_id = f"{self._prefix}-w{index}-{secrets.token_hex(2)}"
        process = self._ctx.Process(
            target=_pool_main, args=(self.settings, worker_id, os.getpid()),
            name=worker_id, daemon=False,
        )
        process.start()
        return process

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.n)]
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _supervise(self) -> None:
        while not self._stopping.wait(self.check_interval_s):
            for i, process in enumerate(self.processes):
                if not process.is_alive() and not self._stopping.is_set():
                    log.warning(
                        "worker %s exited with %s; starting a new one", process.name,
                        process.exitcode,
                    )
                    self.processes[i] = self._spawn(i)
                    self.replaced += 1

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM every worker, wait up to ``timeout`` (default the shutdown timeout)
        for them to finish their trials, then kill what is left."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + (timeout or self.settings.shutdown_timeout_s + 5)
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not stop in time; killing it", process.name)
                process.kill()
                process.join()
