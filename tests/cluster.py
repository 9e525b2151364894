"""Real processes on one machine for the fault and scale tests: ``tuner serve`` and
``tuner worker`` subprocesses on a test database, driven over HTTP on 127.0.0.1.

The process harness is ``scripts/chaos-demo``'s ``Cluster`` (one implementation for
the demo and the tests), loaded here as a module; the rest reads the database.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from sqlalchemy import select

from tuner.jobs.models import Job, SlotState, TrialSlot
from tuner.jobs.store import JobStore

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "chaos-demo"


def _load_chaos_demo() -> Any:
    loader = SourceFileLoader("chaos_demo", str(SCRIPT))
    spec = importlib.util.spec_from_loader("chaos_demo", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_demo"] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


chaos_demo = _load_chaos_demo()
Cluster = chaos_demo.Cluster
wait_for = chaos_demo.wait_for
worker_pid = chaos_demo.worker_pid

LEASES = {
    "TUNER_HEARTBEAT_INTERVAL_S": "0.5",
    "TUNER_GRACE_PERIOD_S": "3",
    "TUNER_REAPER_INTERVAL_S": "1",
    "TUNER_POLL_INTERVAL_S": "0.2",
}
"""Short leases: a lost worker is reaped within seconds."""

LOADED_BOX_SLACK_S = 10.0
"""How late a reaper may be on a loaded 2-core machine beyond grace + reaper interval."""

SPACE: dict[str, Any] = {
    "lr": {"low": 0.005, "high": 0.05, "log": True},
    "width": {"choices": [8, 16]},
    "depth": 1, "batch_size": 64, "batch_norm": False, "dropout": 0.0,
    "optimizer": "adam", "schedule": "none", "weight_decay": 0.0, "loss": "cross_entropy",
}


def spec(name: str, n_trials: int, *, epochs: int, dataset: str = "digits",
         parallelism: int = 2) -> dict[str, Any]:
    """A small MLP job; digits with tens of epochs lasts long enough to be killed mid-trial."""
    return {
        "name": name,
        "objective": "mlp",
        "dataset": {"name": dataset},
        "metrics": [{"name": "val_accuracy", "direction": "maximize"}],
        "budget": {"n_trials": n_trials, "max_epochs": epochs},
        "parallelism": parallelism,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "search_space": {**SPACE, "epochs": epochs, "patience": 0},
    }


def trials(store: JobStore, job_id: str) -> list[FrozenTrial]:
    study = optuna.load_study(study_name=f"job-{job_id}", storage=store.storage)
    return study.get_trials(deepcopy=False)


def running_slots(store: JobStore) -> list[TrialSlot]:
    """Running slots whose trial has chosen its parameters: a worker is training it."""
    query = select(TrialSlot).where(
        TrialSlot.state == SlotState.running, TrialSlot.trial_id.is_not(None)
    )
    with store._tx() as s:
        slots = list(s.scalars(query))
    return [slot for slot in slots if store.storage.get_trial(slot.trial_id).params]


def assert_exact_budget(store: JobStore, job_id: str) -> Job:
    """Succeeded with exactly its budget counted; nothing RUNNING or WAITING is left."""
    job = store.get(job_id)
    assert (job.state, job.started, job.finished) == ("succeeded", job.n_trials, job.n_trials)
    found = trials(store, job_id)
    states = [t.state.name for t in found]
    why = Counter((t.state.name, t.user_attrs.get("fail_reason")) for t in found)
    assert "RUNNING" not in states and "WAITING" not in states, why
    assert states.count("COMPLETE") + states.count("PRUNED") == job.n_trials, why
    return job
