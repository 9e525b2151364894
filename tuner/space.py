"""Search space -> Optuna suggestions, nested and conditional (define-by-run).

A resolved space maps each dimension name to a spec ``Dimension``: a ``Range``, a
``Choice``, ``Branches`` (optimizer, loss and schedule, whose branches have their own
parameters) or a plain value. ``suggest`` turns it into the hyperparameters ``train``
consumes; ``fix`` turns a finished trial back into a space where every value is plain,
so ``suggest`` on it gives exactly that trial's hyperparameters again.

>>> import optuna
>>> from tuner.spec import Branches, Range
>>> space = {"lr": Range(low=1e-3, high=0.1, log=True), "batch_size": 32,
...          "optimizer": Branches(choices={"sgd": {"momentum": Range(low=0.0, high=0.9)}})}
>>> hp = suggest(optuna.trial.FixedTrial({"lr": 0.01, "optimizer.sgd.momentum": 0.5}), space)
>>> hp["optimizer"]["momentum"], hp["batch_size"]
(0.5, 32)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tuner.spec import (
    NESTED,
    SCALARS,
    Branches,
    Choice,
    Dimension,
    Range,
    SpecError,
    StudySpec,
    Task,
)
from tuner.train import BRANCH_DEFAULTS

__all__ = ["BRANCH_DEFAULTS", "distributions", "fix", "grid", "resolve_space", "suggest"]

MAX_GRID = 10_000
"""Grids larger than this are a random search in disguise; the grid sampler refuses them."""


class SpaceOwner(Protocol):
    """What ``resolve_space`` needs from an objective (see ``tuner.objective``)."""

    name: str
    params: dict[str, type]

    def default_space(self, task: Task | None) -> dict[str, Dimension]: ...


# --- the parameters a space suggests -----------------------------------------------


def _kind(dim: str, value: Range) -> type:
    """int or float: the declared type of a common dimension, else the bounds' type
    (``resolve_space`` gives objective parameters bounds of their declared type)."""
    if dim in SCALARS:
        return SCALARS[dim]
    numbers = (value.low, value.high) if value.step is None else (value.low, value.high, value.step)
    return int if all(isinstance(v, int) and not isinstance(v, bool) for v in numbers) else float


def _distribution(value: Range | Choice, kind: type) -> BaseDistribution:
    if isinstance(value, Choice):
        return CategoricalDistribution(value.choices)
    if kind is int:
        return IntDistribution(
            int(value.low), int(value.high), log=value.log, step=int(value.step or 1)
        )
    return FloatDistribution(
        float(value.low), float(value.high), log=value.log,
        step=None if value.step is None else float(value.step),
    )


def _branches(dim: str, value: Any) -> dict[str, dict[str, Any]] | None:
    """The branches of a nested dimension ({name: {param: Dimension}}), None if not nested."""
    if dim not in NESTED:
        return None
    if isinstance(value, Branches):
        return value.choices
    if isinstance(value, Choice):
        return {str(c): {} for c in value.choices}
    return {str(value): {}}


def _searched(space: Mapping[str, Any]) -> dict[str, tuple[BaseDistribution, tuple[str, ...]]]:
    """Every Optuna parameter the space can suggest, with its distribution.

    The key is the Optuna name; the tuple says where it lives: ``(dim,)`` for a plain
    dimension or a branch name, ``(dim, branch, param)`` for a branch parameter.
    Dimensions with a single possible value are fixed, not suggested.
    """
    found: dict[str, tuple[BaseDistribution, tuple[str, ...]]] = {}
    for dim, value in space.items():
        branches = _branches(dim, value)
        if branches is None:
            if isinstance(value, Range | Choice) and not _single(value):
                found[dim] = (_distribution(value, _kind(dim, value)), (dim,))
            continue
        if len(branches) > 1:
            found[dim] = (CategoricalDistribution(list(branches)), (dim,))
        for branch, params in branches.items():
            for param, sub in params.items():
                if isinstance(sub, Range | Choice) and not _single(sub):
                    kind = NESTED[dim][branch][param]
                    found[f"{dim}.{branch}.{param}"] = (
                        _distribution(sub, kind), (dim, branch, param)
                    )
    return found


def _single(value: Range | Choice) -> bool:
    return isinstance(value, Choice) and len(value.choices) == 1


def _plain(value: Any, kind: type | None) -> Any:
    """The one value of a fixed dimension, typed as the dimension declares."""
    if isinstance(value, Choice):
        value = value.choices[0]
    if kind is int and isinstance(value, float):
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _ask(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


# --- public face -------------------------------------------------------------------


def suggest(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Suggest every searched dimension; return the resolved hyperparameters.

    Plain dimensions come back flat; nested ones as ``{"name": branch, **params}``, where
    only the chosen branch's parameters are suggested (``optimizer.sgd.momentum``) and
    parameters the space leaves out take ``BRANCH_DEFAULTS``.
    """
    searched = _searched(space)
    hp: dict[str, Any] = {}
    for dim, value in space.items():
        branches = _branches(dim, value)
        if branches is None:
            hp[dim] = (
                _ask(trial, dim, searched[dim][0]) if dim in searched
                else _plain(value, SCALARS.get(dim))
            )
            continue
        branch = _ask(trial, dim, searched[dim][0]) if dim in searched else next(iter(branches))
        params = dict(BRANCH_DEFAULTS.get(dim, {}).get(branch, {}))
        for param, sub in branches[branch].items():
            name = f"{dim}.{branch}.{param}"
            params[param] = (
                _ask(trial, name, searched[name][0]) if name in searched
                else _plain(sub, NESTED[dim][branch][param])
            )
        hp[dim] = {"name": branch, **params}
    return hp


def resolve_space(
    spec: StudySpec, objective: SpaceOwner, task: Task | None = None
) -> dict[str, Dimension]:
    """The objective's default space with the spec's dimensions laid over it.

    A dimension the spec gives replaces the default whole. ``epochs`` is fixed to
    ``budget.max_epochs`` unless searched. ``task`` (known once the data is loaded)
    picks the default losses; it falls back to what the spec's dataset says.
    """
    space: dict[str, Dimension] = dict(objective.default_space(task or spec.task))
    space["epochs"] = spec.budget.max_epochs
    for dim, value in spec.search_space.items():
        if dim in SCALARS or dim in NESTED:
            space[dim] = value
        elif dim in objective.params:
            space[dim] = _typed(value, objective.params[dim])
        else:
            own = ", ".join(objective.params) or "none"
            raise SpecError(
                f"search_space.{dim}: objective {objective.name!r} has no parameter {dim!r}; "
                f"use the common dimensions ({', '.join([*SCALARS, *NESTED])}) "
                f"or its own parameters ({own})"
            )
    return space


def _typed(value: Any, kind: type) -> Any:
    """Give an objective parameter's range bounds of its declared type (int or float),
    which is what ``suggest`` reads to pick ``suggest_int`` or ``suggest_float``."""
    if not isinstance(value, Range) or kind not in (int, float):
        return value
    numbers = (value.low, value.high, value.step or 1)
    if kind is int and not all(float(v).is_integer() for v in numbers):
        raise SpecError("an integer parameter needs whole-number low, high and step")
    step = None if value.step is None else kind(value.step)
    return Range(low=kind(value.low), high=kind(value.high), log=value.log, step=step)


def fix(space: Mapping[str, Dimension], params: Mapping[str, Any]) -> dict[str, Dimension]:
    """Every dimension as the plain value a trial (its ``trial.params``) took.

    Nested dimensions become a plain branch name, or ``Branches`` with exactly one
    branch whose parameters are plain, so the exported spec still says the values.
    """
    searched = _searched(space)
    missing = sorted(set(searched) - set(params) - _inactive(space, params))
    if missing:
        raise SpecError(f"the trial has no value for {', '.join(missing)}; was the space changed?")
    fixed: dict[str, Dimension] = {}
    for dim, value in space.items():
        branches = _branches(dim, value)
        if branches is None:
            fixed[dim] = params[dim] if dim in searched else _plain(value, SCALARS.get(dim))
            continue
        branch = params[dim] if dim in searched else next(iter(branches))
        chosen = {
            param: params.get(f"{dim}.{branch}.{param}", _plain(sub, NESTED[dim][branch][param]))
            for param, sub in branches[branch].items()
        }
        fixed[dim] = Branches(choices={branch: chosen}) if chosen else branch
    return fixed


def _inactive(space: Mapping[str, Any], params: Mapping[str, Any]) -> set[str]:
    """Branch parameters of the branches the trial did not take."""
    return {
        name for name, (_, where) in _searched(space).items()
        if len(where) == 3 and where[1] != params.get(where[0], where[1])
    }


def distributions(space: Mapping[str, Dimension]) -> dict[str, BaseDistribution]:
    """Optuna distributions of every parameter the space suggests, by Optuna name.

    Used to keep only the warm-start values that still fit the space.
    """
    return {name: dist for name, (dist, _) in _searched(space).items()}


def grid(space: Mapping[str, Dimension]) -> dict[str, list[Any]]:
    """The values of every suggested parameter, for ``optuna.samplers.GridSampler``."""
    values: dict[str, list[Any]] = {}
    continuous: list[str] = []
    for name, (dist, _) in _searched(space).items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            values[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            n = math.floor((dist.high - dist.low) / dist.step + 1e-9)
            values[name] = [round(dist.low + i * dist.step, 12) for i in range(n + 1)]
        else:
            continuous.append(name)
    if continuous:
        raise SpecError(
            f"the grid sampler needs discrete dimensions, but {', '.join(continuous)} "
            "are continuous ranges (some may be the objective's defaults); give each a step, "
            "a list of choices or a plain value in search_space"
        )
    size = math.prod(len(v) for v in values.values())
    if size > MAX_GRID:
        counts = ", ".join(f"{k}: {len(v)}" for k, v in values.items())
        raise SpecError(
            f"the grid has {size} points (more than {MAX_GRID}): {counts}; "
            "fix some dimensions or use fewer choices, or use the tpe sampler"
        )
    return values
