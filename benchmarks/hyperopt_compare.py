"""Hyperopt side by side with tuner on the time-to-target objective.

Hyperopt's TPE (``fmin``) runs in one worker process on the same objective (tuner's
``fit`` on the same data and search space, translated dimension by dimension), the
same budget and target; it has no pruning, so every trial trains all its epochs. Its
parallel modes need MongoDB or Spark, so the tuner arm it is paired with also runs
with one worker. Start-up (importing each library in a fresh interpreter) is
measured separately and never enters the time to target.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from importlib.util import find_spec
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FixedTrial

from benchmarks.common import Finish, Record
from tuner.objective import Cancelled, fit, get_objective, load_data
from tuner.space import distributions, resolve_space, suggest
from tuner.spec import parse_spec
from tuner.train import Diverged


def missing() -> str | None:
    """Why hyperopt cannot run here, or None."""
    if find_spec("hyperopt") is None:
        return "hyperopt is not installed: pip install -e '.[bench]'"
    return None


def import_seconds(module: str) -> float:
    """Seconds a fresh interpreter takes to import ``module`` (once: a start-up cost)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return float(done.stdout)


def _hp(name: str, dist: BaseDistribution) -> Any:
    from hyperopt import hp

    if isinstance(dist, CategoricalDistribution):
        return hp.choice(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        if dist.log:
            return hp.qloguniform(name, math.log(dist.low), math.log(dist.high), 1)
        return hp.quniform(name, dist.low, dist.high, dist.step)
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return hp.loguniform(name, math.log(dist.low), math.log(dist.high))
        if dist.step is not None:
            return hp.quniform(name, dist.low, dist.high, dist.step)
        return hp.uniform(name, dist.low, dist.high)
    raise TypeError(f"no hyperopt translation for {dist!r}")


def _typed(value: Any, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return int(min(dist.high, max(dist.low, round(value))))
    return value


def hyperopt_worker(spec_json: str, seed: int, started: float, finish: Finish) -> list[Record]:
    """Run hyperopt's TPE until ``finish`` is due; one record per trial (as time_to_target)."""
    from hyperopt import STATUS_FAIL, STATUS_OK, Trials, fmin, tpe

    spec = parse_spec(json.loads(spec_json))
    data = load_data(spec, None, "cpu")
    space = resolve_space(spec, get_objective(spec.objective), data.task)
    dists = distributions(space)
    records: list[Record] = []

    def objective(params: dict[str, Any]) -> dict[str, Any]:
        hp = suggest(FixedTrial({k: _typed(v, dists[k]) for k, v in params.items()}), space)
        epochs = 0

        def on_epoch(epoch: int, _: dict[str, float]) -> None:
            nonlocal epochs
            epochs = epoch
            if finish.due():
                raise Cancelled("budget spent")

        try:
            result = fit(spec, hp, data, "cpu", on_epoch)
        except (Cancelled, Diverged):
            records.append((time.time() - started, None, epochs, "FAIL"))
            return {"status": STATUS_FAIL}
        value = float(result.metrics["val_accuracy"])
        records.append((time.time() - started, value, epochs, "COMPLETE"))
        finish.record(value)
        return {"loss": -value, "status": STATUS_OK}

    fmin(
        objective, {name: _hp(name, d) for name, d in dists.items()}, algo=tpe.suggest,
        max_evals=100_000, timeout=max(1, math.ceil(finish.cap_at - time.time())),
        trials=Trials(), rstate=np.random.default_rng(seed), show_progressbar=False,
        early_stop_fn=lambda trials, *args: (finish.due(), args),
    )
    return records
