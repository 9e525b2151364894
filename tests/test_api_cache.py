"""The read cache of a job's detail and trial pages (api.cache), on the real app.

A ``before_cursor_execute`` listener on the app's engine sees every statement; each
request still reads its key (``api_keys``) and its job row (``jobs``: the owner check;
identical requests in flight together share those reads), and only a miss reads the
study's tables. The cache's clock is a test-owned counter,
so expiry is a step of that counter, not a wait. Answers past ``TTL_S`` are still
served while one refresh runs; past ``MAX_AGE_S`` a request waits for fresh data.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import event

from api.cache import MAX_AGE_S, TTL_S, ReadCache
from tests.secure_app import Service, make_service
from tests.specs import tiny_spec

PER_REQUEST = {"api_keys", "jobs"}
"""Tables every request reads before the cache is asked: the caller's key, the job row."""

CONCURRENT = 8


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Statements:
    """The tables (first FROM) of statements run on the engine."""

    tables: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        found = re.search(r"\bFROM (\w+)", statement)
        table = found.group(1) if found else statement.split()[0]
        with self.lock:
            self.tables.append(table)

    def study_reads(self) -> list[str]:
        return [t for t in self.tables if t not in PER_REQUEST]


@dataclass
class Setup:
    service: Service
    alice: TestClient
    job: str
    clock: Clock
    seen: Statements

    def get(self, path: str, client: TestClient | None = None) -> Any:
        response = (client or self.alice).get(path)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    service = make_service(tmp_path)
    clock = Clock()
    service.app.state.read_cache = ReadCache(clock=clock)
    alice = service.client(service.key("alice"))
    job = alice.post("/v1/jobs", json=tiny_spec()).json()["id"]
    seen = Statements()
    engine = service.app.state.storage.engine
    event.listen(engine, "before_cursor_execute", seen)
    yield Setup(service, alice, job, clock, seen)
    event.remove(engine, "before_cursor_execute", seen)


def _tell(setup: Setup, value: float) -> optuna.trial.FrozenTrial:
    """A complete trial told through Optuna alone: the job row does not change."""
    app = setup.service.app
    study_name = app.state.store.get(setup.job).study_name
    study = optuna.load_study(study_name=study_name, storage=app.state.storage)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)})
    study.tell(trial, value)
    return study.trials[trial.number]


def test_a_repeated_request_reads_no_study_tables(setup: Setup) -> None:
    _tell(setup, 0.7)
    paths = [f"/v1/jobs/{setup.job}", f"/v1/jobs/{setup.job}/trials?limit=5"]
    first = [setup.get(p) for p in paths]
    assert setup.seen.study_reads()
    setup.seen.tables.clear()
    assert [setup.get(p) for p in paths] == first
    assert set(setup.seen.tables) == PER_REQUEST
    setup.get(f"/v1/jobs/{setup.job}/trials?limit=6")  # other params: another entry
    assert setup.seen.study_reads()


def test_a_finished_trial_or_expiry_gives_fresh_data(setup: Setup) -> None:
    detail, page = f"/v1/jobs/{setup.job}", f"/v1/jobs/{setup.job}/trials"
    assert setup.get(detail)["trials"]["complete"] == 0 and setup.get(page)["items"] == []
    _tell(setup, 0.7)  # the row is unchanged: reads may lag, by at most MAX_AGE_S
    assert setup.get(detail)["trials"]["complete"] == 0 and setup.get(page)["items"] == []
    setup.clock.now += TTL_S  # stale: still served, while a refresh runs
    assert setup.get(detail)["trials"]["complete"] == 0
    setup.clock.now += MAX_AGE_S  # too old to serve: this request waits for fresh data
    assert setup.get(detail)["trials"]["complete"] == 1
    assert [t["values"] for t in setup.get(page)["items"]] == [[0.7]]

    store = setup.service.app.state.store
    claim = store.claim("cache-test")  # the row changes: started, state, updated_at
    assert claim is not None
    trial = _tell(setup, 0.9)
    assert store.attach_trial(claim.slot_id, trial._trial_id, trial.number)
    assert store.finish(claim.slot_id, TrialState.COMPLETE, [0.9])
    got = setup.get(detail)  # the clock has not moved
    assert got["state"] == "running" and got["trials"]["finished"] == 1
    assert got["trials"]["complete"] == 2 and got["best"]["values"] == [0.9]
    assert [t["values"] for t in setup.get(page)["items"]] == [[0.7], [0.9]]


def test_another_owner_still_gets_404(setup: Setup) -> None:
    paths = [f"/v1/jobs/{setup.job}", f"/v1/jobs/{setup.job}/trials"]
    for path in paths:
        setup.get(path)  # cached for alice
    bob = setup.service.client(setup.service.key("bob"))
    for path in paths:
        answer = bob.get(path)
        assert answer.status_code == 404, answer.text
        assert "no job" in answer.json()["detail"]


@pytest.mark.parametrize("path", ["", "/trials?limit=7"])
def test_concurrent_identical_requests_compute_once(setup: Setup, path: str) -> None:
    _tell(setup, 0.7)
    url = f"/v1/jobs/{setup.job}{path}"
    bob = setup.service.client(setup.service.key("bob"))
    setup.seen.tables.clear()
    setup.get(url)
    once = len(setup.seen.study_reads())
    setup.clock.now += MAX_AGE_S
    setup.seen.tables.clear()
    with ThreadPoolExecutor(CONCURRENT) as pool:  # bob's requests in between: never shared
        answers = list(pool.map(lambda _: setup.get(url), range(CONCURRENT)))
        refused = list(pool.map(lambda _: bob.get(url).status_code, range(CONCURRENT)))
    assert refused == [404] * CONCURRENT
    assert len(setup.seen.study_reads()) == once
    assert all(a == answers[0] for a in answers)


def test_a_stale_answer_is_served_while_one_refresh_runs() -> None:
    clock = Clock()
    cache = ReadCache(clock=clock)
    calls: list[int] = []
    release = threading.Event()

    def compute() -> int:
        calls.append(1)
        if len(calls) > 1:  # the refresh holds until the test lets it go
            assert release.wait(30)
        return len(calls)

    async def scenario() -> list[int]:
        got = [await cache.get("k", compute)]
        clock.now += TTL_S
        got += [await cache.get("k", compute) for _ in range(3)]  # one refresh starts
        clock.now += MAX_AGE_S  # too old now: wait for that refresh, start no other
        release.set()
        got.append(await cache.get("k", compute))
        return got

    assert asyncio.run(scenario()) == [1, 1, 1, 1, 2]
    assert len(calls) == 2


def test_concurrent_misses_wait_for_one_computation() -> None:
    cache = ReadCache(clock=Clock())
    release = threading.Event()
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        assert release.wait(30)
        return "answer"

    async def let_go() -> str:  # runs once every get before it waits for the computation
        release.set()
        return "answer"

    async def scenario() -> list[str]:
        gets = [cache.get("k", compute) for _ in range(CONCURRENT)]
        return await asyncio.gather(*gets, let_go())

    assert asyncio.run(scenario()) == ["answer"] * (CONCURRENT + 1)
    assert calls == [1]


def test_a_slow_answer_stays_fresh_longer() -> None:
    clock = Clock()
    cache = ReadCache(ttl_s=1, max_age_s=2, max_busy=0.25, clock=clock)
    calls: list[float] = []

    def slow() -> int:  # takes 1 s of the cache's clock: fresh for 4 s
        calls.append(clock.now)
        clock.now += 1
        return len(calls)

    async def scenario() -> list[int]:
        got = [await cache.get("k", slow)]
        clock.now += 3.9
        got.append(await cache.get("k", slow))  # still fresh: nothing computed
        clock.now += 1.2  # past 4 s + (max_age_s - ttl_s): too old, wait
        got.append(await cache.get("k", slow))
        return got

    assert asyncio.run(scenario()) == [1, 1, 2]
    assert calls == [0, pytest.approx(6.1)]


def test_the_cache_is_bounded_and_keeps_no_failure() -> None:
    cache = ReadCache(max_entries=2, clock=Clock())
    calls: list[str] = []

    def compute(key: str) -> str:
        calls.append(key)
        return key.upper()

    def boom() -> str:
        raise RuntimeError("database gone")

    async def scenario() -> None:
        for key in ("a", "b", "a", "c", "a", "b"):  # c evicts b, the least recently used
            assert await cache.get(key, lambda key=key: compute(key)) == key.upper()
        with pytest.raises(RuntimeError, match="database gone"):
            await cache.get("d", boom)
        assert await cache.get("d", lambda: "back") == "back"

    asyncio.run(scenario())
    assert calls == ["a", "b", "c", "b"]
    with pytest.raises(ValueError, match="ttl_s <= max_age_s"):
        ReadCache(ttl_s=-1)
    with pytest.raises(ValueError, match="ttl_s <= max_age_s"):
        ReadCache(ttl_s=3, max_age_s=2)


def test_the_dashboards_study_detail_is_cached_gzipped_behind_the_admin_check(
    tmp_path: Path,
) -> None:
    service = make_service(tmp_path)
    study = optuna.create_study(study_name="plain", storage=service.app.state.storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
    admin = service.client(service.key("root", "admin"))
    path = f"/api/studies/{study._study_id}"

    zipped = admin.get(path, headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == 200 and zipped.headers["content-encoding"] == "gzip"
    assert len(zipped.json()["trials"]) == 4  # the client inflated it
    plain = admin.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.json() == zipped.json()
    assert len(admin.get(f"{path}?after=3").json()["trials"]) == 1  # the query is in the key
    assert admin.get("/api/studies/999").status_code == 404

    reader = service.client(service.key("alice", "read"))
    assert reader.get(path).status_code == 403  # the Guard answers before the cache
    assert service.client().get(path).status_code == 401
