"""Optuna's RDB storage, with trials read in SQLAlchemy Core instead of the ORM.

Reading trials is most of what Optuna does with its database: a running trial is read
back three times per trial (``Trial()`` in ``ask``, ``tell``, and ``optimize`` before
its callbacks), every ``ask`` and sampler refresh reads the trials that changed, and
the dashboard reads whole studies. Through the ORM each trial costs its row plus five
related rows' objects (a single trial: 3.4-4.2 ms of Python on SQLite); here the same
rows come in six Core selects whatever the number of trials (1.4 ms for one trial).
Writes stay Optuna's own code. Rows are decoded by Optuna's own table definitions and
helpers, and ``tests/test_storage.py`` checks every read against ``RDBStorage``'s for
every kind of trial.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Container, Iterable, Sequence
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import ColumnElement, Connection, Row, Select, Table, exc, or_, select

__all__ = ["TunerStorage"]

_trials: Table = models.TrialModel.__table__
_studies: Table = models.StudyModel.__table__
_values: Table = models.TrialValueModel.__table__
_params: Table = models.TrialParamModel.__table__
_user_attrs: Table = models.TrialUserAttributeModel.__table__
_system_attrs: Table = models.TrialSystemAttributeModel.__table__
_steps: Table = models.TrialIntermediateValueModel.__table__


class TunerStorage(RDBStorage):
    """``RDBStorage`` whose trial reads run in Core (see the module docstring)."""

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self.engine.connect() as conn:
            found = _read(conn, _trials.c.trial_id == trial_id)
        if not found:
            raise KeyError(models.NOT_FOUND_MSG)
        return found[0]

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """The study's trials (in ``states``), by trial id; where ``trial_id_greater_than``
        is set, only those past it or in ``included_trial_ids`` (Optuna's cache asks for
        the trials that changed since its last read)."""
        included = {i for i in included_trial_ids if i <= trial_id_greater_than}
        where: list[ColumnElement[bool]] = [_trials.c.study_id == study_id]
        if states is not None:
            assert isinstance(states, Iterable)
            where.append(_trials.c.state.in_(list(states)))
        newer = _trials.c.trial_id > trial_id_greater_than
        study = select(_studies.c.study_id).where(_studies.c.study_id == study_id)
        with self.engine.connect() as conn:
            if conn.scalar(study) is None:
                raise KeyError(models.NOT_FOUND_MSG)
            if trial_id_greater_than <= -1:
                return _read(conn, *where)
            if not included:
                return _read(conn, *where, newer)
            try:
                return _read(conn, *where, or_(_trials.c.trial_id.in_(included), newer))
            except exc.OperationalError:  # more ids than the database takes in one IN
                conn.rollback()
                return [
                    t for t in _read(conn, *where)
                    if t._trial_id in included or t._trial_id > trial_id_greater_than
                ]


def _read(conn: Connection, *where: ColumnElement[bool]) -> list[FrozenTrial]:
    """The trials matching ``where``, by trial id, with everything Optuna keeps of them."""
    chosen = select(_trials.c.trial_id).where(*where)
    heads = conn.execute(
        select(
            _trials.c.trial_id, _trials.c.number, _trials.c.state, _trials.c.datetime_start,
            _trials.c.datetime_complete,
        ).where(*where).order_by(_trials.c.trial_id)
    ).all()
    if not heads:
        return []

    def of(table: Table, *columns: str, order_by: str | None = None) -> dict[int, list[Row[Any]]]:
        query: Select[Any] = select(table.c.trial_id, *(table.c[name] for name in columns))
        query = query.where(table.c.trial_id.in_(chosen))
        if order_by is not None:
            query = query.order_by(table.c[order_by])
        by_trial: dict[int, list[Row[Any]]] = defaultdict(list)
        for row in conn.execute(query):
            by_trial[row[0]].append(row)
        return by_trial

    values = of(_values, "objective", "value", "value_type")
    params = of(_params, "param_name", "param_value", "distribution_json", order_by="param_id")
    user_attrs = of(_user_attrs, "key", "value_json")
    system_attrs = of(_system_attrs, "key", "value_json")
    steps = of(_steps, "step", "intermediate_value", "intermediate_value_type")
    return [
        _frozen(head, values[head.trial_id], params[head.trial_id], user_attrs[head.trial_id],
                system_attrs[head.trial_id], steps[head.trial_id])
        for head in heads
    ]


def _frozen(
    head: Row[Any],
    values: Sequence[Row[Any]],
    params: Sequence[Row[Any]],
    user_attrs: Sequence[Row[Any]],
    system_attrs: Sequence[Row[Any]],
    steps: Sequence[Row[Any]],
) -> FrozenTrial:
    """One trial as ``RDBStorage`` builds it (rows carry the trial id first)."""
    dists = {name: distributions.json_to_distribution(d) for _, name, _, d in params}
    return FrozenTrial(
        number=head.number,
        state=head.state,
        value=None,
        values=_objective_values(values),
        datetime_start=head.datetime_start,
        datetime_complete=head.datetime_complete,
        params={name: dists[name].to_external_repr(v) for _, name, v, _ in params},
        distributions=dists,
        user_attrs={key: json.loads(v) for _, key, v in user_attrs},
        system_attrs={key: json.loads(v) for _, key, v in system_attrs},
        intermediate_values={
            step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(v, kind)
            for _, step, v, kind in steps
        },
        trial_id=head.trial_id,
    )


def _objective_values(rows: Sequence[Row[Any]]) -> list[float] | None:
    """Values by objective index, decoded as Optuna stores them (infinities by type)."""
    if not rows:
        return None
    values = [0.0] * len(rows)
    for _, objective, value, kind in rows:
        values[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
    return values
