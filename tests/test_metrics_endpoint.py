"""GET /metrics: Prometheus text read from the database (jobs, trials, durations, workers)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import optuna
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from secure_app import make_service
from specs import tiny_spec
from sqlalchemy import create_engine, update
from test_api import client_for, make_settings, run_trials, spec

from tuner.jobs.db import make_engine, migrate
from tuner.jobs.models import WorkerRow, utcnow
from tuner.jobs.store import JobStore
from tuner.monitoring import DURATION_BUCKETS, TunerCollector
from tuner.settings import Settings


def scrape(client: TestClient, **headers: str) -> dict[str, list[Sample]]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        family.name: family.samples
        for family in text_string_to_metric_families(response.text)
    }


def by_label(samples: list[Sample], label: str = "state", name: str | None = None) -> dict:
    return {s.labels[label]: s.value for s in samples if name is None or s.name == name}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Settings]]:
    """Two jobs: one ran its 2 trials to the end, one was cancelled before it started."""
    settings = make_settings(tmp_path_factory.mktemp("metrics"))
    for client in client_for(settings):
        done = client.post("/v1/jobs", json=spec("done", n_trials=2)).json()
        run_trials(settings, 2)
        assert client.get(f"/v1/jobs/{done['id']}").json()["state"] == "succeeded"
        cancelled = client.post("/v1/jobs", json=spec("cancelled")).json()
        client.post(f"/v1/jobs/{cancelled['id']}/cancel")
        yield client, settings


def test_an_empty_service_reports_zeros(tmp_path: Path) -> None:
    for client in client_for(make_settings(tmp_path)):
        families = scrape(client)
    assert families["tuner_database_up"][0].value == 1
    assert set(by_label(families["tuner_jobs"]).values()) == {0}
    assert set(by_label(families["tuner_jobs"])) == {
        "queued", "running", "succeeded", "failed", "cancelled"
    }
    assert set(by_label(families["tuner_trials"]).values()) == {0}
    assert families["tuner_workers_live"][0].value == 0
    assert families["tuner_worker_last_heartbeat_timestamp_seconds"] == []
    assert "process_cpu_seconds" in families


def test_jobs_and_trials_by_state(ran: tuple[TestClient, Settings]) -> None:
    client, _ = ran
    families = scrape(client)
    jobs = by_label(families["tuner_jobs"])
    assert (jobs["succeeded"], jobs["cancelled"], jobs["queued"], jobs["running"]) == (1, 1, 0, 0)
    trials = by_label(families["tuner_trials"])
    assert trials["complete"] == 2 and trials["running"] == 0 and trials["fail"] == 0


def test_trial_durations_are_a_histogram_of_what_optuna_recorded(
    ran: tuple[TestClient, Settings],
) -> None:
    client, settings = ran
    histogram = scrape(client)["tuner_trial_duration_seconds"]
    complete = [s for s in histogram if s.labels["state"] == "complete"]
    count = by_label(complete, "state", "tuner_trial_duration_seconds_count")["complete"]
    total = by_label(complete, "state", "tuner_trial_duration_seconds_sum")["complete"]
    buckets = {
        s.labels["le"]: s.value for s in complete if s.name == "tuner_trial_duration_seconds_bucket"
    }
    storage = optuna.storages.RDBStorage(settings.database_url)
    durations = [
        t.duration.total_seconds()
        for s in optuna.get_all_study_summaries(storage)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
        if t.state == optuna.trial.TrialState.COMPLETE and t.duration is not None
    ]
    assert count == len(durations) == 2
    assert total == pytest.approx(sum(durations), abs=1e-3 * len(durations))  # ms precision
    assert buckets["+Inf"] == 2
    for bound in DURATION_BUCKETS:
        assert buckets[str(bound)] == sum(d <= bound for d in durations)


def test_live_workers_and_their_last_heartbeat(ran: tuple[TestClient, Settings]) -> None:
    client, settings = ran
    store = JobStore(make_engine(settings.database_url))
    store.register_worker("w-live", "host-a", 1234)
    store.register_worker("w-silent", "host-b", 5678)
    long_ago = utcnow() - timedelta(minutes=10)
    with store.engine.begin() as conn:
        conn.execute(update(WorkerRow).where(WorkerRow.id == "w-silent").values(
            heartbeat_at=long_ago
        ))
    families = scrape(client)
    assert families["tuner_workers_live"][0].value == 1  # w-live; the test's worker stopped
    beats = {
        s.labels["worker"]: s for s in families["tuner_worker_last_heartbeat_timestamp_seconds"]
    }
    assert beats["w-silent"].value == pytest.approx(long_ago.timestamp(), abs=1e-3)
    assert beats["w-silent"].labels == {"worker": "w-silent", "hostname": "host-b",
                                        "state": "lost"}  # it never said it stopped
    assert beats["w-live"].labels["state"] == "running"
    assert beats["w-live"].value > beats["w-silent"].value
    stopped = [s for s in beats.values() if s.labels["state"] == "stopped"]
    assert len(stopped) == 1  # the worker that ran the trials said it stopped
    store.engine.dispose()


def test_an_unreachable_database_reads_as_down_not_as_an_error(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'tuner.db'}")
    families = list(TunerCollector(engine, Settings()).collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("tuner_database_up", 0)]


def test_with_keys_metrics_need_a_read_key(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    reader = service.key("prometheus", "read")
    submitter = service.key("ci", "submit")
    with service.client() as anonymous:
        refused = anonymous.get("/metrics")
        assert refused.status_code == 401
        assert "Authorization: Bearer" in refused.json()["detail"]
    with service.client(submitter) as client:
        forbidden = client.get("/metrics")
        assert forbidden.status_code == 403
        assert "'read' scope" in forbidden.json()["detail"]
        assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201
    with service.client(reader) as client:
        families = scrape(client)
    assert by_label(families["tuner_jobs"])["queued"] == 1  # counts are service-wide



@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def test_the_collector_reads_optunas_tables_on_sqlite_and_postgres(db_url: str) -> None:
    migrate(db_url)
    storage = optuna.storages.RDBStorage(db_url)
    study = optuna.create_study(study_name="outside-tuner", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    study.ask()  # left running
    engine = make_engine(db_url)
    families = {f.name: f.samples for f in TunerCollector(engine, Settings()).collect()}
    engine.dispose()
    trials = by_label(families["tuner_trials"])
    assert (trials["complete"], trials["fail"], trials["running"]) == (3, 1, 1)
    finished = [t for t in study.trials if t.duration is not None]
    histogram = families["tuner_trial_duration_seconds"]
    counts = by_label(histogram, name="tuner_trial_duration_seconds_count")
    assert (counts["complete"], counts["fail"], counts["pruned"]) == (3, 1, 0)
    total = sum(by_label(histogram, name="tuner_trial_duration_seconds_sum").values())
    expected = sum(t.duration.total_seconds() for t in finished)
    assert total == pytest.approx(expected, abs=1e-3 * len(finished))  # SQLite: ms precision
    storage.engine.dispose()
