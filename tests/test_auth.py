"""API keys, scopes and tenants: who may reach what, through the real app on SQLite."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from secure_app import Service, make_service
from specs import tiny_spec
from sqlalchemy import MetaData
from typer.testing import CliRunner

from api.server import UnsafeBind, check_bind
from tuner.cli_keys import keys_app
from tuner.jobs.db import VERSION_TABLE, alembic_config, make_engine
from tuner.keys import ApiKey, KeyStore
from tuner.remote import cli_message
from tuner.settings import Settings


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make_service(tmp_path)


def _basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{key}".encode()).decode()}


def test_without_keys_loopback_is_the_local_owner_with_every_scope(service: Service) -> None:
    client = service.client()
    created = client.post("/v1/jobs", json=tiny_spec())
    assert created.status_code == 201, created.text
    assert created.json()["owner"] == "local"
    assert client.get("/v1/jobs").json()["items"][0]["owner"] == "local"
    assert client.get("/api/studies").status_code == 200  # the dashboard, no login


def test_keyless_requests_must_name_a_loopback_host(service: Service) -> None:
    """DNS rebinding: another site's page, its name now resolving to 127.0.0.1, would be
    same-origin with itself and get every scope of the keyless owner."""
    client = TestClient(service.app, base_url="http://127.0.0.1:8000")
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
        assert client.get("/v1/jobs", headers={"host": host}).status_code == 200, host
    rebound = {"host": "attacker.example:8000", "origin": "http://attacker.example:8000"}
    for method, path in [("POST", "/v1/keys"), ("GET", "/v1/jobs"), ("GET", "/api/studies")]:
        refused = client.request(method, path, headers=rebound, json={"owner": "m"})
        assert refused.status_code == 403, (method, path, refused.text)
        assert "only to the Host 127.0.0.1" in refused.json()["detail"]
    assert service.keys.list() == []
    key = service.key("alice")  # with keys, the key decides, whatever the name
    named = client.get("/v1/jobs", headers={"host": "tuner.internal", "x-api-key": key})
    assert named.status_code == 200


def test_every_answer_forbids_sniffing_and_framing(service: Service) -> None:
    client = service.client()
    service.key("alice")  # so the dashboard answers 401: refusals carry them too
    for path in ("/healthz", "/v1/jobs", "/dashboard", "/api/studies"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path


def test_the_cli_turns_the_servers_key_advice_into_its_own(service: Service) -> None:
    service.key("alice")
    detail = service.client().get("/v1/jobs").json()["detail"]
    assert "Authorization: Bearer" in detail
    advice = "this server needs an API key: give it with --key or TUNER_API_KEY"
    assert cli_message(detail) == advice


def test_once_a_key_exists_every_request_needs_one(service: Service) -> None:
    service.key("alice")
    client = service.client()
    for method, path in [
        ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/j_x/trials"),
        ("GET", "/v1/objectives"), ("GET", "/v1/nowhere"), ("DELETE", "/v1/jobs/j_x"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 401, (method, path)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in answer.json()["detail"]
    for path in ("/", "/dashboard", "/api/studies", "/static/bundle.js"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["www-authenticate"].startswith('Basic realm="tuner"')
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_bearer_and_x_api_key_both_work_and_bad_keys_do_not(service: Service) -> None:
    key = service.key("alice", "read")
    client = service.client()
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/jobs", headers={"X-API-Key": key}).status_code == 200
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for headers in (
        {"Authorization": f"Bearer {forged}"},
        {"X-API-Key": "tk_000000000000_" + "A" * 43},
        {"Authorization": "Bearer"},
        {"Authorization": f"Token {key}"},
        {"Authorization": "Basic !!!notbase64"},
        {"X-API-Key": "x" * 10_000},
    ):
        answer = client.get("/v1/jobs", headers=headers)
        assert answer.status_code == 401, headers
        assert "not valid" in answer.json()["detail"] or "needs an API key" in answer.json()[
            "detail"
        ]


def test_revoked_key_is_refused_at_once_and_the_server_stays_locked(service: Service) -> None:
    key = service.key("alice", "read")
    client = service.client(key)
    assert client.get("/v1/jobs").status_code == 200
    key_id = service.keys.list()[0].id
    service.keys.revoke(key_id)
    assert client.get("/v1/jobs").status_code == 401
    # Revoking the last key does not fall back to keyless local mode.
    assert service.client().get("/v1/jobs").status_code == 401


def test_scopes_read_submit_admin(service: Service) -> None:
    reader = service.client(service.key("alice", "read"))
    submitter = service.client(service.key("alice", "submit"))
    created = submitter.post("/v1/jobs", json=tiny_spec())
    assert created.status_code == 201
    job = created.json()["id"]
    refused = reader.post("/v1/jobs", json=tiny_spec())
    assert refused.status_code == 403
    assert "'submit' scope" in refused.json()["detail"]
    assert reader.post(f"/v1/jobs/{job}/cancel").status_code == 403
    assert reader.delete(f"/v1/jobs/{job}").status_code == 403
    assert reader.get(f"/v1/jobs/{job}").status_code == 200
    assert submitter.get(f"/v1/jobs/{job}").status_code == 403  # submit is not read
    assert submitter.post(f"/v1/jobs/{job}/cancel").status_code == 200
    assert reader.get("/v1/keys").status_code == 403


def test_another_owners_job_is_not_found_on_every_sub_resource(service: Service) -> None:
    alice = service.client(service.key("alice"))
    bob = service.client(service.key("bob"))
    job = alice.post("/v1/jobs", json=tiny_spec()).json()["id"]
    before = service.counts()
    for method, path, body in [
        ("GET", f"/v1/jobs/{job}", None),
        ("GET", f"/v1/jobs/{job}/trials", None),
        ("GET", f"/v1/jobs/{job}/trials/0", None),
        ("POST", f"/v1/jobs/{job}/trials", {"params": [{"lr": 0.05}]}),
        ("GET", f"/v1/jobs/{job}/events", None),
        ("GET", f"/v1/jobs/{job}/best-config", None),
        ("GET", f"/v1/jobs/{job}/best-model", None),
        ("POST", f"/v1/jobs/{job}/cancel", None),
        ("POST", f"/v1/jobs/{job}/resume", None),
        ("PATCH", f"/v1/jobs/{job}", {"n_trials": 5}),
        ("DELETE", f"/v1/jobs/{job}", None),
    ]:
        answer = bob.request(method, path, json=body)
        assert answer.status_code == 404, (method, path, answer.text)
        assert "no job" in answer.json()["detail"]
    assert bob.get("/v1/jobs").json()["items"] == []
    warm = bob.post("/v1/jobs", json=tiny_spec(warm_start_from=job))
    assert warm.status_code == 404
    assert service.counts() == before
    assert alice.get(f"/v1/jobs/{job}").json()["state"] == "queued"


def test_admin_sees_and_acts_on_every_owner(service: Service) -> None:
    alice = service.client(service.key("alice"))
    admin = service.client(service.key("ops", "admin"))
    job = alice.post("/v1/jobs", json=tiny_spec()).json()["id"]
    assert [j["id"] for j in admin.get("/v1/jobs").json()["items"]] == [job]
    assert admin.post(f"/v1/jobs/{job}/cancel").json()["state"] == "cancelled"
    assert alice.get(f"/v1/jobs/{job}").json()["state"] == "cancelled"


def test_dashboard_needs_an_admin_key_a_browser_can_send(service: Service) -> None:
    admin_key = service.key("ops", "admin")
    read_key = service.key("alice", "read")
    client = service.client()
    assert client.get("/api/studies", headers=_basic(admin_key)).status_code == 200
    assert client.get("/", headers=_basic(admin_key)).status_code == 200
    assert client.get("/api/studies", headers={"X-API-Key": admin_key}).status_code == 200
    refused = client.get("/api/studies", headers=_basic(read_key))
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"]
    assert client.get("/api/studies", headers=_basic("wrong")).status_code == 401
    # The dashboard's write endpoints: nothing is created without an admin key.
    before = service.counts()
    body = {"study_name": "sneaky", "directions": ["minimize"]}
    assert client.post("/api/studies", json=body).status_code == 401
    assert client.post("/api/studies", json=body, headers=_basic(read_key)).status_code == 403
    evil = {**_basic(admin_key), "Origin": "http://evil.example"}
    refused = client.post("/api/studies", json=body, headers=evil)
    assert refused.status_code == 403 and "cross-site" in refused.json()["detail"]
    assert client.delete("/v1/jobs/j_1", headers=evil).status_code == 403
    assert service.counts() == before
    same_site = {**_basic(admin_key), "Origin": "http://testserver"}
    assert client.get("/api/studies", headers=evil).status_code == 200  # reading is fine
    assert client.post("/api/studies", json=body, headers=same_site).status_code == 201


def test_a_server_reachable_from_outside_never_runs_keyless(tmp_path: Path) -> None:
    exposed = make_service(tmp_path, host="0.0.0.0")
    assert exposed.client().get("/v1/jobs").status_code == 401
    assert exposed.client().get("/api/studies").status_code == 401
    told = make_service(tmp_path / "insecure", host="0.0.0.0", insecure=True)
    assert told.client().get("/v1/jobs").status_code == 200


def test_serve_refuses_a_public_bind_without_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    make_service(tmp_path)  # migrated
    with pytest.raises(UnsafeBind, match="tuner keys create"):
        check_bind(Settings(database_url=url, host="0.0.0.0"))
    check_bind(Settings(database_url=url, host="127.0.0.1"))
    check_bind(Settings(database_url=url, host="0.0.0.0", insecure=True))
    engine = make_engine(url)
    KeyStore(engine).create("ops", "admin")
    engine.dispose()
    check_bind(Settings(database_url=url, host="0.0.0.0"))


def test_keys_are_stored_only_as_salted_hashes(service: Service) -> None:
    first = service.keys.create("alice", "read")
    second = service.keys.create("alice", "read")
    assert first.secret.startswith(f"tk_{first.info.id}_")
    raw = Path(service.settings.database_url.removeprefix("sqlite:///")).read_bytes()
    wal = Path(service.settings.database_url.removeprefix("sqlite:///") + "-wal")
    raw += wal.read_bytes() if wal.exists() else b""
    # Not rsplit("_"): the random part itself may hold "_", leaving a few characters
    # that turn up in any database file by chance.
    secret_part = first.secret.removeprefix(f"tk_{first.info.id}_")
    assert len(secret_part) >= 40
    assert secret_part.encode() not in raw
    engine = make_engine(service.settings.database_url)
    from sqlalchemy.orm import Session

    with Session(engine) as s:
        rows = {r.id: r for r in s.query(ApiKey)}
    engine.dispose()
    assert rows[first.info.id].salt != rows[second.info.id].salt
    assert first.secret not in {r.digest for r in rows.values()}


def test_admin_manages_keys_over_http(service: Service) -> None:
    admin = service.client(service.key("ops", "admin"))
    made = admin.post("/v1/keys", json={"owner": "carol", "scopes": ["read"]})
    assert made.status_code == 201
    carol = service.client(made.json()["key"])
    assert carol.get("/v1/jobs").status_code == 200
    listed = admin.get("/v1/keys").json()
    assert {k["owner"] for k in listed} == {"ops", "carol"}
    assert all("key" not in k and "digest" not in k for k in listed)
    assert admin.delete(f"/v1/keys/{made.json()['id']}").json()["revoked_at"] is not None
    assert carol.get("/v1/jobs").status_code == 401
    assert admin.delete("/v1/keys/000000000000").status_code == 404
    bad = admin.post("/v1/keys", json={"owner": "../x", "scopes": ["root"]})
    assert bad.status_code == 422


def test_keys_cli_creates_once_lists_without_secrets_and_revokes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    made = runner.invoke(keys_app, ["create", "--owner", "alice", "--scopes", "read,submit",
                                    "--storage", url])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("tk_")
    listed = runner.invoke(keys_app, ["list", "--storage", url])
    key_id = key[3:15]
    assert key_id in listed.stdout and "alice" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # the secret (it may hold '_' itself)
    bad = runner.invoke(keys_app, ["create", "--owner", "alice", "--scopes", "root",
                                   "--storage", url])
    assert bad.exit_code == 2 and "read, submit, admin" in bad.output
    assert runner.invoke(keys_app, ["revoke", key_id, "--storage", url]).exit_code == 0
    engine = make_engine(url)
    assert KeyStore(engine).verify(key) is None
    engine.dispose()
    assert runner.invoke(keys_app, ["revoke", "ffffffffffff", "--storage", url]).exit_code == 2


def test_migrations_have_one_head_and_build_the_key_table(service: Service) -> None:
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1
    engine = make_engine(service.settings.database_url)
    mine = MetaData()
    ApiKey.__table__.to_metadata(mine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": VERSION_TABLE, "compare_type": True,
            "include_name": lambda name, kind, _: kind != "table" or name == "api_keys",
        })
        assert compare_metadata(context, mine) == []
    engine.dispose()
