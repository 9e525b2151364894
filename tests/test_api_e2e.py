"""End to end: the real server (uvicorn + 2 worker processes) driven over HTTP.

Two jobs at once, followed by SSE to the end; the best config downloaded and retrained
with ``tuner train`` to the same metric; studies listed by the ``optuna`` CLI; cancel
mid-job and resume to the exact budget; idempotent submission under concurrency.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import LiveServer, start_server
from safetensors import safe_open
from specs import TINY_SPACE, tiny_spec

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
spec = partial(tiny_spec, parallelism=2, search_space={**TINY_SPACE, "batch_size": 32})
"""Two trials at a time, in small batches: a job lasts long enough to cancel mid-way."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("e2e"), workers=2)
    yield live
    assert live.stop() == 0, live.log.read_text()


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def follow(server: LiveServer, job_id: str, stop_after: str | None = None) -> list[dict[str, Any]]:
    """Read the job's SSE stream until it ends (or until the first ``stop_after`` event)."""
    events: list[dict[str, Any]] = []
    current: dict[str, str] = {}
    url = f"{server.url}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, timeout=httpx.Timeout(30, read=300)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(":")
                current[key] = value.removeprefix(" ")
                continue
            if "data" in current:
                events.append({**current, "data": json.loads(current["data"])})
                if current.get("event") == stop_after:
                    break
            current = {}
    return events


def test_two_jobs_at_once_run_to_their_exact_budget_live(
    server: LiveServer, http: httpx.Client
) -> None:
    bodies = [spec("first", 4), spec("second", 3, sampler={"name": "tpe", "seed": 2})]
    with ThreadPoolExecutor(2) as pool:
        created = list(pool.map(lambda body: http.post("/v1/jobs", json=body), bodies))
        assert [r.status_code for r in created] == [201, 201]
        ids = [r.json()["id"] for r in created]
        streams = list(pool.map(lambda job_id: follow(server, job_id), ids))
    for job_id, events, body in zip(ids, streams, bodies, strict=True):
        assert events[-1]["event"] == "state"
        assert events[-1]["data"]["state"] == "succeeded"
        assert sum(e["event"] == "trial" for e in events) == body["budget"]["n_trials"]
        job = http.get(f"/v1/jobs/{job_id}").json()
        counts = job["trials"]
        assert counts["started"] == counts["finished"] == body["budget"]["n_trials"]
        assert counts["complete"] + counts["pruned"] + counts["fail"] == counts["finished"]
        assert job["best"]["values"][0] > 0


def test_best_config_retrains_to_the_same_metric(
    server: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    job = http.post("/v1/jobs", json=spec("retrain", 2)).json()
    follow(server, job["id"])
    response = http.get(f"/v1/jobs/{job['id']}/best-config")
    assert response.status_code == 200
    assert "attachment" in response.headers["content-disposition"]
    best = tmp_path / "best.yaml"
    best.write_text(response.text)
    weights = tmp_path / "model.safetensors"
    subprocess.run(
        [str(BIN / "tuner"), "train", str(best), "-o", str(weights)],
        check=True,
        capture_output=True,
        cwd=server.root,
        timeout=300,
    )
    with safe_open(str(weights), framework="pt") as f:
        retrained = json.loads(f.metadata()["metrics"])
    number = http.get(f"/v1/jobs/{job['id']}").json()["best"]["trial_number"]
    trial = http.get(f"/v1/jobs/{job['id']}/trials/{number}").json()
    assert retrained["val_accuracy"] == pytest.approx(trial["metrics"]["val_accuracy"], abs=1e-6)


def test_the_optuna_cli_lists_the_job_studies(server: LiveServer, http: httpx.Client) -> None:
    names = {j["study_name"] for j in http.get("/v1/jobs", params={"limit": 100}).json()["items"]}
    assert names
    listed = subprocess.run(
        [str(BIN / "optuna"), "studies", "--storage", server.database_url, "-f", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert names <= {s["name"] for s in json.loads(listed.stdout)}


def test_cancel_mid_job_then_resume_to_the_exact_budget(
    server: LiveServer, http: httpx.Client
) -> None:
    # Digits for 150 epochs a trial, without early stopping: a trial takes seconds even
    # on a fast day, so the job still runs when the first trial's event arrives.
    body = spec(
        "cancel-me", 6, max_epochs=150, dataset={"name": "digits"},
        search_space={**TINY_SPACE, "batch_size": 32, "epochs": 150, "patience": 0},
    )
    job = http.post("/v1/jobs", json=body).json()
    follow(server, job["id"], stop_after="trial")
    cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["trials"]["finished"] < 6
    resumed = http.post(f"/v1/jobs/{job['id']}/resume")
    assert resumed.json()["state"] == "queued"
    events = follow(server, job["id"])
    assert events[-1]["data"]["state"] == "succeeded"
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert "cancelled" in states and states.index("cancelled") < states.index("succeeded")
    final = http.get(f"/v1/jobs/{job['id']}").json()
    assert final["trials"]["finished"] == final["trials"]["started"] == 6


def test_concurrent_submissions_with_one_idempotency_key_make_one_job(
    http: httpx.Client,
) -> None:
    body = spec("once", 1)
    headers = {"Idempotency-Key": "ci-build-1234"}
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda _: http.post("/v1/jobs", json=body, headers=headers), range(4))
        )
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in answers}) == 1
    conflict = http.post("/v1/jobs", json=spec("twice", 1), headers=headers)
    assert conflict.status_code == 409
