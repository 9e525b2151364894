"""Limits, as settings: budget, jobs per owner, body size (chunked too), rate per key."""

from __future__ import annotations

import contextlib
import select
import socket
from pathlib import Path

import httpx
import pytest
from live_server import start_server
from secure_app import Service, make_service
from specs import tiny_spec


def test_budget_over_the_limits_is_422_naming_the_setting(tmp_path: Path) -> None:
    service = make_service(tmp_path, max_trials=5, max_epochs=3, max_timeout_s=60)
    client = service.client()
    before = service.counts()
    for budget, setting in [
        ({"n_trials": 6, "max_epochs": 2}, "TUNER_MAX_TRIALS"),
        ({"n_trials": 2, "max_epochs": 4}, "TUNER_MAX_EPOCHS"),
        ({"n_trials": 2, "max_epochs": 2, "timeout_s": 61}, "TUNER_MAX_TIMEOUT_S"),
    ]:
        answer = client.post("/v1/jobs", json=tiny_spec(budget=budget))
        assert answer.status_code == 422, answer.text
        assert setting in answer.json()["detail"]
    assert service.counts() == before
    job = client.post("/v1/jobs", json=tiny_spec(budget={"n_trials": 5, "max_epochs": 2}))
    assert job.status_code == 201
    raised = client.patch(f"/v1/jobs/{job.json()['id']}", json={"n_trials": 6})
    assert raised.status_code == 422 and "TUNER_MAX_TRIALS" in raised.json()["detail"]
    assert client.get(f"/v1/jobs/{job.json()['id']}").json()["budget"]["n_trials"] == 5


def test_a_space_whose_smallest_model_is_over_the_limit_is_422(tmp_path: Path) -> None:
    """Every trial of it would fail: refused before a job is written, with what to narrow.
    A space that can also build small models is accepted (its big trials fail alone)."""
    service = make_service(tmp_path, max_model_params=100_000)
    client = service.client()
    before = service.counts()
    for space in ({"width": 16384, "depth": 2}, {"width": {"low": 512, "high": 16384}}):
        answer = client.post("/v1/jobs", json=tiny_spec(search_space={**space, "depth": 2}))
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert "its smallest model (depth 2, width " in detail
        assert "parameters, over the limit of 100,000 (TUNER_MAX_MODEL_PARAMS)" in detail
    assert service.counts() == before
    searched = tiny_spec(search_space={"width": {"low": 8, "high": 16384}, "depth": 2})
    assert client.post("/v1/jobs", json=searched).status_code == 201


def test_active_jobs_per_owner_are_capped_with_429(tmp_path: Path) -> None:
    service = make_service(tmp_path, max_jobs_per_owner=2)
    alice = service.client(service.key("alice"))
    bob = service.client(service.key("bob"))
    first = alice.post("/v1/jobs", json=tiny_spec("a1")).json()["id"]
    assert alice.post("/v1/jobs", json=tiny_spec("a2")).status_code == 201
    before = service.counts()
    refused = alice.post("/v1/jobs", json=tiny_spec("a3"))
    assert refused.status_code == 429
    assert "TUNER_MAX_JOBS_PER_OWNER" in refused.json()["detail"]
    assert service.counts() == before
    assert bob.post("/v1/jobs", json=tiny_spec("b1")).status_code == 201  # per owner
    assert alice.post(f"/v1/jobs/{first}/cancel").status_code == 200
    third = alice.post("/v1/jobs", json=tiny_spec("a3"))
    assert third.status_code == 201
    resumed = alice.post(f"/v1/jobs/{first}/resume")  # would make three active
    assert resumed.status_code == 429


def test_body_over_the_limit_is_413_before_parsing(tmp_path: Path) -> None:
    service = make_service(tmp_path, max_body_kb=1)
    client = service.client()
    before = service.counts()
    big = tiny_spec(search_space={"width": {"choices": list(range(1, 400))}})
    answer = client.post("/v1/jobs", json=big)
    assert answer.status_code == 413
    assert "TUNER_MAX_BODY_KB" in answer.json()["detail"]

    def chunks():  # no Content-Length: the limit counts bytes as they arrive
        yield b'{"name": "x", "pad": "'
        for _ in range(64):
            yield b"a" * 1024

    json_type = {"content-type": "application/json"}
    chunked = client.post("/v1/jobs", content=chunks(), headers=json_type)
    assert chunked.status_code == 413
    assert service.counts() == before
    assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Path) -> None:
    service = make_service(tmp_path, rate_limit_per_minute=3)
    alice = service.client(service.key("alice", "read"))
    bob = service.client(service.key("bob", "read"))
    assert [alice.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
    limited = alice.get("/v1/jobs")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert "TUNER_RATE_LIMIT_PER_MINUTE" in limited.json()["detail"]
    assert bob.get("/v1/jobs").status_code == 200  # each key has its own bucket
    assert alice.get("/healthz").status_code == 200  # health checks are never limited


def _send_chunked(url: str, total: int) -> tuple[bytes, int]:
    """POST a chunked JSON body of up to ``total`` bytes over a raw socket: the answer's
    head and the bytes sent. Sending stops when the server answers, as a client would."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"[" * 16384
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        pending = b""
        sent = 0
        sock.setblocking(False)
        answer = b""
        try:
            while sent < total and not answer:
                select.select([sock], [sock], [], 5)  # wait until either way can move
                with contextlib.suppress(BlockingIOError):
                    answer = sock.recv(65536)
                pending = pending or frame
                with contextlib.suppress(BlockingIOError):
                    n = sock.send(pending)
                    sent, pending = sent + n, pending[n:]
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.setblocking(True)
        while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
            answer += data
    return answer, sent


@pytest.mark.slow
def test_real_server_cuts_off_a_chunked_body_and_stays_healthy(tmp_path: Path) -> None:
    server = start_server(tmp_path, workers=0)
    try:
        answer, sent = _send_chunked(server.url, 64 * 2**20)  # 64 MB, far over 256 kB
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 8 * 2**20  # answered long before the client was done sending
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/v1/jobs").json()["items"] == []
    finally:
        assert server.stop() == 0


def test_service_fixture_counts_rows(tmp_path: Path) -> None:
    service: Service = make_service(tmp_path)
    service.client().post("/v1/jobs", json=tiny_spec())
    counts = service.counts()
    assert counts["jobs"] == 1 and counts["studies"] == 1
