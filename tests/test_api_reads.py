"""A job with thousands of trials is read by the page, not by the study.

The job detail (counts, best, ETA) and one page of trials must cost a few queries
whatever the study's size, and answer exactly what loading every trial would: each
answer here is compared with ``TrialOut.of`` over ``get_all_trials``, while a
``before_cursor_execute`` listener on the app's Optuna engine counts the statements
and the ids each one asks for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event

from api.app import create_app
from api.schemas import TrialOut
from benchmarks.api_load import fill
from tuner.jobs.db import make_engine, migrate
from tuner.jobs.models import Job
from tuner.jobs.store import JobStore
from tuner.settings import Settings
from tuner.spec import StudySpec, parse_spec

N = 2000
PAGE = 50
MAX_STATEMENTS = 12
"""Per request: the job row, the study id and directions, then the aggregates or the page."""

DISTS = {"lr": FloatDistribution(0.01, 0.1, log=True), "width": CategoricalDistribution([8, 16])}


class Statements:
    """Every statement run on an engine while counting: the SQL and how many values it bound."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.on = False

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if self.on:
            self.seen.append((statement, len(parameters or ())))

    def during(self, call: Callable[[], Any]) -> Any:
        self.seen, self.on = [], True
        try:
            return call()
        finally:
            self.on = False


@contextmanager
def built(url: str, root: Path, n: int) -> Iterator[dict[str, Any]]:
    """A running job whose study holds ``n`` trials: a complete, a pruned, a failed, a
    running and an infinitely good trial told through Optuna, then copies of the first
    written in one transaction (as the API benchmark does)."""
    settings = Settings(
        database_url=url, artifact_root=root / "artifacts", data_root=root / "data", workers=0
    )
    migrate(url)
    engine = make_engine(url)
    app = create_app(settings)
    with TestClient(app) as client:
        store = JobStore(engine, app.state.storage)
        job, _ = store.create(_spec(n_trials=5 * n, parallelism=4))
        study = optuna.load_study(study_name=job.study_name, storage=app.state.storage)
        _tell(study, 0.61, steps=3)
        _tell(study, None, state=TrialState.PRUNED, steps=2)
        _tell(study, None, state=TrialState.FAIL, reason="diverged")
        study.ask(DISTS)
        _tell(study, math.inf)
        pareto = _two_metrics(store, app.state.storage)
        fill(url, job.study_name, n)  # last: it sets ids, which a PostgreSQL sequence ignores
        assert store.claim("reader-test") is not None  # running: the ETA is defined
        counter = Statements()
        event.listen(app.state.storage.engine, "before_cursor_execute", counter)
        yield {"client": client, "job": job, "study": study, "count": counter, "n": n,
               "pareto": pareto}
        event.remove(app.state.storage.engine, "before_cursor_execute", counter)
    engine.dispose()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("reads")
    with built(f"sqlite:///{root / 'tuner.db'}", root, N) as made:
        yield made


def _spec(n_trials: int = 3, **overrides: Any) -> StudySpec:
    return parse_spec({
        "name": "many", "objective": "mlp", "dataset": {"name": "iris"},
        "budget": {"n_trials": n_trials, "max_epochs": 3},
        "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"},
        "search_space": {"lr": {"low": 0.01, "high": 0.1, "log": True},
                         "width": {"choices": [8, 16]}},
        **overrides,
    })


def _tell(
    study: optuna.Study, value: float | list[float] | None, *,
    state: TrialState = TrialState.COMPLETE, steps: int = 0, reason: str | None = None,
) -> None:
    trial = study.ask(DISTS)
    for step in range(1, steps + 1):
        trial.report(0.5 + 0.01 * step, step)
    trial.set_user_attr("metrics", {"val_accuracy": 0.6, "train_seconds": 0.3})
    trial.set_user_attr("curves", {"train_loss": [1.0, 0.5]})  # not read by these routes
    if reason is not None:
        trial.set_user_attr("fail_reason", reason)
    study.tell(trial, value, state=state)


def _expected(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    return _settled([TrialOut.of(t).model_dump(mode="json") for t in trials])


def _settled(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items without the running trial's duration, which grows between two reads."""
    return [{**t, "duration_s": None} if t["state"] == "running" else t for t in items]


def _get(big: dict[str, Any], url: str, **params: Any) -> dict[str, Any]:
    response = big["count"].during(lambda: big["client"].get(url, params=params))
    assert response.status_code == 200, response.text
    return response.json()


def _assert_page_sized(big: dict[str, Any]) -> None:
    """Few statements, and none binds more values than a page has trials (Optuna's own
    loader asks for every trial of the study, 500 ids per statement)."""
    seen = big["count"].seen
    assert len(seen) <= MAX_STATEMENTS, [s for s, _ in seen]
    assert max(n for _, n in seen) <= PAGE + 4, max(seen, key=lambda s: s[1])[0]


def test_job_detail_aggregates_in_sql(big: dict[str, Any]) -> None:
    n = big["n"]
    job: Job = big["job"]
    all_trials = big["study"].get_trials(deepcopy=False)
    assert len(all_trials) == n
    got = _get(big, f"/v1/jobs/{job.id}")
    _assert_page_sized(big)
    counts = Counter(t.state.name.lower() for t in all_trials)
    by_state = {**got["trials"], "fail": got["trials"]["fail"] + got["trials"]["stopped"]}
    assert {k: by_state[k] for k in counts} == counts  # Optuna's FAIL: counted or stopped
    assert got["trials"]["waiting"] == 0
    best = big["study"].best_trial
    assert best.value == math.inf
    assert got["best"] == {
        "trial_number": best.number, "values": [None], "params": best.params,
        "pareto_front_size": None, "pareto_front": None,
    }
    durations = [t.duration.total_seconds() for t in all_trials if t.state.is_finished()]
    mean = sum(durations) / len(durations)
    assert got["eta_s"] == pytest.approx(mean * math.ceil(5 * n / 4), rel=1e-3)


@pytest.mark.parametrize("sort", ["number", "value"])
def test_a_page_loads_only_its_trials(big: dict[str, Any], sort: str) -> None:
    n = big["n"]
    all_trials = big["study"].get_trials(deepcopy=False)
    if sort == "value":  # best first (maximize), no value last, ties by number
        all_trials = sorted(all_trials, key=lambda t: (t.values is None, -(t.values or [0])[0]))
    url = f"/v1/jobs/{big['job'].id}/trials"
    first = _get(big, url, sort=sort, limit=PAGE)
    _assert_page_sized(big)
    assert _settled(first["items"]) == _expected(all_trials[:PAGE])
    assert first["next_cursor"] == str(PAGE)
    last = _get(big, url, sort=sort, limit=PAGE, cursor=str(n - 30))
    _assert_page_sized(big)
    assert _settled(last["items"]) == _expected(all_trials[n - 30:]) and last["next_cursor"] is None


def test_state_filter_and_one_trial(big: dict[str, Any]) -> None:
    n = big["n"]
    all_trials = big["study"].get_trials(deepcopy=False)
    url = f"/v1/jobs/{big['job'].id}/trials"
    for state in ("pruned", "fail", "running"):
        page = _get(big, url, state=state)
        _assert_page_sized(big)
        in_state = [t for t in all_trials if t.state.name.lower() == state]
        assert _settled(page["items"]) == _expected(in_state)
    assert _get(big, f"{url}/{n - 3}") == _expected([all_trials[n - 3]])[0]
    assert _settled([_get(big, f"{url}/3")]) == _expected([all_trials[3]])
    _assert_page_sized(big)
    missing = big["client"].get(f"{url}/{n}")
    assert missing.status_code == 404
    assert f"has no trial {n}; it has {n} trials" in missing.json()["detail"]


def _two_metrics(store: JobStore, storage: RDBStorage) -> tuple[Job, optuna.Study]:
    """A job of two metrics whose trials 0, 1, 3 (a tie with 0) and 4 are not dominated."""
    job, _ = store.create(_spec(metrics=[
        {"name": "val_accuracy", "direction": "maximize"},
        {"name": "val_loss", "direction": "minimize"},
    ]))
    study = optuna.load_study(study_name=job.study_name, storage=storage)
    for values in ([0.9, 0.5], [0.8, 0.2], [0.7, 0.6], [0.9, 0.5], [0.95, math.inf]):
        _tell(study, values)
    _tell(study, None, state=TrialState.FAIL)
    return job, study


def test_several_metrics_give_the_pareto_front(big: dict[str, Any]) -> None:
    job, study = big["pareto"]
    best = _get(big, f"/v1/jobs/{job.id}")["best"]
    _assert_page_sized(big)
    front = sorted(study.best_trials, key=lambda t: t.number)
    assert [t.number for t in front] == [0, 1, 3, 4]
    assert best["pareto_front_size"] == 4 and best["trial_number"] is None
    assert best["pareto_front"] == _expected(front)


def test_the_same_reads_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    """Enum columns, ordering by a boolean and date arithmetic differ on PostgreSQL."""
    with built(postgres_url, tmp_path, 300) as made:
        test_job_detail_aggregates_in_sql(made)
        for sort in ("number", "value"):
            test_a_page_loads_only_its_trials(made, sort)
        test_state_filter_and_one_trial(made)
        test_several_metrics_give_the_pareto_front(made)
