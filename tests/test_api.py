"""The HTTP API through TestClient: every endpoint and its error answers.

Jobs run for real: a worker runs in a thread of this process (``run_worker`` with
``max_trials``) against the same temporary SQLite database as the app.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from fastapi.testclient import TestClient
from optuna.artifacts import get_all_artifact_meta
from safetensors import safe_open
from specs import TINY_SPACE, tiny_spec

from api.app import create_app
from api.schemas import TrialCounts
from tuner.jobs.db import migrate
from tuner.jobs.models import Job
from tuner.settings import Settings
from tuner.spec import parse_spec
from tuner.worker import run_worker

SPACE = {**TINY_SPACE, "loss": "cross_entropy"}
"""The tiny space with the loss fixed too: trials search lr and width only."""
spec = partial(tiny_spec, search_space=SPACE)


def make_settings(root: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{root / 'tuner.db'}",
        artifact_root=root / "artifacts",
        data_root=root / "data",
        workers=0,
        poll_interval_s=0.05,
    )


def run_trials(settings: Settings, n: int) -> None:
    """Run ``n`` trials with a real worker in a thread (signal handlers stay pytest's)."""
    worker = threading.Thread(target=run_worker, args=(settings,), kwargs={"max_trials": n})
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "the worker did not finish its trials"


def sse(response: Any) -> list[dict[str, Any]]:
    """Parse a text/event-stream body into events: {event, id, data}."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if "data" in current:
                events.append(current)
            current = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            current[key] = value.removeprefix(" ")
    return [{**e, "data": json.loads(e["data"])} for e in events]


def client_for(settings: Settings) -> Iterator[TestClient]:
    migrate(settings.database_url)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A fresh app on an empty database."""
    yield from client_for(settings)


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def shared(shared_settings: Settings) -> Iterator[TestClient]:
    yield from client_for(shared_settings)


@pytest.fixture(scope="module")
def done(shared: TestClient, shared_settings: Settings) -> dict[str, Any]:
    """A job that ran its three trials to the end (read-only for the tests that use it)."""
    job = shared.post("/v1/jobs", json=spec("done")).json()
    run_trials(shared_settings, 3)
    return shared.get(f"/v1/jobs/{job['id']}").json()


# --- submitting ---------------------------------------------------------------------------


def test_submit_answers_201_with_location_and_the_job(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=spec())
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["budget"] == {"n_trials": 3, "timeout_s": None}
    assert job["trials"]["started"] == 0 and job["best"] is None
    assert job["study_name"] == f"job-{job['id']}"
    assert client.get(response.headers["location"]).json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            spec(search_space={"lr": {"low": 1, "high": 0.1}}),
            "search_space.lr: low (1) must be less than high (0.1)",
        ),
        (spec(colour="blue"), "colour: unknown field; remove it"),
        (spec(name="a/b"), "name: use 1-100 letters, digits, '_', '-' or '.', starting"),
        (spec(search_space={"lr": -0.1}), "search_space.lr: lr must be positive, got -0.1"),
        (spec(objective="resnet9000"), "unknown objective 'resnet9000'"),
        (spec(budget={"n_trials": 10**9}), "budget.n_trials: Input should be less than or equal"),
        (spec(budget={"n_trials": True}), "budget.n_trials: Input should be a valid integer"),
        (spec(search_space={"lr": {"low": 0, "high": 1, "log": True}}), "needs low > 0"),
        (spec(search_space={"batch_size": {"choices": list(range(1000))}}), "at most 256"),
        (spec(dataset={"name": "csv", "path": "../etc/passwd", "target": "y"}), "without '..'"),
        (spec(dataset={"name": "iris", "options": {"n_samples": 10**8}}), "takes no options"),
        (
            spec(dataset={"name": "synthetic_classification", "options": {"n_samples": 10**8}}),
            "dataset: dataset 'synthetic_classification' option n_samples must be between 10",
        ),
        (
            spec(dataset={"name": "synthetic_classification", "options": {"bogus": 1}}),
            "has no option 'bogus'; its options: n_samples",
        ),
        (
            spec(metrics=[{"name": "val_accuracy"}, {"name": "val_f1"}], sampler={"name": "cmaes"}),
            "sampler 'cmaes' cannot optimise 2 metrics",
        ),
        ({"objective": "mlp"}, "name: Field required"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)
def test_a_bad_spec_is_422_with_advice_and_nothing_is_written(
    client: TestClient, body: Any, message: str
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


@pytest.mark.parametrize(
    ("content", "status"), [(b"{not json", 422), (b"\xff\xfe\x00", 422), (b"", 422)]
)
def test_unreadable_bodies_are_refused_with_json(
    client: TestClient, content: bytes, status: int
) -> None:
    response = client.post(
        "/v1/jobs", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.json()["detail"]


@pytest.mark.parametrize("sent", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_spec_sent_as_another_content_type_is_told_to_send_json(
    client: TestClient, sent: str | None
) -> None:
    body = json.dumps(spec()).encode()
    headers = {"content-type": sent} if sent else {}
    request = client.build_request("POST", "/v1/jobs", content=body, headers=headers)
    if sent is None:
        request.headers.pop("content-type", None)
    response = client.send(request)
    assert response.status_code == 422
    assert "send the body as JSON with Content-Type: application/json" in response.json()["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_idempotency_key_replays_the_same_job_and_refuses_another_body(
    client: TestClient,
) -> None:
    key = {"Idempotency-Key": "nightly-42"}
    first = client.post("/v1/jobs", json=spec(), headers=key)
    replay = client.post("/v1/jobs", json=spec(), headers=key)
    other = client.post("/v1/jobs", json=spec(name="other"), headers=key)
    assert (first.status_code, replay.status_code, other.status_code) == (201, 200, 409)
    assert replay.json()["id"] == first.json()["id"]
    assert replay.headers["location"] == first.headers["location"]
    assert "use a new key" in other.json()["detail"]
    assert len(client.get("/v1/jobs").json()["items"]) == 1


# --- listing and reading ----------------------------------------------------------------


def test_list_filters_by_state_and_pages_with_a_cursor(client: TestClient) -> None:
    ids = [client.post("/v1/jobs", json=spec(f"job{i}")).json()["id"] for i in range(3)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [j["id"] for j in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None
    queued = client.get("/v1/jobs", params={"state": "queued"}).json()["items"]
    assert sorted(j["id"] for j in queued) == sorted(ids[1:])
    assert [j["id"] for j in client.get("/v1/jobs?state=cancelled").json()["items"]] == ids[:1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "query parameter limit"),
        ("limit=101", "less than or equal to 100"),
        ("state=sleeping", "query parameter state"),
        ("cursor=garbage", "pass next_cursor from the last page"),
    ],
)
def test_bad_list_queries_are_422(client: TestClient, query: str, message: str) -> None:
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 422
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"n_trials": 5}),
        ("DELETE", "", None),
        ("POST", "/cancel", None),
        ("POST", "/resume", None),
        ("GET", "/trials", None),
        ("GET", "/trials/0", None),
        ("POST", "/trials", {"params": [{"lr": 0.05}]}),
        ("GET", "/events", None),
        ("GET", "/best-config", None),
        ("GET", "/best-model", None),
    ],
)
def test_unknown_job_is_404_on_every_route(
    client: TestClient, method: str, path: str, body: Any
) -> None:
    response = client.request(method, f"/v1/jobs/j_missing{path}", json=body)
    assert response.status_code == 404
    assert "no job 'j_missing'" in response.json()["detail"]


def test_unknown_routes_and_methods_under_v1_answer_json(client: TestClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert "see /docs" in missing.json()["detail"]
    wrong = client.put("/v1/jobs", json=spec())
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert "use GET, POST" in wrong.json()["detail"]


def test_finished_job_has_counts_best_and_timing(done: dict[str, Any]) -> None:
    assert done["state"] == "succeeded"
    trials = done["trials"]
    assert trials["started"] == trials["finished"] == 3
    assert trials["complete"] + trials["pruned"] + trials["fail"] == 3
    assert trials["running"] == trials["waiting"] == 0
    best = done["best"]
    assert best["trial_number"] in range(3)
    assert 0.0 <= best["values"][0] <= 1.0
    assert set(best["params"]) == {"lr", "width"}
    assert done["elapsed_s"] is not None and done["eta_s"] is None
    assert done["directions"] == ["maximize"]
    assert done["links"]["dashboard"].startswith("/dashboard/studies/")


def test_trials_list_sorts_filters_and_pages(shared: TestClient, done: dict[str, Any]) -> None:
    url = f"/v1/jobs/{done['id']}/trials"
    by_number = shared.get(url).json()
    assert [t["number"] for t in by_number["items"]] == [0, 1, 2]
    assert by_number["next_cursor"] is None
    trial = by_number["items"][0]
    assert set(trial["params"]) == {"lr", "width"}
    assert "val_accuracy" in trial["metrics"]
    assert trial["duration_s"] > 0 and trial["state"] == "complete"
    assert [int(k) for k in trial["intermediate_values"]] == [1, 2]  # one per epoch
    times = [datetime.fromisoformat(t) for t in (
        done["started_at"], trial["started_at"], trial["completed_at"], done["ended_at"])]
    assert all(t.tzinfo is not None for t in times)  # UTC, like the job's: comparable
    assert times == sorted(times)

    by_value = shared.get(url, params={"sort": "value"}).json()["items"]
    values = [t["values"][0] for t in by_value]
    assert values == sorted(values, reverse=True)
    assert by_value[0]["number"] == done["best"]["trial_number"]

    page = shared.get(url, params={"limit": 2}).json()
    rest = shared.get(url, params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [t["number"] for t in page["items"] + rest["items"]] == [0, 1, 2]
    assert shared.get(url, params={"state": "running"}).json()["items"] == []
    assert shared.get(url, params={"state": "asleep"}).status_code == 422
    assert shared.get(url, params={"cursor": "-1"}).status_code == 422


def test_one_trial_by_number(shared: TestClient, done: dict[str, Any]) -> None:
    url = f"/v1/jobs/{done['id']}/trials"
    assert shared.get(f"{url}/1").json()["number"] == 1
    missing = shared.get(f"{url}/7")
    assert missing.status_code == 404
    assert "has no trial 7" in missing.json()["detail"]


# --- events -----------------------------------------------------------------------------


def test_events_stream_to_the_end_and_resume_after_last_event_id(
    shared: TestClient, done: dict[str, Any]
) -> None:
    url = f"/v1/jobs/{done['id']}/events"
    with shared.stream("GET", url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse(response)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "state" and events[0]["data"]["state"] == "queued"
    assert kinds[-1] == "state" and events[-1]["data"]["state"] == "succeeded"
    assert kinds.count("trial") == 3 and "best" in kinds
    # Named as in the REST resources, so one reader parses both.
    trials = {t["number"]: t for t in shared.get(f"/v1/jobs/{done['id']}/trials").json()["items"]}
    for trial in (e["data"] for e in events if e["event"] == "trial"):
        assert trial["state"] == trials[trial["trial_number"]]["state"]
        assert trial["values"] == trials[trial["trial_number"]]["values"]
    last_best = [e["data"] for e in events if e["event"] == "best"][-1]
    assert {k: last_best[k] for k in ("trial_number", "values", "params")} == {
        k: done["best"][k] for k in ("trial_number", "values", "params")}
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)

    with shared.stream("GET", url, headers={"Last-Event-ID": str(ids[2])}) as response:
        assert [int(e["id"]) for e in sse(response)] == ids[3:]
    bad = shared.get(url, headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]


# --- results ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media"), [("yaml", "application/yaml"), ("json", "application/json")]
)
def test_best_config_downloads_a_runnable_spec(
    shared: TestClient, done: dict[str, Any], fmt: str, media: str
) -> None:
    response = shared.get(f"/v1/jobs/{done['id']}/best-config", params={"format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media)
    assert response.headers["content-disposition"] == f'attachment; filename="done-best.{fmt}"'
    exported = parse_spec(yaml.safe_load(response.text))
    assert exported.provenance is not None
    assert exported.provenance.trial_number == done["best"]["trial_number"]
    assert exported.search_space["lr"] == done["best"]["params"]["lr"]
    assert not any(isinstance(v, dict) for v in exported.model_dump()["search_space"].values())
    url = f"/v1/jobs/{done['id']}/best-config"
    trials = shared.get(f"/v1/jobs/{done['id']}/trials", params={"sort": "value"}).json()
    other = [t["number"] for t in trials["items"] if t["state"] == "complete"][-1]
    chosen = parse_spec(yaml.safe_load(shared.get(url, params={"trial": other}).text))
    assert chosen.provenance is not None and chosen.provenance.trial_number == other
    missing = shared.get(url, params={"trial": 9})
    assert missing.status_code == 422 and "has no trial 9" in missing.json()["detail"]


def test_trial_counts_tell_failures_that_count_from_stopped_trials() -> None:
    """Optuna keeps both as FAIL: 1 counted failure (finished beyond complete and pruned),
    2 interrupted trials that gave their count back."""
    job = Job(started=3, finished=2)
    counts = TrialCounts.of(job, {"complete": 1, "fail": 3, "running": 1})
    assert (counts.complete, counts.fail, counts.stopped, counts.running) == (1, 1, 2, 1)
    assert counts.complete + counts.pruned + counts.fail == job.finished


def test_best_config_and_model_are_409_before_a_trial_completes(client: TestClient) -> None:
    job = client.post("/v1/jobs", json=spec()).json()
    for what in ("best-config", "best-model"):
        response = client.get(f"/v1/jobs/{job['id']}/{what}")
        assert response.status_code == 409
        assert "no completed trial yet" in response.json()["detail"]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    for what in ("best-config", "best-model"):
        ended = client.get(f"/v1/jobs/{job['id']}/{what}").json()["detail"]
        assert "ended without a completed trial" in ended and "trials?state=fail" in ended
    assert client.get(f"/v1/jobs/{job['id']}/best-config?format=xml").status_code == 422


def test_best_model_serves_the_weights_the_worker_kept(
    shared: TestClient, done: dict[str, Any], tmp_path: Path
) -> None:
    response = shared.get(f"/v1/jobs/{done['id']}/best-model")
    assert response.status_code == 200
    best = done["best"]["trial_number"]
    assert response.headers["content-disposition"] == (
        f'attachment; filename="done-trial{best}.safetensors"'
    )
    path = tmp_path / "best.safetensors"
    path.write_bytes(response.content)
    with safe_open(str(path), framework="pt") as weights:
        hp = json.loads(weights.metadata()["hp"])
        assert weights.keys()
    trial = shared.get(f"/v1/jobs/{done['id']}/trials/{best}").json()
    assert hp["lr"] == trial["params"]["lr"]

    url = f"/v1/jobs/{done['id']}/best-model"
    trials = shared.get(f"/v1/jobs/{done['id']}/trials").json()["items"]
    other = next(t for t in trials if t["state"] == "complete" and t["number"] != best)
    chosen = shared.get(url, params={"trial": other["number"]})
    assert chosen.status_code == 200, chosen.text
    path.write_bytes(chosen.content)
    with safe_open(str(path), framework="pt") as weights:
        assert json.loads(weights.metadata()["hp"])["lr"] == other["params"]["lr"]
    assert shared.get(url, params={"trial": 99}).status_code == 422
    study = optuna.load_study(study_name=done["study_name"], storage=shared.app.state.storage)  # type: ignore[attr-defined]
    for meta in get_all_artifact_meta(study.trials[other["number"]], storage=study._storage):
        (shared.app.state.settings.artifact_root / meta.artifact_id).unlink()  # type: ignore[attr-defined]
    lost = shared.get(url, params={"trial": other["number"]})
    assert lost.status_code == 409 and "shared TUNER_ARTIFACT_ROOT" in lost.json()["detail"]


def test_report_is_a_page_with_plots_and_a_png_history(
    shared: TestClient, done: dict[str, Any]
) -> None:
    page = shared.get(f"/v1/jobs/{done['id']}/report")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "Diagnosis" in page.text and "Plotly.newPlot" in page.text
    assert page.headers["content-encoding"] == "gzip"  # httpx asks for it, and unpacks it
    assert int(page.headers["content-length"]) < len(page.content) / 2
    plain = shared.get(f"/v1/jobs/{done['id']}/report", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.text == page.text
    png = shared.get(f"/v1/jobs/{done['id']}/report.png")
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert shared.get("/v1/jobs/j_000000000000/report").status_code == 404


# --- changing jobs ----------------------------------------------------------------------


def test_cancel_mid_job_then_resume_runs_exactly_the_budget(
    client: TestClient, settings: Settings
) -> None:
    job = client.post("/v1/jobs", json=spec(n_trials=3)).json()
    url = f"/v1/jobs/{job['id']}"
    run_trials(settings, 1)
    running = client.get(url).json()
    assert running["state"] == "running" and running["trials"]["finished"] == 1
    assert running["eta_s"] is not None and running["eta_s"] > 0

    cancelled = client.post(f"{url}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"{url}/cancel")
    assert again.status_code == 409 and "needs it to be" in again.json()["detail"]

    assert client.post(f"{url}/resume").json()["state"] == "queued"
    run_trials(settings, 2)
    final = client.get(url).json()
    assert final["state"] == "succeeded"
    assert final["trials"]["finished"] == 3
    assert client.post(f"{url}/resume").status_code == 409


def test_patch_changes_the_budget_and_refuses_bad_bodies(client: TestClient) -> None:
    url = f"/v1/jobs/{client.post('/v1/jobs', json=spec()).json()['id']}"
    patched = client.patch(url, json={"n_trials": 5, "timeout_s": 600})
    assert patched.status_code == 200
    assert patched.json()["budget"] == {"n_trials": 5, "timeout_s": 600}
    assert patched.json()["spec"]["budget"] | {"max_epochs": 0} == {
        "n_trials": 5, "timeout_s": 600, "max_epochs": 0}  # the spec shows it too
    assert client.patch(url, json={"n_trials": 4}).json()["budget"]["n_trials"] == 4  # lower
    for body, message in [
        ({}, "give n_trials, timeout_s or both"),
        ({"n_trials": 5, "epochs": 3}, "epochs: unknown field"),
        ({"n_trials": 0}, "n_trials: Input should be greater than or equal to 1"),
        ({"timeout_s": "soon"}, "timeout_s: Input should be a valid number"),
    ]:
        response = client.patch(url, json=body)
        assert response.status_code == 422
        assert message in response.json()["detail"]
    assert client.get(url).json()["budget"]["n_trials"] == 4


def test_delete_removes_the_job_its_study_and_its_weights(
    client: TestClient, settings: Settings
) -> None:
    job = client.post("/v1/jobs", json=spec(n_trials=2)).json()
    run_trials(settings, 2)
    weights = lambda: [f for f in settings.artifact_root.rglob("*") if f.is_file()]  # noqa: E731
    assert weights()  # the worker kept its best trials' weights
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 204 and response.content == b""
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    storage = client.app.state.storage  # type: ignore[attr-defined]
    assert job["study_name"] not in optuna.get_all_study_names(storage)
    assert weights() == []
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_enqueued_configurations_run_first(client: TestClient, settings: Settings) -> None:
    job = client.post("/v1/jobs", json=spec(n_trials=1)).json()
    url = f"/v1/jobs/{job['id']}/trials"
    response = client.post(url, json={"params": [{"lr": 0.05, "width": 16}]})
    assert response.status_code == 202 and response.json() == {"enqueued": 1}
    for body, message in [
        ({"params": [{"lr": 5.0}]}, "[0] lr: 5.0 is outside [0.01, 0.1] (log)"),
        ({"params": [{"width": 12}]}, "[0] width: 12 is outside the choices [8, 16]"),
        ({"params": [{}]}, "[0] an empty configuration; give some of: lr, width"),
        ({"params": []}, "params: List should have at least 1 item"),
        ({"params": [{"lr": [1, 2]}]}, "params.0.lr"),
        ({"params": [{"lr": 10**400}]}, "params.0.lr: a whole number too large"),
        ({"configs": []}, "configs: unknown field"),
    ]:
        refused = client.post(url, json=body)
        assert refused.status_code == 422
        assert message in refused.json()["detail"]
    run_trials(settings, 1)
    assert client.get(f"{url}/0").json()["params"] == {"lr": 0.05, "width": 16}
    late = client.post(url, json={"params": [{"lr": 0.05}]})
    assert late.status_code == 409 and "resume it first" in late.json()["detail"]


def test_warm_start_from_an_earlier_job(
    shared: TestClient, shared_settings: Settings, done: dict[str, Any]
) -> None:
    job = shared.post("/v1/jobs", json=spec("warm", n_trials=1, warm_start_from=done["id"]))
    assert job.status_code == 201
    run_trials(shared_settings, 1)
    first = shared.get(f"/v1/jobs/{job.json()['id']}/trials/0").json()
    assert first["params"] == done["best"]["params"]
    missing = shared.post("/v1/jobs", json=spec("cold", warm_start_from="j_nowhere"))
    assert missing.status_code == 404 and "warm_start_from" in missing.json()["detail"]


# --- catalog, health, docs, dashboard ---------------------------------------------------


def test_catalog_lists_objectives_with_default_spaces_and_datasets(client: TestClient) -> None:
    objectives = {o["name"]: o for o in client.get("/v1/objectives").json()}
    assert {"mlp", "cnn"} <= set(objectives)
    assert "lr" in objectives["mlp"]["default_space"]["classification"]
    datasets = {d["name"]: d for d in client.get("/v1/datasets").json()}
    assert datasets["iris"]["task"] == "classification"
    assert datasets["csv"]["needs_path"] and datasets["csv"]["needs_target"]


def test_health_and_readiness(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["migrations"] is True
    assert [client.head(path).status_code for path in ("/healthz", "/readyz")] == [200, 200]
    unmigrated = make_settings(tmp_path / "fresh")
    unmigrated.artifact_root.mkdir(parents=True)
    with TestClient(create_app(unmigrated)) as fresh:
        response = fresh.get("/readyz")
        assert fresh.head("/readyz").status_code == 503
    assert response.status_code == 503
    assert response.json()["database"] is True and response.json()["migrations"] is False


def test_openapi_describes_the_routes_with_an_example_spec(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/v1/jobs"]["post"]
    example = post["requestBody"]["content"]["application/json"]["examples"]["digits"]["value"]
    assert parse_spec(example).name == "digits-mlp"
    assert {"201", "200", "409", "422"} <= set(post["responses"])
    assert "/v1/jobs/{job_id}/events" in schema["paths"]
    assert client.get("/docs").status_code == 200


def test_dashboard_is_served_at_the_root_and_lists_job_studies(
    shared: TestClient, done: dict[str, Any]
) -> None:
    page = shared.get("/")
    assert page.status_code == 200 and "Optuna Dashboard" in page.text
    studies = shared.get("/api/studies").json()["study_summaries"]
    assert done["study_name"] in [s["study_name"] for s in studies]
    assert shared.get(done["links"]["dashboard"]).status_code == 200
    study_id = int(done["links"]["dashboard"].rsplit("/", 1)[1])
    for method, path, body in [("DELETE", f"/api/studies/{study_id}", None),
                               ("POST", f"/api/studies/{study_id}/rename",
                                {"study_name": "renamed"})]:
        refused = shared.request(method, path, json=body)
        assert refused.status_code == 409, refused.text
        assert f"belongs to job {done['id']}; delete the job" in refused.json()["reason"]
    assert done["study_name"] in optuna.get_all_study_names(shared.app.state.storage)  # type: ignore[attr-defined]
    arabic_digits = "".join(chr(0x660 + int(d)) for d in str(study_id))  # int() reads them
    assert shared.delete(f"/api/studies/{arabic_digits}").status_code == 409
    missing = shared.delete("/api/studies/999999")
    assert missing.status_code == 404 and "no study with id 999999" in missing.json()["reason"]
    as_json = {"content-type": "application/json"}
    for body in (b"garbage", b"[1]", b"[" * 100_000):
        bad = shared.post("/api/studies", content=body, headers=as_json)
        assert bad.status_code == 400 and "send a JSON object" in bad.json()["reason"]
    form = shared.post("/api/studies", data={"study_name": "x"})  # not JSON
    assert form.status_code == 400
    made = shared.post("/api/studies", json={"study_name": "by-hand", "directions": ["minimize"]})
    assert made.status_code == 201, made.text
    other = optuna.load_study(study_name="by-hand", storage=shared.app.state.storage)  # type: ignore[attr-defined]
    assert shared.delete(f"/api/studies/{other._study_id}").status_code < 300  # not a job's
    bare = shared.build_request("GET", "/static/bundle.js")
    del bare.headers["accept-encoding"]  # a client that sends none
    script = shared.send(bare)
    assert script.status_code == 200 and "content-encoding" not in script.headers
    assert len(script.content) > 100_000  # the dashboard's whole frontend
