"""Read what one response needs from a job's Optuna study, not the whole study.

``optuna.Study.get_trials`` loads every trial with all its params, values and
attributes: with 10,000 trials that is ~50,000 rows per request. Here counts and the
mean duration are aggregated in SQL (one GROUP BY), a page of trials is picked by an ordered query
(``ORDER BY number`` or by the first value, ``LIMIT``/``OFFSET``), and only the trials
on it are loaded, in five queries whatever their number. Trials come back as
``FrozenTrial`` objects as Optuna's storage would build them (times as naive local
time), with only the user attributes asked for.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.study import StudyDirection
from optuna.study._multi_objective import _is_pareto_front
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Connection, and_, asc, case, desc, func, select

from tuner.jobs.optuna_tables import (
    seconds_between,
    trial_intermediate_values,
    trial_params,
    trial_user_attributes,
    trial_values,
    trials,
)

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
_STORED = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}
"""Non-finite values are stored as NULL plus their type's name."""


@dataclass(frozen=True)
class TrialStats:
    counts: dict[TrialState, int]
    """Trials per state, every state (zero included)."""
    mean_finished_s: float | None
    """Mean duration of the finished trials; None before any finished."""


def trial_stats(conn: Connection, study_id: int) -> TrialStats:
    """Counts by state and the finished trials' mean duration: one GROUP BY."""
    seconds = seconds_between(conn, trials.c.datetime_start, trials.c.datetime_complete)
    query = (
        select(trials.c.state, func.count(), func.count(seconds), func.sum(seconds))
        .where(trials.c.study_id == study_id)
        .group_by(trials.c.state)
    )
    counts = dict.fromkeys(TrialState, 0)
    timed, total_s = 0, 0.0
    for state, n, n_timed, state_s in conn.execute(query):
        counts[TrialState[state]] = n
        if state in FINISHED and n_timed:
            timed, total_s = timed + n_timed, total_s + float(state_s)
    return TrialStats(counts, total_s / timed if timed else None)


def page_ids(
    conn: Connection,
    study_id: int,
    *,
    sort: Literal["number", "value"] = "number",
    maximize: bool = False,
    state: TrialState | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[int], bool]:
    """Trial ids of one page and whether more follow.

    ``number``: oldest first. ``value``: trials with a first value first, best first
    (infinities at their ends), ties and the rest by number.
    """
    first = and_(trial_values.c.trial_id == trials.c.trial_id, trial_values.c.objective == 0)
    query = select(trials.c.trial_id).where(trials.c.study_id == study_id)
    if state is not None:
        query = query.where(trials.c.state == state.name)
    if sort == "value":
        kind = case(
            (trial_values.c.value_type == "INF_NEG", -1),
            (trial_values.c.value_type == "INF_POS", 1),
            else_=0,
        )
        way = desc if maximize else asc
        query = query.outerjoin(trial_values, first).order_by(
            trial_values.c.trial_id.is_(None), way(kind), way(trial_values.c.value)
        )
    query = query.order_by(trials.c.number).offset(offset).limit(limit + 1)
    ids = list(conn.scalars(query))
    return ids[:limit], len(ids) > limit


def trial_id(conn: Connection, study_id: int, number: int) -> int | None:
    return conn.scalar(
        select(trials.c.trial_id).where(trials.c.study_id == study_id, trials.c.number == number)
    )


def pareto_front_ids(
    conn: Connection, study_id: int, directions: Sequence[StudyDirection]
) -> list[int]:
    """Ids of the complete trials no other complete trial dominates, by number.

    Reads only the values (one row per trial and objective), like ``Study.best_trials``.
    """
    query = (
        select(trial_values.c.trial_id, trial_values.c.objective, trial_values.c.value,
               trial_values.c.value_type)
        .join(trials, trials.c.trial_id == trial_values.c.trial_id)
        .where(trials.c.study_id == study_id, trials.c.state == "COMPLETE")
        .order_by(trials.c.number)
    )
    values: dict[int, list[float]] = defaultdict(lambda: [math.nan] * len(directions))
    for tid, objective, value, kind in conn.execute(query):
        values[tid][objective] = _stored(value, kind)
    if not values:
        return []
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    on_front = _is_pareto_front(np.array(list(values.values())) * signs, False)
    return [tid for tid, front in zip(values, on_front, strict=True) if front]


def load_trials(
    conn: Connection, ids: Sequence[int], user_attrs: Collection[str]
) -> list[FrozenTrial]:
    """The trials ``ids`` in that order with only the ``user_attrs`` keys: five queries
    at most."""
    if not ids:
        return []
    rows = {row.trial_id: row for row in conn.execute(
        select(trials).where(trials.c.trial_id.in_(ids))
    )}
    values: dict[int, dict[int, float]] = defaultdict(dict)
    for tid, objective, value, kind in conn.execute(
        select(trial_values.c.trial_id, trial_values.c.objective, trial_values.c.value,
               trial_values.c.value_type).where(trial_values.c.trial_id.in_(ids))
    ):
        values[tid][objective] = _stored(value, kind)
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    dists: dict[int, dict[str, BaseDistribution]] = defaultdict(dict)
    for tid, name, internal, dist_json in conn.execute(
        select(trial_params.c.trial_id, trial_params.c.param_name, trial_params.c.param_value,
               trial_params.c.distribution_json)
        .where(trial_params.c.trial_id.in_(ids))
        .order_by(trial_params.c.param_id)
    ):
        dist = _distribution(dist_json)
        params[tid][name] = dist.to_external_repr(internal)
        dists[tid][name] = dist
    attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    for tid, key, value_json in conn.execute(
        select(trial_user_attributes.c.trial_id, trial_user_attributes.c.key,
               trial_user_attributes.c.value_json)
        .where(trial_user_attributes.c.trial_id.in_(ids),
               trial_user_attributes.c.key.in_(list(user_attrs)))
    ) if user_attrs else ():
        attrs[tid][key] = json.loads(value_json)
    steps: dict[int, dict[int, float]] = defaultdict(dict)
    iv = trial_intermediate_values.c
    for tid, step, value, kind in conn.execute(
        select(iv.trial_id, iv.step, iv.intermediate_value, iv.intermediate_value_type)
        .where(iv.trial_id.in_(ids))
        .order_by(iv.trial_id, iv.step)
    ):
        steps[tid][step] = _stored(value, kind)
    return [
        FrozenTrial(
            number=rows[tid].number,
            state=TrialState[rows[tid].state],
            value=None,
            values=[v for _, v in sorted(values[tid].items())] if tid in values else None,
            datetime_start=_local(rows[tid].datetime_start),
            datetime_complete=_local(rows[tid].datetime_complete),
            params=params[tid],
            distributions=dists[tid],
            user_attrs=attrs[tid],
            system_attrs={},
            intermediate_values=steps[tid],
            trial_id=tid,
        )
        for tid in ids
        if tid in rows
    ]


def _stored(value: float | None, kind: str) -> float:
    return _STORED[kind] if kind in _STORED else float(value)  # type: ignore[arg-type]


@lru_cache(maxsize=1024)
def _distribution(dist_json: str) -> BaseDistribution:
    """A study has few distinct distributions; each is parsed once per process."""
    return json_to_distribution(dist_json)


def _local(utc: datetime | None) -> datetime | None:
    """Optuna stores naive UTC and hands out naive local time."""
    return None if utc is None else utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)
