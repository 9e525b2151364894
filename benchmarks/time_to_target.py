"""Time to target: the default strategy (TPE + asynchronous successive halving, ASHA)
against random search and TPE without pruning, on the same objective, search space,
wall-clock budget and workers.

The objective is a hard synthetic classification (10,000 rows, 12 classes, low class
separation, 15% flipped labels) trained by tuner's own objective
(``tuner.objective.evaluate``), sized as the issue asks: a full 27-epoch trial takes
about 1-3 s on one core (less on a quiet day; the notes give each run's size). Each
arm is a fresh SQLite study shared by two worker processes (long-lived, as the
service's workers are: torch imported and data loaded before the clock starts), each
running ``study.optimize`` until the arm stops (below); a trial still running then is
stopped between epochs and does not count.

Time to target is when the first completed trial reaches a target validation accuracy,
from the moment the workers are given the study. Two targets, both measured in every
run, since how much sooner a strategy gets there depends on how hard "there" is:

- 0.73, random search's median best at the budget in 11 early 30 s runs. About 1 random
  configuration in 16 reaches it (5 of 80 trained), so in about a third of seeds random
  search draws one among its first few trials, where no strategy can be three times
  sooner: a strategy has to finish a trial to count, and the default's first draws are
  random search's own (same seeds).
- 0.745, near the best this space holds (random search's bests in those 11 runs:
  0.716-0.754): 1 random configuration in 80 reached it. This is the target where tuning
  matters, where what a strategy learns from its trials decides, not its first draws.

An arm runs on past the budget until it has reached both targets, up to ``cap_s`` (5x
the budget): a time to target is then a measurement, not the budget standing in for
it. Best value, trials and epochs are still counted at the budget. An arm that misses
a target even by the cap gets the cap as a censored time there (a ratio against it is
a bound), and the notes say how many did.

For each seed the arms run back to back, their order reversed every other seed, and a
figure is the median of the per-seed ratios: 11 seeds for the strategies (a run's time
to target varies several-fold with the sampler's luck and the machine's load), 5 for the
hyperopt pair, which runs after them.

Trials this size matter: with a quarter or half of the rows (full trials of 0.5-1.3 s),
the default's fixed cost per trial (sampling, pruning checks, Optuna's storage reads
and writes, ~50-100 ms with two workers on SQLite) was as large as a pruned trial's
training, and the same pilots gave default/random 0.4-0.5 at a target set the same way.
Nor bigger: with twice the rows (full trials of 2.2-6.7 s), the 30 s budget held 8-26
random trials, too few for the sampler to learn from, and default/random read 0.9-1.0
over 7 seeds at targets from 0.775 to 0.79 (random's median best there: 0.781).

The space is the mlp objective's default (log lr over 3.5 decades, three optimizers,
weight decay, dropout, batch norm, schedule, loss), with depth, width and batch size
narrowed to keep a trial within the size above.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from benchmarks import hyperopt_compare
from benchmarks.common import (
    Finish,
    Goal,
    Record,
    Report,
    Size,
    figure,
    interleave,
    ratios,
    stats,
)
from tuner.engine import create_study, make_pruner, make_sampler
from tuner.gc_tuning import tune_gc
from tuner.objective import Cancelled, evaluate, fit, load_data
from tuner.spec import StudySpec, parse_spec
from tuner.storage import make_storage
from tuner.train import Diverged, resolve_hp

STUDY = "bench"
STARTUP_S = 300.0
STRATEGIES: dict[str, dict[str, Any]] = {
    "default": {"sampler": {"name": "tpe"}},  # the spec's default pruner: ASHA
    "random": {"sampler": {"name": "random"}, "pruner": {"name": "none"}},
    "tpe": {"sampler": {"name": "tpe"}, "pruner": {"name": "none"}},
}
"""Strategies by name: the parts of the spec that differ between arms."""


@dataclass(frozen=True)
class Problem:
    """The objective, space and budget every arm shares."""

    options: dict[str, float]
    max_epochs: int
    budget_s: float
    targets: tuple[float, ...]
    """Validation accuracies to time, easiest first; an arm runs on until it has all."""
    cap_s: float
    workers: int = 2

    def spec(self, strategy: str, seed: int) -> StudySpec:
        parts = STRATEGIES[strategy]
        return parse_spec({
            "name": f"{strategy}-{seed}",
            "objective": "mlp",
            "dataset": {"name": "synthetic_classification", "options": self.options},
            "metrics": [{"name": "val_accuracy", "direction": "maximize"}],
            "budget": {"n_trials": 100_000, "max_epochs": self.max_epochs},
            "seed": seed,
            "sampler": {**parts["sampler"], "seed": seed},
            **({"pruner": parts["pruner"]} if "pruner" in parts else {}),
            "search_space": {
                "epochs": self.max_epochs,
                "batch_size": {"choices": [64, 128, 256]},
                "depth": {"low": 1, "high": 3},
                "width": {"low": 16, "high": 256, "log": True},
            },
        })


def problem(size: Size) -> Problem:
    if size.smoke:
        return Problem(
            options={"n_samples": 400, "n_features": 10, "n_informative": 6, "n_classes": 4,
                     "class_sep": 0.8, "flip_y": 0.1, "seed": 3},
            max_epochs=6, budget_s=1.0, targets=(0.45, 0.5), cap_s=1.5,
        )
    return Problem(
        options={"n_samples": 10_000, "n_features": 30, "n_informative": 16, "n_classes": 12,
                 "class_sep": 0.6, "flip_y": 0.15, "seed": 3},
        max_epochs=27, budget_s=30.0, targets=(0.73, 0.745), cap_s=150.0,
    )


@dataclass(frozen=True)
class Outcome:
    """One arm's run: when it reached each target (or the cap, censored) and more."""

    times: tuple[float, ...]
    reached: tuple[bool, ...]
    best: float
    epochs: int
    trials: int
    pruned: int


def outcome(records: list[Record], prob: Problem) -> Outcome:
    """Summarise an arm's trials: the times to target from every trial that ended within
    the cap, the rest from those that ended within the budget."""
    ended = sorted((r for r in records if r[0] <= prob.cap_s), key=lambda r: r[0])
    done = [r for r in ended if r[0] <= prob.budget_s]
    values = [(t, v) for t, v, _, _ in ended if v is not None and math.isfinite(v)]
    hits = [next((t for t, v in values if v >= target), None) for target in prob.targets]
    return Outcome(
        times=tuple(prob.cap_s if hit is None else hit for hit in hits),
        reached=tuple(hit is not None for hit in hits),
        best=max((v for t, v in values if t <= prob.budget_s), default=math.nan),
        epochs=sum(e for _, _, e, _ in done),
        trials=len(done),
        pruned=sum(s == "PRUNED" for *_, s in done),
    )


# --- worker processes ------------------------------------------------------------------


def _init_worker(spec_json: str, threads: int) -> None:
    """Import, set threads, load the data and tune the collector once, as a service
    worker does."""
    torch.set_num_threads(threads)
    # Trials stopped when the arm stops fail on purpose: no tracebacks for them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = parse_spec(json.loads(spec_json))
    data = load_data(spec, None, "cpu")
    # Lazy imports (metrics) before any clock runs, as in a long-lived worker.
    fit(spec, resolve_hp({"epochs": 1}, data.task), data, "cpu")
    tune_gc()


def _ready(_: int) -> None:
    time.sleep(0.5)  # long enough that every process of the pool takes one


def _tuner_worker(spec_json: str, url: str, index: int, finish: Finish) -> None:
    spec = parse_spec(json.loads(spec_json))
    # Each worker seeds its own sampler: the same seed in two processes would sample
    # the same configurations twice.
    seeded = spec.model_copy(
        update={"sampler": spec.sampler.model_copy(update={"seed": spec.seed * 100 + index})}
    )
    storage = make_storage(url)
    study = optuna.load_study(
        study_name=STUDY, storage=storage, sampler=make_sampler(seeded), pruner=make_pruner(spec)
    )

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finish.record(trial.value if trial.state == TrialState.COMPLETE else None)
        if finish.due():
            study.stop()

    study.optimize(
        lambda trial: evaluate(spec, trial, should_stop=finish.due),
        timeout=max(0.0, finish.cap_at - time.time()),
        catch=(Diverged, Cancelled),
        callbacks=[on_trial],
        gc_after_trial=False,
    )
    storage.engine.dispose()


@contextmanager
def worker_pool(prob: Problem) -> Iterator[Pool]:
    """``prob.workers`` warm processes, one torch thread each (workers x threads <= cores)."""
    spec_json = prob.spec("default", 0).model_dump_json()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(prob.workers, initializer=_init_worker, initargs=(spec_json, 1)) as pool:
        pool.map_async(_ready, range(prob.workers), chunksize=1).get(timeout=STARTUP_S)
        yield pool


def run_tuner(
    pool: Pool, prob: Problem, strategy: str, seed: int, workdir: Path, workers: int
) -> Outcome:
    """One arm: a fresh study, ``workers`` processes optimising it until it stops."""
    spec = prob.spec(strategy, seed)
    url = f"sqlite:///{workdir / f'{strategy}-{seed}-{workers}.db'}"
    storage = make_storage(url)
    create_study(spec, storage, STUDY)
    started, finish = _finish(prob, workdir / f"{strategy}-{seed}-{workers}.reached")
    pool.starmap(
        _tuner_worker, [(spec.model_dump_json(), url, i, finish) for i in range(workers)],
        chunksize=1,
    )
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
    storage.engine.dispose()
    return outcome(
        [
            (
                t.datetime_complete.timestamp() - started,
                t.value if t.state == TrialState.COMPLETE else None,
                int(t.user_attrs.get("epochs_run", 0)),
                t.state.name,
            )
            for t in trials
            if t.datetime_complete is not None
        ],
        prob,
    )


def _finish(prob: Problem, marker: Path) -> tuple[float, Finish]:
    """The start of an arm, from now, and when it stops."""
    started = time.time()
    return started, Finish(marker, max(prob.targets), started + prob.budget_s,
                           started + prob.cap_s)


Arm = Callable[[Pool, Problem, int, Path], Outcome]

STRATEGY_SEEDS = 11
"""Seeds of the three strategies in a full run (hyperopt's pair runs ``size.seeds``, 5).
One seed's time to target varies several-fold with the sampler's luck: at the easier
target random search sometimes draws a configuration past it among its first few (3
of 7 seeds did in one run), so 7 seeds left the median at the mercy of one or two."""


def compare(
    size: Size, groups: list[tuple[int, dict[str, Arm]]]
) -> tuple[Problem, dict[str, list[Outcome]]]:
    """Run each group's arms interleaved over its number of seeds, one group after the
    other, sharing one warm worker pool; arms are only compared within their group."""
    prob = problem(size)
    results: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp, worker_pool(prob) as pool:
        for seeds, arms in groups:
            results |= interleave(
                range(seeds),
                {name: (lambda seed, arm=arm: arm(pool, prob, seed, Path(tmp))) for name, arm in
                 arms.items()},
            )
    return prob, results


def describe(prob: Problem, results: dict[str, list[Outcome]]) -> dict[str, Any]:
    """Per-arm raw outcomes and their medians, for the JSON details."""
    return {
        "problem": asdict(prob),
        "arms": {
            name: {
                "runs": [asdict(o) for o in outs],
                "by_target": {
                    str(target): {
                        "reached": f"{sum(o.reached[i] for o in outs)}/{len(outs)}",
                        "median_time_to_target_s": stats([o.times[i] for o in outs]).median,
                    }
                    for i, target in enumerate(prob.targets)
                },
                "median_best": stats([o.best for o in outs]).median,
                "median_trials": stats([o.trials for o in outs]).median,
                "median_epochs": stats([o.epochs for o in outs]).median,
            }
            for name, outs in results.items()
        },
    }


def censored_note(prob: Problem, results: dict[str, list[Outcome]], index: int,
                  *arms: str) -> str:
    """How many runs of ``arms`` reached ``prob.targets[index]`` within the cap."""
    parts = [f"{a} reached it in {sum(o.reached[index] for o in results[a])}/"
             f"{len(results[a])} runs" for a in arms]
    cap = f"{prob.cap_s:g} s"
    return "; ".join(parts) + f" within {cap} (a miss counts as {cap}: a bound)"


def run_hyperopt(pool: Pool, prob: Problem, seed: int, workdir: Path) -> Outcome:
    """One hyperopt arm: TPE in one of the pool's processes until it stops."""
    spec_json = prob.spec("default", seed).model_dump_json()
    started, finish = _finish(prob, workdir / f"hyperopt-{seed}.reached")
    records = pool.apply(hyperopt_compare.hyperopt_worker, (spec_json, seed, started, finish))
    return outcome(records, prob)


def run(size: Size) -> list[Report]:
    """The three strategies with 2 workers, plus hyperopt vs tuner with 1 worker."""
    strategies: dict[str, Arm] = {
        name: (lambda pool, prob, seed, tmp, name=name: run_tuner(
            pool, prob, name, seed, tmp, prob.workers))
        for name in STRATEGIES
    }
    groups = [(size.seeds if size.smoke else max(size.seeds, STRATEGY_SEEDS), strategies)]
    why_not = hyperopt_compare.missing()
    if why_not is None:
        groups.append((size.seeds, {
            "default, 1 worker": lambda pool, prob, seed, tmp: run_tuner(
                pool, prob, "default", seed, tmp, 1),
            "hyperopt, 1 worker": run_hyperopt,
        }))
    prob, res = compare(size, groups)
    return [_strategies(prob, res), _hyperopt(prob, res, why_not)]


def _col(res: dict[str, list[Outcome]], arm: str, key: str) -> list[float]:
    return [float(getattr(o, key)) for o in res[arm]]


def _times(res: dict[str, list[Outcome]], arm: str, index: int) -> list[float]:
    return [o.times[index] for o in res[arm]]


def _strategies(prob: Problem, res: dict[str, list[Outcome]]) -> Report:
    report = Report("time_to_target", "Time to target: TPE + ASHA vs no pruning, 2 workers")
    report.details = describe(prob, {k: v for k, v in res.items() if k in STRATEGIES})
    full_trial = stats([prob.workers * prob.budget_s / o.trials for o in res["random"]])
    report.notes += [
        f"Targets val_accuracy >= {' and '.join(f'{t:g}' for t in prob.targets)} on "
        f"synthetic_classification {prob.options}, {prob.budget_s:g} s budget, "
        f"{prob.workers} worker processes sharing one SQLite study.",
        f"Trial size in this run: random search's trials (all full, {prob.max_epochs} epochs) "
        f"took about {full_trial.median:.2f} s each (workers x budget / trials; median over "
        f"seeds, {full_trial.min:.2f}-{full_trial.max:.2f}).",
    ]

    def col(arm: str, key: str) -> list[float]:
        return _col(res, arm, key)

    for i, target in enumerate(prob.targets):
        default, random, tpe = (_times(res, arm, i) for arm in ("default", "random", "tpe"))
        per_seed = ratios(default, random)
        report.notes.append(_per_seed_note(target, per_seed, random, full_trial.median))
        report.figures += [
            figure(f"default / random: time to {target:g}", per_seed, Goal("<=", 1 / 3),
                   censored_note(prob, res, i, "default", "random")),
            figure(f"default / tpe without pruning: time to {target:g}", ratios(default, tpe),
                   note=censored_note(prob, res, i, "tpe")),
        ]
    report.figures += [
        figure("default / random: best val_accuracy at budget",
               ratios(col("default", "best"), col("random", "best")), note="higher is better"),
        figure("default / random: trials in budget",
               ratios(col("default", "trials"), col("random", "trials")),
               note="configurations tried in the same time"),
        figure("default / random: epochs spent",
               ratios(col("default", "epochs"), col("random", "epochs")),
               note="pruning ends poor trials early; epochs are the compute spent"),
    ]
    return report


def _per_seed_note(
    target: float, per_seed: list[float], random_times: list[float], full_trial_s: float
) -> str:
    """The per-seed ratios at one target, and the seeds no strategy could win: where
    random search hit the target in under three full trials' time, a third of it is less
    than one full trial, and a strategy has to finish a trial to count."""
    quick = [seed for seed, t in enumerate(random_times) if t < 3 * full_trial_s]
    note = (f"Default / random time to {target:g} by seed: "
            + ", ".join(f"{seed}: {r:.2f}" for seed, r in enumerate(per_seed)) + ".")
    if quick:
        note += (
            f" In seed(s) {', '.join(map(str, quick))} random search reached {target:g} in "
            f"{', '.join(f'{random_times[seed]:.1f}' for seed in quick)} s, under three full "
            f"trials ({full_trial_s:.2f} s each): a third of that is less than one full trial, "
            "so no strategy could meet the goal there."
        )
    return note


def _hyperopt(prob: Problem, res: dict[str, list[Outcome]], why_not: str | None) -> Report:
    report = Report("hyperopt", "Hyperopt TPE vs tuner default, 1 worker each")
    report.notes.append(
        "Ray Tune is not run: its wheel and dependencies are several hundred MB for one "
        "comparison, and its trial scheduling needs its own cluster runtime on 2 cores."
    )
    if why_not is not None:
        report.skipped = why_not
        return report
    arms = ("default, 1 worker", "hyperopt, 1 worker")
    report.details = describe(prob, {k: res[k] for k in arms})
    report.details["import_s"] = {
        "hyperopt": hyperopt_compare.import_seconds("hyperopt"),
        "tuner": hyperopt_compare.import_seconds("tuner.engine"),
    }
    report.notes.append(
        "Start-up, not counted in the time to target: importing (fresh interpreter) "
        f"hyperopt {report.details['import_s']['hyperopt']:.2f} s, tuner.engine "
        f"{report.details['import_s']['tuner']:.2f} s."
    )
    report.figures += [
        figure(f"tuner / hyperopt: time to {target:g}",
               ratios(_times(res, arms[0], i), _times(res, arms[1], i)),
               Goal("<=", 1.0), censored_note(prob, res, i, *arms))
        for i, target in enumerate(prob.targets)
    ]
    report.figures += [
        figure("tuner / hyperopt: best val_accuracy at budget",
               ratios(_col(res, arms[0], "best"), _col(res, arms[1], "best")),
               note="higher is better"),
        figure("tuner / hyperopt: trials in budget",
               ratios(_col(res, arms[0], "trials"), _col(res, arms[1], "trials"))),
    ]
    return report
