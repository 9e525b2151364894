"""When a trial's epochs reach Optuna, and when its pruner is asked.

Reporting an epoch is a transaction, and asking successive halving or Hyperband reads
the trial back from the database (their rungs live in its system attributes): a few
milliseconds an epoch on SQLite, yet those pruners can only cut a trial at a rung,
``min_resource * reduction_factor**k`` epochs. So a trial's epochs are kept here and
written in one transaction where the pruner may act, at least every ``FLUSH_S``
seconds (live curves stay live), and when the trial ends. Measured: 40 trials of the
default strategy on the time-to-target task took 9% less wall time.

>>> from tuner.spec import parse_spec
>>> spec = parse_spec({"name": "x", "dataset": {"name": "iris"}, "budget": {"max_epochs": 27}})
>>> [epoch for epoch in range(1, 28) if may_prune(spec)(epoch)]
[3, 9]

Nor is it asked to cut a trial at its last epoch: the epochs are spent by then, and a cut
would only turn a finished result into a pruned one (in one time-to-target run, 2 of 75
trials were cut after all 27 epochs, one of them at 0.742, past the target). A trial
that ends before ``max_epochs`` still shows the pruner its last epoch, for the rung
later trials are compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from tuner.spec import StudySpec
from tuner.trial_writes import write

__all__ = [
    "FLUSH_S",
    "EpochReporter",
    "asha_min_resource",
    "may_prune",
    "min_resource",
]

FLUSH_S = 1.0
"""Longest a reported epoch waits before it is written (and seen by the dashboard)."""


def asha_min_resource(max_epochs: int, reduction_factor: int) -> int:
    """Epochs before successive halving's first cut: two cuts before ``max_epochs``
    (27 -> rungs at 3, 9 and 27 epochs; 20 -> 2, 6, 18).

    Not 1: one epoch's accuracy ranks configurations poorly (slow starters with a small
    learning rate are cut), and cheap one-epoch trials spend the time on sampling and
    storage instead. time_to_target pilots (max_epochs 27, 15 s, 2 workers, 32 paired
    seeds on a shared 2-core machine): min_resource 3 reached the target before 1 in 21
    of 32 (median ratio 0.89, 0.17-4.3) and ended with the better best value in 21 of
    32, in about the same epochs; a modest gain, within the noise of any one run.

    Nor later or gentler, though a cut at 3 epochs is blind among good configurations
    (in random search's full trials on that task, those ending at 0.68 or more: rank
    correlation of epoch 3 with the end 0.07, of epoch 9 0.37; over all trials 0.92, so
    it does cut the poor ones). Paired runs, stopped at the target: one cut at 9 epochs
    was sooner in 13 of 30 (9 of 16 at a harder target, 0.745 in 60 s), reduction
    factor 2 in 10 of 30.
    """
    return max(1, max_epochs // reduction_factor**2)


def min_resource(spec: StudySpec) -> int:
    """Epochs to the first rung of the spec's successive halving or Hyperband."""
    p = spec.resolved_pruner
    if p.min_resource is not None:
        return p.min_resource
    if p.name == "hyperband":
        return 1
    return asha_min_resource(spec.budget.max_epochs, p.reduction_factor)


def may_prune(spec: StudySpec) -> Callable[[int], bool]:
    """Whether the spec's pruner can cut a trial after ``epoch`` (numbered from 1); never
    at ``max_epochs``, where every trial ends anyway."""
    p, last = spec.resolved_pruner, spec.budget.max_epochs
    match p.name:
        case "none":
            return lambda epoch: False
        case "successive_halving" | "hyperband":
            first, factor = min_resource(spec), p.reduction_factor
            return lambda epoch: epoch < last and _is_rung(epoch, first, factor)
        case "median" | "percentile" | "threshold":
            return lambda epoch: p.n_warmup_steps <= epoch < last
    return lambda epoch: epoch < last


def _is_rung(epoch: int, first: int, factor: int) -> bool:
    """``epoch == first * factor**k`` for some k >= 0."""
    if epoch < first or epoch % first:
        return False
    k = epoch // first
    while k % factor == 0:
        k //= factor
    return k == 1


class EpochReporter:
    """A running trial's epochs on their way to Optuna, and its pruner's verdicts."""

    def __init__(self, trial: optuna.Trial, spec: StudySpec, epochs: int) -> None:
        self.trial = trial
        self.may_prune = may_prune(spec)
        self.last_epoch = epochs
        self.pending: dict[int, float] = {}
        self.flushed = time.monotonic()

    def report(self, epoch: int, value: float) -> None:
        """Keep ``epoch``'s value; where the pruner may act, write and ask it (raises
        ``optuna.TrialPruned`` for a cut, except at the trial's last epoch)."""
        self.pending[epoch] = value
        asks = self.may_prune(epoch)
        if asks or time.monotonic() - self.flushed >= FLUSH_S:
            self.flush()
        if asks and self.trial.should_prune() and epoch < self.last_epoch:
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    def flush(self, user_attrs: Mapping[str, Any] | None = None) -> None:
        """Write the kept epochs, and ``user_attrs`` with them, in one transaction."""
        write(self.trial, user_attrs=user_attrs or {}, steps=self.pending)
        self.pending = {}
        self.flushed = time.monotonic()
