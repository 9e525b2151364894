"""Shared parts of every benchmark: paired seeds, ratio statistics, the report record.

Every figure is a ratio of two arms measured side by side in the same run: for each
seed the arms run back to back (A, B, then B, A for the next seed, so slow drift in
machine load falls on both), and the figure is the median of the per-seed ratios with
their min and max.

>>> results = interleave([0, 1], {"a": lambda s: s + 1.0, "b": lambda s: 2.0 * (s + 1)})
>>> stats([b / a for a, b in zip(results["a"], results["b"], strict=True)]).median
2.0
"""

from __future__ import annotations

import math
import operator
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

Record = tuple[float, float | None, int, str]
"""One trial of a time-to-target arm: seconds from the start to its end, its value
(None unless complete), epochs it trained, and its state."""


@dataclass(frozen=True)
class Finish:
    """When a time-to-target arm stops: at the budget once it has reached the target,
    else when it does, and at the cap whatever happened. The arm's worker processes
    share ``marker``, a file the first trial to reach the target creates, so the check
    between epochs costs a stat, not a database read."""

    marker: Path
    target: float
    budget_at: float
    cap_at: float

    def record(self, value: float | None) -> None:
        """Note a completed trial's value (maximised)."""
        if value is not None and math.isfinite(value) and value >= self.target:
            self.marker.touch()

    def due(self) -> bool:
        now = time.time()
        return now >= self.cap_at or (now >= self.budget_at and self.marker.exists())


@dataclass(frozen=True)
class Size:
    """How big a run is: the full benchmark, or the toy size that proves the harness."""

    smoke: bool
    seeds: int

    @property
    def label(self) -> str:
        return "smoke" if self.smoke else "full"


FULL = Size(smoke=False, seeds=5)
SMOKE = Size(smoke=True, seeds=2)


def interleave(seeds: Sequence[int], arms: Mapping[str, Callable[[int], T]]) -> dict[str, list[T]]:
    """Run every arm once per seed, arms back to back, reversing their order every
    other seed; returns each arm's results in seed order."""
    results: dict[str, list[T]] = {name: [] for name in arms}
    order = list(arms)
    for i, seed in enumerate(seeds):
        for name in order if i % 2 == 0 else reversed(order):
            results[name].append(arms[name](seed))
    return results


@dataclass(frozen=True)
class Stats:
    """Median, min and max of per-seed values."""

    median: float
    min: float
    max: float
    n: int


def stats(values: Sequence[float]) -> Stats:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return Stats(math.nan, math.nan, math.nan, 0)
    return Stats(statistics.median(finite), min(finite), max(finite), len(finite))


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-seed ratios of two arms (NaN where the denominator is zero)."""
    return [a / b if b else math.nan for a, b in zip(numerator, denominator, strict=True)]


Op = Literal["<=", ">=", "<"]
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt,
}


@dataclass(frozen=True)
class Goal:
    """What the median must satisfy, e.g. ``Goal("<=", 1 / 3)``."""

    op: Op
    value: float

    def met(self, x: float) -> bool | None:
        return None if math.isnan(x) else _OPS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:.3g}"


@dataclass(frozen=True)
class Figure:
    """One reported ratio: what it divides, its per-seed statistics and its goal."""

    name: str
    ratio: Stats
    values: list[float]
    goal: str | None = None
    met: bool | None = None
    note: str = ""


def figure(name: str, values: Sequence[float], goal: Goal | None = None, note: str = "") -> Figure:
    s = stats(values)
    return Figure(
        name=name,
        ratio=s,
        values=[round(v, 6) for v in values],
        goal=str(goal) if goal else None,
        met=goal.met(s.median) if goal else None,
        note=note,
    )


@dataclass
class Report:
    """What one benchmark measured: its ratios, raw details and notes for the table."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def timed(run: Callable[[], Report]) -> Report:
    """Run one benchmark and record its wall time."""
    started = time.perf_counter()
    report = run()
    report.seconds = round(time.perf_counter() - started, 1)
    return report


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine() -> dict[str, Any]:
    """Cores and versions, so a table can be read against the machine that made it."""
    return {
        "cores": cores(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "optuna": _version("optuna"),
        "sqlalchemy": _version("sqlalchemy"),
        "fastapi": _version("fastapi"),
        "uvicorn": _version("uvicorn"),
        "optuna-dashboard": _version("optuna-dashboard"),
        "hyperopt": _version("hyperopt"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
