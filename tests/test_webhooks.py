"""Webhooks: signed notices to a real HTTP receiver on 127.0.0.1, retried, never in the way.

The receiver is ``http.server`` in a thread; it answers from a script of status codes
and records every request. Settings allow loopback receivers
(``webhook_allow_private``), which is off by default and tested as such.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from live_server import free_port, start_server
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from test_api import client_for, make_settings, run_trials, spec

from tuner.jobs.db import make_engine, migrate
from tuner.jobs.outbox import WebhookDelivery
from tuner.jobs.store import JobStore
from tuner.settings import Settings
from tuner.spec import SpecError, parse_spec
from tuner.webhooks import Deliverer, UnsafeDestination, resolve, verify

SECRET = "test-secret-0123456789abcdef"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next status of ``script`` (then 200) and records it."""

    script: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def wait_for(self, n: int, timeout_s: float = 60.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(self.requests) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= n, f"got {len(self.requests)} of {n} requests"
        return self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(Received(dict(self.headers.items()), body))
            self.send_response(state.script.pop(0) if state.script else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tuner?team=ml"
    yield state
    server.shutdown()
    server.server_close()


def dead_url() -> str:
    """A 127.0.0.1 port nobody listens on: connections are refused."""
    return f"http://127.0.0.1:{free_port()}/hook"


def hook_settings(root: Path, **overrides: Any) -> Settings:
    return Settings.model_validate({
        **make_settings(root).model_dump(),
        "webhook_secret": SECRET, "webhook_allow_private": True, "webhook_backoff_s": 0.01,
        "webhook_poll_interval_s": 0.05, "webhook_max_attempts": 3, "webhook_timeout_s": 5.0,
        **overrides,
    })


def signed_correctly(request: Received) -> bool:
    """The receiver's side, written out: HMAC-SHA256 over '<timestamp>.<raw body>'."""
    timestamp = request.headers["X-Tuner-Timestamp"]
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(request.headers["X-Tuner-Signature"], f"sha256={expected}")


def deliveries(settings: Settings) -> list[WebhookDelivery]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(WebhookDelivery).order_by(WebhookDelivery.id))
            return [WebhookDelivery(**row._mapping) for row in rows]
    finally:
        engine.dispose()


def deliver_until(settings: Settings, done: Callable[[WebhookDelivery], bool]) -> WebhookDelivery:
    """Run the deliverer's passes (as its thread would) until the one delivery is done."""
    engine = make_engine(settings.database_url)
    deliverer = Deliverer(engine, settings)
    try:
        for _ in range(200):
            deliverer.deliver_due()
            (row,) = deliveries(settings)
            if done(row):
                return row
            time.sleep(0.02)
    finally:
        deliverer.stop()
        engine.dispose()
    raise AssertionError(f"delivery never got done: {row.state}, {row.attempts} attempts")


def queued_store(settings: Settings, url: str, name: str = "hooked") -> tuple[JobStore, str]:
    """A job with a webhook, created in the store as the API would (after admission)."""
    migrate(settings.database_url)
    store = JobStore(make_engine(settings.database_url))
    job, _ = store.create(parse_spec(spec(name, n_trials=1, webhook_url=url)))
    return store, job.id


# --- the URL and where it may point -----------------------------------------------------


@pytest.mark.parametrize(("url", "advice"), [
    ("ftp://hooks.example.com/x", "absolute http:// or https:// URL"),
    ("hooks.example.com/x", "absolute http:// or https:// URL"),
    ("https://user:pw@hooks.example.com/x", "remove the user and password"),
    ("https://hooks.example.com/x#frag", "remove the #fragment"),
    ("https://hooks.example.com:99999/x", "not a valid URL"),
    ("https://hooks.example.com/a b", "remove spaces"),
])
def test_a_webhook_url_must_be_plain_http_or_https(url: str, advice: str) -> None:
    with pytest.raises(SpecError, match=advice):
        parse_spec(spec(webhook_url=url))


def test_private_addresses_are_refused_unless_allowed(tmp_path: Path) -> None:
    settings = hook_settings(tmp_path, webhook_allow_private=False)
    for url in (
        "http://127.0.0.1:8000/", "http://10.1.2.3/", "http://169.254.169.254/latest/meta-data",
        "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::1]/", "http://[::127.0.0.1]/", "http://100.64.0.1/", "http://0.0.0.0/",
        "http://224.0.0.1/",
    ):
        with pytest.raises(UnsafeDestination, match="not a public address"):
            resolve(url, settings)
    assert str(resolve("https://8.8.8.8/hook", settings)) == "8.8.8.8"
    assert str(resolve("https://[64:ff9b::808:808]/hook", settings)) == "64:ff9b::808:808"
    allowed = settings.model_copy(update={"webhook_allow_private": True})
    assert str(resolve("http://127.0.0.1:8000/", allowed)) == "127.0.0.1"


def test_submit_refuses_a_webhook_the_server_cannot_sign_or_reach(tmp_path: Path) -> None:
    unsigned = hook_settings(tmp_path / "a", webhook_secret=None)
    for client in client_for(unsigned):
        refused = client.post("/v1/jobs", json=spec(webhook_url="https://8.8.8.8/hook"))
        assert refused.status_code == 422
        assert "TUNER_WEBHOOK_SECRET" in refused.json()["detail"]
        assert client.get("/v1/jobs").json()["items"] == []
    private = hook_settings(tmp_path / "b", webhook_allow_private=False)
    for client in client_for(private):
        refused = client.post("/v1/jobs", json=spec(webhook_url="http://localhost:9/hook"))
        assert refused.status_code == 422
        detail = refused.json()["detail"]
        assert "not a public address" in detail and "TUNER_WEBHOOK_ALLOW_PRIVATE" in detail
        assert client.get("/v1/jobs").json()["items"] == []


# --- delivery -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_job_notifies_its_webhook_signed_with_its_outcome(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = hook_settings(tmp_path)
    for client in client_for(settings):  # the app's lifespan runs the deliverer
        created = client.post("/v1/jobs", json=spec("notify", n_trials=2, webhook_url=receiver.url))
        assert created.status_code == 201, created.text
        run_trials(settings, 2)
        job = client.get(f"/v1/jobs/{created.json()['id']}").json()
        (request,) = receiver.wait_for(1)
        scrape = client.get("/metrics").text

    assert signed_correctly(request)
    assert request.headers["X-Tuner-Event"] == "job.succeeded"
    assert request.headers["Content-Type"] == "application/json"
    sent = json.loads(request.body)
    assert sent["event"] == "job.succeeded"
    assert sent["job"]["id"] == job["id"] and sent["job"]["name"] == "notify"
    assert sent["job"]["state"] == "succeeded" and sent["job"]["previous_state"] == "running"
    assert sent["job"]["reason"] == job["reason"] == "2 of 2 trials finished"
    assert sent["job"]["ended_at"] is not None and sent["job"]["url"] == f"/v1/jobs/{job['id']}"
    assert sent["best"]["value"] == job["best"]["values"][0]
    assert sent["best"]["trial_number"] == job["best"]["trial_number"]
    assert sent["best"]["params"] == job["best"]["params"]
    assert sent["trials"]["finished"] == sent["trials"]["n_trials"] == 2
    assert sent["trials"]["complete"] == job["trials"]["complete"]
    (row,) = deliveries(settings)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert request.headers["X-Tuner-Delivery"] == str(row.id)
    delivered = {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(scrape)
        if family.name == "tuner_webhook_deliveries"
        for s in family.samples
    }
    assert delivered == {"pending": 0, "delivered": 1, "failed": 0}


def test_cancel_and_failure_notify_too(tmp_path: Path, receiver: Receiver) -> None:
    settings = hook_settings(tmp_path)
    store, cancelled = queued_store(settings, receiver.url, "to-cancel")
    store.cancel(cancelled)
    deliver_until(settings, lambda row: row.state == "delivered")
    (request,) = receiver.requests
    assert request.headers["X-Tuner-Event"] == "job.cancelled"
    sent = json.loads(request.body)
    assert sent["job"]["state"] == "cancelled" and sent["job"]["reason"] == "cancelled on request"
    assert sent["best"]["params"] is None and sent["trials"]["finished"] == 0

    store.resume(cancelled)  # back in the queue: no notice for a job that has not ended
    assert len(deliveries(settings)) == 1
    store.fail(cancelled, "dataset went missing")
    deliverer = Deliverer(store.engine, settings)
    deliverer.deliver_due()
    deliverer.stop()
    failed = json.loads(receiver.wait_for(2)[1].body)
    assert failed["event"] == "job.failed" and failed["job"]["reason"] == "dataset went missing"


def test_a_receiver_failing_twice_gets_three_attempts_of_the_same_notice(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script = [500, 503]
    settings = hook_settings(tmp_path, webhook_max_attempts=5)
    store, job_id = queued_store(settings, receiver.url)
    store.cancel(job_id)
    row = deliver_until(settings, lambda row: row.state != "pending")
    assert (row.state, row.attempts, row.last_status, row.last_error) == (
        "delivered", 3, 200, None
    )
    assert len(receiver.requests) == 3
    assert len({r.body for r in receiver.requests}) == 1
    assert len({r.headers["X-Tuner-Delivery"] for r in receiver.requests}) == 1
    assert all(signed_correctly(r) for r in receiver.requests)


def test_a_dead_receiver_never_holds_up_the_job_and_gives_up_with_the_error(
    tmp_path: Path,
) -> None:
    settings = hook_settings(tmp_path, webhook_max_attempts=2)
    store, job_id = queued_store(settings, dead_url())
    run_trials(settings, 1)  # a real worker: claim, train, finish
    assert store.get(job_id).state == "succeeded"
    (row,) = deliveries(settings)
    assert (row.state, row.attempts, row.event) == ("pending", 0, "job.succeeded")

    row = deliver_until(settings, lambda row: row.state != "pending")
    assert (row.state, row.attempts, row.last_status) == ("failed", 2, None)
    assert "ConnectError" in (row.last_error or "")
    assert store.get(job_id).state == "succeeded"


def test_the_address_rule_is_checked_again_at_delivery(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A host that resolved to a public address at submit may point inside later."""
    settings = hook_settings(tmp_path)
    store, job_id = queued_store(settings, receiver.url)
    store.cancel(job_id)
    strict = settings.model_copy(update={"webhook_allow_private": False})
    row = deliver_until(strict, lambda row: row.state != "pending")
    assert (row.state, row.attempts) == ("failed", 1)
    assert "not a public address" in (row.last_error or "")
    assert receiver.requests == []


def test_verify_refuses_a_replayed_or_altered_notice() -> None:
    body = b'{"event":"job.succeeded"}'
    now = 1_800_000_000
    timestamp = str(now)
    good = "sha256=" + hmac.new(SECRET.encode(), f"{now}.".encode() + body, "sha256").hexdigest()
    assert verify(SECRET.encode(), body, timestamp, good, now=now + 5)
    assert not verify(SECRET.encode(), body, timestamp, good, now=now + 3600)  # replayed
    assert not verify(SECRET.encode(), body + b" ", timestamp, good, now=now)  # altered
    assert not verify(SECRET.encode(), body, str(now + 1), good, now=now)  # re-stamped
    assert not verify(b"another-secret-xxxxxx", body, timestamp, good, now=now)


@pytest.mark.slow
def test_tuner_serve_delivers_from_its_own_process(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "TUNER_WEBHOOK_SECRET": SECRET, "TUNER_WEBHOOK_ALLOW_PRIVATE": "true",
        "TUNER_WEBHOOK_POLL_INTERVAL_S": "0.2", "TUNER_LOG_JSON": "true",
    }.items():
        monkeypatch.setenv(name, value)
    server = start_server(tmp_path, workers=1)
    try:
        with httpx.Client(base_url=server.url) as http:
            body = spec("served", n_trials=1, webhook_url=receiver.url)
            created = http.post("/v1/jobs", json=body)
            assert created.status_code == 201, created.text
            (request,) = receiver.wait_for(1, timeout_s=120)
    finally:
        assert server.stop() == 0
    assert signed_correctly(request)
    assert json.loads(request.body)["job"]["state"] == "succeeded"
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line]
    delivered = [r for r in records if r["logger"] == "tuner.webhooks"]
    assert delivered and delivered[0]["job_id"] == created.json()["id"]
    assert {"tuner.worker", "uvicorn.access"} <= {r["logger"] for r in records}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def test_the_notice_is_written_with_the_state_change_on_sqlite_and_postgres(
    db_url: str, tmp_path: Path
) -> None:
    settings = hook_settings(tmp_path, database_url=db_url)
    store, job_id = queued_store(settings, "https://hooks.example.com/tuner")
    study = optuna.load_study(study_name=store.get(job_id).study_name, storage=store.storage)
    study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1)}), 0.9)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # still running when the job is cancelled
    store.cancel(job_id)
    (row,) = deliveries(settings)
    assert (row.job_id, row.event, row.state, row.attempts) == (
        job_id, "job.cancelled", "pending", 0
    )
    assert row.url == "https://hooks.example.com/tuner"
    counts = row.payload["trials"]
    assert (counts["complete"], counts["fail"], counts["running"], counts["pruned"]) == (1, 1, 1, 0)
    store.engine.dispose()
    store.storage.engine.dispose()


def test_a_several_metric_job_names_no_best_trial_in_its_notice(tmp_path: Path) -> None:
    """Its ``best`` events mark trials that joined the Pareto front; none is the best."""
    settings = hook_settings(tmp_path)
    migrate(settings.database_url)
    store = JobStore(make_engine(settings.database_url))
    job, _ = store.create(parse_spec(spec(
        "front", n_trials=1, webhook_url="https://hooks.example.com/tuner",
        metrics=[{"name": "val_accuracy"}, {"name": "n_params"}],
    )))
    claim = store.claim("w1")
    assert claim is not None
    study = optuna.load_study(study_name=job.study_name, storage=store.storage)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1)})
    assert store.attach_trial(claim.slot_id, trial._trial_id, trial.number)
    study.tell(trial, [0.9, 120.0])
    assert store.finish(claim.slot_id, optuna.trial.TrialState.COMPLETE, [0.9, 120.0],
                        params=trial.params)
    assert [e.data["trial_number"] for e in store.events(job.id) if e.kind == "best"] == [0]
    (row,) = deliveries(settings)
    assert row.event == "job.succeeded"
    assert row.payload["best"] == {
        "trial_number": None, "value": None, "direction": None, "params": None}
    store.engine.dispose()
    store.storage.engine.dispose()
