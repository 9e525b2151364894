"""The benchmark harness works at toy size: pairing, statistics, censoring, the report,
and a whole ``python -m benchmarks --smoke`` run. No timing is asserted: benchmarks
measure, tests only prove the measuring works."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import api_load, train_loop
from benchmarks.common import SMOKE, Finish, Goal, Report, figure, interleave, ratios, stats
from benchmarks.report import markdown
from benchmarks.time_to_target import Problem, _finish, _per_seed_note, outcome

ROOT = Path(__file__).resolve().parent.parent


def test_interleave_runs_every_arm_per_seed_reversing_the_order() -> None:
    calls: list[tuple[str, int]] = []

    def arm(name: str):  # type: ignore[no-untyped-def]
        def run(seed: int) -> int:
            calls.append((name, seed))
            return seed * 10
        return run

    results = interleave([0, 1, 2], {"a": arm("a"), "b": arm("b")})
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 2), ("b", 2)]
    assert results == {"a": [0, 10, 20], "b": [0, 10, 20]}


def test_ratio_statistics_and_goals() -> None:
    values = ratios([1.0, 3.0, 8.0, 1.0], [2.0, 1.0, 2.0, 0.0])
    assert values[:3] == [0.5, 3.0, 4.0] and math.isnan(values[3])
    s = stats(values)
    assert (s.median, s.min, s.max, s.n) == (3.0, 0.5, 4.0, 3)
    assert figure("x", values, Goal(">=", 2.0)).met is True
    assert figure("x", values, Goal("<=", 1 / 3)).met is False
    assert figure("x", [math.nan], Goal("<", 1.0)).met is None


def _problem(targets: tuple[float, ...], budget_s: float, cap_s: float) -> Problem:
    return Problem(options={}, max_epochs=5, budget_s=budget_s, targets=targets, cap_s=cap_s)


def test_time_to_target_reads_past_the_budget_up_to_the_cap_and_censors_misses() -> None:
    records = [(1.0, 0.4, 5, "COMPLETE"), (2.0, None, 1, "PRUNED"), (3.0, 0.6, 5, "COMPLETE"),
               (11.0, 0.9, 5, "COMPLETE"), (25.0, 0.95, 5, "COMPLETE")]
    # within the budget; after it, within the cap; only after the cap
    run = outcome(records, _problem((0.5, 0.8, 0.92), 10.0, 20.0))
    assert (run.times, run.reached) == ((3.0, 11.0, 20.0), (True, True, False))
    assert (run.best, run.trials, run.pruned, run.epochs) == (0.6, 3, 1, 11)  # at the budget
    together = [(1.0, None, 1, "PRUNED"), (1.0, 0.7, 5, "COMPLETE")]
    assert outcome(together, _problem((0.5,), 10.0, 20.0)).times == (1.0,)  # sorted by time
    empty = outcome([], _problem((0.5,), 10.0, 20.0))
    assert (empty.times, empty.reached, empty.trials) == ((20.0,), (False,), 0)
    assert math.isnan(empty.best)


def test_finish_stops_at_the_budget_once_any_worker_reached_the_target(tmp_path: Path) -> None:
    now = time.time()
    marker = tmp_path / "reached"
    running = Finish(marker, target=0.7, budget_at=now + 60, cap_at=now + 120)
    spent = Finish(marker, target=0.7, budget_at=now - 1, cap_at=now + 120)
    assert not running.due() and not spent.due()
    for value in (None, math.nan, 0.69):
        spent.record(value)
    assert not spent.due()
    running.record(0.7)  # another worker's trial, seen through the shared marker
    assert spent.due() and not running.due()
    assert Finish(tmp_path / "none", 0.7, now + 60, now - 1).due()  # the cap, whatever happened
    _, arm = _finish(_problem((0.73, 0.745), 30.0, 150.0), marker)
    assert (arm.target, arm.cap_at - arm.budget_at) == (0.745, 120.0)  # runs on to the hardest


def test_per_seed_note_names_the_seeds_random_search_won_in_its_first_trials() -> None:
    random = [25.0, 3.2, 90.0]  # random search's times to 0.7; the last censored at the cap
    note = _per_seed_note(0.7, [0.2, 1.5, 0.3], random, full_trial_s=1.1)
    assert note.startswith("Default / random time to 0.7 by seed: 0: 0.20, 1: 1.50, 2: 0.30.")
    assert "In seed(s) 1 random search reached 0.7 in 3.2 s" in note
    assert "seed(s) 1 random" in _per_seed_note(0.7, [0.2, 1.5, 0.3], random, full_trial_s=1.2)
    assert "seed(s)" not in _per_seed_note(0.7, [0.2, 1.5, 0.3], random, full_trial_s=1.0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert api_load.percentile(values, 50) == 50.0
    assert api_load.percentile(values, 99) == 99.0
    assert math.isnan(api_load.percentile([], 99))


def test_markdown_table_names_the_machine_and_every_figure() -> None:
    report = Report("demo", "Demo", figures=[figure("a / b", [1.0, 2.0, 3.0], Goal("<=", 1.1))])
    info = {"cores": 2, "cpu": "cpu", "python": "3.11", "torch": "2", "optuna": "5",
            "sqlalchemy": "2", "optuna-dashboard": "0.21", "hyperopt": "0.3",
            "loadavg_at_start": [0.0]}
    text = markdown([report, Report("off", "Off", skipped="not installed")], SMOKE, info,
                    "x.json", 60.0)
    assert "2 cores" in text and "torch 2" in text and "optuna 5" in text
    assert "| a / b | 2 | 1 – 3 | 3 | <= 1.1 | **no** |" in text
    assert "not installed" in text


@pytest.mark.parametrize("loop", sorted(train_loop.LOOPS))
def test_each_training_loop_trains_and_is_timed(loop: str) -> None:
    torch.set_num_threads(1)
    data = train_loop._dataset(SMOKE)
    ms = train_loop.ms_per_epoch(train_loop.LOOPS[loop], data, batch_size=256, epochs=2, seed=0)
    assert ms > 0


def test_hyperopt_space_translation_covers_every_distribution() -> None:
    from hyperopt import pyll
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    from benchmarks.hyperopt_compare import _hp, _typed

    dists = {
        "lr": FloatDistribution(1e-4, 0.3, log=True),
        "dropout": FloatDistribution(0.0, 0.5),
        "width": IntDistribution(16, 256, log=True),
        "depth": IntDistribution(1, 3),
        "optimizer": CategoricalDistribution(["sgd", "adam"]),
    }
    for _ in range(20):
        sample = pyll.stochastic.sample({k: _hp(k, d) for k, d in dists.items()})
        for name, dist in dists.items():
            assert dist._contains(dist.to_internal_repr(_typed(sample[name], dist)))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_smoke_run_writes_results_for_every_benchmark(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1100,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (result,) = tmp_path.glob("*-smoke.json")
    doc = json.loads(result.read_text())
    names = {b["name"] for b in doc["benchmarks"]}
    assert names >= {"train_loop", "time_to_target", "hyperopt", "service_overhead",
                     "worker_scaling", "api_load"}
    for bench in doc["benchmarks"]:
        assert bench["error"] is None
        assert bench["figures"] or bench["skipped"], bench["name"]
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["torch"]
    table = (tmp_path / "latest-smoke.md").read_text()
    assert "| ratio | median |" in table and "default / random: time to 0.5" in table
