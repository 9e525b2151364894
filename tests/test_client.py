"""The Python client against the real app: in process (no workers) and a live server.

In-process tests cover what needs no trials to run (submitting, listing, state changes,
errors, events of an ended job). The live server (uvicorn + one embedded worker on
127.0.0.1) runs tiny jobs for real, for waiting, streaming, trials and downloads.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from a2wsgi import ASGIMiddleware
from live_server import free_port, live_server
from safetensors.torch import load_file
from servers import InProcess, in_process
from specs import tiny_spec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tuner.client import (
    AsyncClient,
    Client,
    Conflict,
    Invalid,
    Job,
    NotFound,
    RateLimited,
    Trial,
    TunerError,
    Unauthorized,
    Unreachable,
    WaitTimeout,
)
from tuner.spec import SpecError, parse_spec


@pytest.fixture
def server(tmp_path: Path) -> InProcess:
    return in_process(tmp_path)


@pytest.fixture
def client(server: InProcess) -> Iterator[Client]:
    with Client(server.url, transport=server.transport()) as client:
        yield client


# --- submitting ----------------------------------------------------------------------


def test_submit_takes_a_dict_a_file_or_a_spec_object(client: Client, tmp_path: Path) -> None:
    from_dict = client.submit(tiny_spec("from-dict"))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec("from-file")))
    from_path = client.submit(path)
    from_str = client.submit(str(path))
    from_spec = client.submit(parse_spec(tiny_spec("from-spec")))

    assert [j.name for j in (from_dict, from_path, from_str, from_spec)] == [
        "from-dict", "from-file", "from-file", "from-spec",
    ]
    assert len({j.id for j in (from_dict, from_path, from_str, from_spec)}) == 4
    assert all(j.state == "queued" and j.budget.n_trials == 3 for j in (from_dict, from_spec))
    assert from_spec.spec is not None and from_spec.spec["dataset"]["name"] == "iris"
    assert client.get(from_path.id).id == from_path.id


def test_same_idempotency_key_returns_the_same_job(client: Client) -> None:
    first = client.submit(tiny_spec(), idempotency_key="nightly-42")
    again = client.submit(tiny_spec(), idempotency_key="nightly-42")
    assert again.id == first.id
    assert len(list(client.list())) == 1

    with pytest.raises(Conflict) as refused:
        client.submit(tiny_spec(n_trials=5), idempotency_key="nightly-42")
    assert refused.value.status_code == 409 and "nightly-42" in refused.value.detail


def test_a_bad_spec_is_invalid_with_the_servers_field_message(client: Client) -> None:
    bad = tiny_spec(search_space={"lr": {"low": 1.0, "high": 0.1}})
    with pytest.raises(Invalid) as refused:
        client.submit(bad)
    assert refused.value.status_code == 422
    assert "search_space.lr" in refused.value.detail
    assert "must be less than high" in refused.value.detail


def test_a_spec_file_that_cannot_be_read_says_which_file(client: Client, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"cannot read .*missing\.yaml"):
        client.submit(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        client.submit(broken)


# --- reading and changing jobs -----------------------------------------------------------


def test_list_walks_every_page_newest_first_and_filters(client: Client) -> None:
    made = [client.submit(tiny_spec(f"job-{i}")).id for i in range(3)]
    client.cancel(made[1])

    assert [j.id for j in client.list(page_size=1)] == made[::-1]
    assert [j.id for j in client.list(limit=2, page_size=1)] == made[:0:-1]
    assert [j.id for j in client.list(state="cancelled")] == [made[1]]
    with pytest.raises(Invalid, match="state"):
        list(client.list(state="sleeping"))


def test_cancel_and_resume_move_the_job_and_refuse_what_its_state_forbids(
    client: Client,
) -> None:
    job = client.submit(tiny_spec())
    cancelled = client.cancel(job.id)
    assert cancelled.state == "cancelled" and cancelled.done
    with pytest.raises(Conflict) as refused:
        client.cancel(job.id)
    assert refused.value.detail  # the server's words, not a bare status
    resumed = client.resume(job.id)
    assert resumed.state == "queued" and not resumed.done


def test_update_raises_the_budget_and_delete_removes_the_job(client: Client) -> None:
    job = client.submit(tiny_spec())
    assert client.update(job.id, n_trials=7).budget.n_trials == 7
    assert client.update(job.id, timeout_s=600).budget.timeout_s == 600
    with pytest.raises(Invalid, match="n_trials, timeout_s"):
        client.update(job.id)
    client.delete(job.id)
    with pytest.raises(NotFound):
        client.get(job.id)


def test_an_unknown_job_is_not_found_with_the_servers_detail(client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.get("j_000000000000")
    assert missing.value.status_code == 404
    assert "j_000000000000" in missing.value.detail and "GET /v1/jobs" in missing.value.detail
    with pytest.raises(NotFound):
        client.trials("j_000000000000")


def test_results_before_a_trial_completes_are_a_conflict(client: Client, tmp_path: Path) -> None:
    job = client.submit(tiny_spec())
    with pytest.raises(Conflict, match="no completed trial yet"):
        client.best_config(job.id)
    with pytest.raises(Conflict):
        client.download_model(job.id, tmp_path / "model.safetensors")
    assert not (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "model.safetensors.part").exists()


def test_catalog_lists_objectives_and_datasets(client: Client) -> None:
    assert {"mlp", "cnn"} <= {o["name"] for o in client.objectives()}
    assert "iris" in {d["name"] for d in client.datasets()}


def test_trials_as_a_dataframe_without_pandas_says_how_to_install_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = client.submit(tiny_spec())
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=r"pip install 'tuner\[pandas\]'"):
        client.trials(job.id, as_dataframe=True)


# --- events of a job that ended -------------------------------------------------------------


def test_events_run_to_the_end_and_resume_after_last_event_id(client: Client) -> None:
    job = client.submit(tiny_spec())
    client.cancel(job.id)
    events = list(client.events(job.id))
    assert [(e.event, e.data["state"]) for e in events] == [
        ("state", "queued"), ("state", "cancelled"),
    ]
    rest = list(client.events(job.id, last_event_id=events[0].id))
    assert [e.id for e in rest] == [events[1].id]


def test_wait_returns_a_job_that_already_ended(client: Client) -> None:
    job = client.submit(tiny_spec())
    client.cancel(job.id)
    seen: list[Job] = []
    assert client.wait(job.id, progress=seen.append).state == "cancelled"
    assert [j.state for j in seen] == ["cancelled"]


# --- connection and auth -----------------------------------------------------------------


def test_an_unreachable_server_names_the_url_and_tuner_serve() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, timeout=5) as client, pytest.raises(Unreachable) as failed:
        client.get("j_000000000000")
    assert isinstance(failed.value, TunerError) and failed.value.status_code is None
    assert url in failed.value.detail and "tuner serve" in failed.value.detail


def _guarded() -> httpx.BaseTransport:
    """Stands in for the API-key checks the server does not have yet: 401 without the
    key, 429 with Retry-After once the key has been used."""
    used: set[str] = set()

    async def job(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization")
        if auth != "Bearer secret":
            return JSONResponse({"detail": "send an API key: Authorization: Bearer"}, 401)
        if auth in used:
            return JSONResponse({"detail": "slow down"}, 429, headers={"Retry-After": "7"})
        used.add(auth)
        return JSONResponse({"id": "j_1", "name": "x", "state": "queued", "future": 1,
                             "budget": {"n_trials": 3}})

    app = Starlette(routes=[Route("/v1/jobs/{job_id}", job)])
    return httpx.WSGITransport(app=ASGIMiddleware(app))


def test_api_key_goes_as_bearer_and_refusals_map_to_errors() -> None:
    with Client("http://t", transport=_guarded()) as anonymous, \
            pytest.raises(Unauthorized, match="send an API key"):
        anonymous.get("j_1")
    with Client("http://t", api_key="secret", transport=_guarded()) as c:
        job = c.get("j_1")
        assert job.id == "j_1" and job.model_extra == {"future": 1}  # newer fields are kept
        with pytest.raises(RateLimited) as limited:
            c.get("j_1")
    assert limited.value.retry_after == 7 and limited.value.detail == "slow down"


def test_server_url_and_key_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNER_SERVER", "http://tuner.example:9000/")
    monkeypatch.setenv("TUNER_API_KEY", "secret")
    with Client(transport=_guarded()) as client:
        assert client.base_url == "http://tuner.example:9000"
        assert client.get("j_1").id == "j_1"  # the key from the environment was sent
    with pytest.raises(TunerError, match="must start with http"):
        Client("tuner.example:9000")


# --- the async client in process ---------------------------------------------------------


@pytest.mark.anyio
async def test_async_client_submits_lists_follows_and_refuses(server: InProcess) -> None:
    async with AsyncClient(server.url, transport=server.async_transport()) as client:
        job = await client.submit(tiny_spec("async"), idempotency_key="k")
        assert (await client.submit(tiny_spec("async"), idempotency_key="k")).id == job.id
        assert [j.id async for j in client.list()] == [job.id]
        assert (await client.cancel(job.id)).state == "cancelled"
        events = [e async for e in client.events(job.id)]
        assert events[-1].data["state"] == "cancelled"
        seen: list[str] = []

        async def note(j: Job) -> None:
            seen.append(j.state)

        assert (await client.wait(job.id, progress=note)).state == "cancelled"
        assert seen == ["cancelled"]
        with pytest.raises(NotFound):
            await client.get("j_000000000000")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- a live server running trials ------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("live")) as url:
        yield url


@pytest.fixture(scope="module")
def finished(live: str) -> tuple[Job, list[Job]]:
    """A three-trial job waited on to the end, with what the progress callback saw."""
    seen: list[Job] = []
    with Client(live) as client:
        job = client.submit(tiny_spec("live"))
        done = client.wait(job.id, timeout=240, progress=seen.append)
    return done, seen


@pytest.mark.slow
def test_wait_reports_growing_progress_and_ends_succeeded(finished: tuple[Job, list[Job]]) -> None:
    job, seen = finished
    assert job.state == "succeeded" and job.finished == 3
    counts = [j.finished for j in seen]
    assert counts == sorted(counts) and counts[-1] == 3 and len(set(counts)) > 1
    assert seen[-1].state == "succeeded"
    assert job.best is not None and job.best.trial_number is not None


@pytest.mark.slow
def test_events_stream_to_the_end_and_resume_without_repeats(
    live: str, finished: tuple[Job, list[Job]]
) -> None:
    job, _ = finished
    with Client(live) as client:
        events = list(client.events(job.id))
        ids = [int(e.id or 0) for e in events]
        assert ids == sorted(set(ids))
        assert events[-1].event == "state" and events[-1].data["state"] == "succeeded"
        assert sum(e.event == "trial" for e in events) == 3
        assert any(e.event == "best" for e in events)
        rest = list(client.events(job.id, last_event_id=events[2].id))
        assert [e.id for e in rest] == [e.id for e in events[3:]]


@pytest.mark.slow
def test_trials_as_a_list_and_as_a_dataframe(live: str, finished: tuple[Job, list[Job]]) -> None:
    job, _ = finished
    with Client(live) as client:
        trials = client.trials(job.id)
        assert isinstance(trials, list) and all(isinstance(t, Trial) for t in trials)
        assert [t.number for t in trials] == [0, 1, 2]
        best_first = client.trials(job.id, sort="value")
        assert best_first[0].number == job.best.trial_number  # type: ignore[union-attr]
        assert client.trial(job.id, 1).params == trials[1].params
        frame = client.trials(job.id, as_dataframe=True, state="complete")
    assert list(frame["number"]) == [0, 1, 2]
    assert {"value", "params_lr", "params_width", "metrics_val_accuracy"} <= set(frame.columns)
    assert frame["value"].max() == job.best.values[0]  # type: ignore[union-attr,index]


@pytest.mark.slow
def test_best_config_is_a_runnable_spec_with_provenance(
    live: str, finished: tuple[Job, list[Job]], tmp_path: Path
) -> None:
    job, _ = finished
    with Client(live) as client:
        text = client.best_config(job.id, path=tmp_path / "best.yaml")
        as_json = client.best_config(job.id, format="json")
    spec = parse_spec(yaml.safe_load(text))
    assert spec.provenance is not None
    assert spec.provenance.trial_number == job.best.trial_number  # type: ignore[union-attr]
    assert (tmp_path / "best.yaml").read_text() == text
    from_json = parse_spec(yaml.safe_load(as_json))
    assert from_json.search_space == spec.search_space


@pytest.mark.slow
def test_download_model_gives_loadable_safetensors(
    live: str, finished: tuple[Job, list[Job]], tmp_path: Path
) -> None:
    job, _ = finished
    with Client(live) as client:
        path = client.download_model(job.id, tmp_path / "best.safetensors")
        into_dir = client.download_model(job.id, tmp_path)
    tensors = load_file(path)
    assert tensors and all(t.numel() > 0 for t in tensors.values())
    assert into_dir.parent == tmp_path and into_dir.suffix == ".safetensors"


@pytest.mark.slow
def test_wait_gives_up_after_its_timeout_and_the_job_keeps_running(live: str) -> None:
    with Client(live) as client:
        job = client.submit(tiny_spec("long", n_trials=10_000))
        try:
            with pytest.raises(WaitTimeout, match=f"tuner cancel {job.id}"):
                client.wait(job.id, timeout=1)
            assert not client.get(job.id).done
        finally:
            client.cancel(job.id)


@pytest.mark.slow
@pytest.mark.anyio
async def test_async_wait_follows_a_live_job(live: str) -> None:
    async with AsyncClient(live) as client:
        job = await client.submit(tiny_spec("async-live", n_trials=2))
        counts: list[int] = []
        done = await client.wait(job.id, timeout=240, progress=lambda j: counts.append(j.finished))
    assert done.state == "succeeded" and counts[-1] == 2 and counts == sorted(counts)
