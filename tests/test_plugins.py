"""Custom objectives: a package registers a model family, and jobs tune it over HTTP.

The example plugin (examples/tuner-example-objective, objective ``resmlp``) is
installed into this venv like a user would (``pip install -e``; ``make test`` does it
first, the session fixture only when it is missing). Broken registrations are made
for real too: a distribution's metadata on ``sys.path`` with its entry points.
"""

from __future__ import annotations

import importlib
import logging
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from specs import TINY_SPACE, tiny_spec
from test_api import client_for, make_settings, run_trials

from tuner import objective, spec

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tuner-example-objective"


def _refresh_registry() -> None:
    """The registry is read once per process; a test that changes it reads it again."""
    importlib.invalidate_caches()
    spec.objective_names.cache_clear()
    objective.get_objective.cache_clear()


@pytest.fixture(scope="session", autouse=True)
def resmlp_installed() -> None:
    """The example plugin, installed into this venv (once, if ``make test`` has not)."""
    if not entry_points(group="tuner.objectives", name="resmlp"):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
             "--no-build-isolation", "-e", str(EXAMPLE)],
            check=True,
        )
        site.addsitedir(sysconfig.get_paths()["purelib"])  # read the new .pth file
    _refresh_registry()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield from client_for(make_settings(tmp_path))


def resmlp_spec(name: str = "res", n_trials: int = 2, **overrides: Any) -> dict[str, Any]:
    """The tiny spec for the plugin: its own ``blocks`` instead of ``depth``."""
    space = {k: v for k, v in TINY_SPACE.items() if k != "depth"}
    return tiny_spec(name, n_trials, **{
        "objective": "resmlp", "search_space": {**space, "blocks": {"low": 1, "high": 2}},
        **overrides,
    })


def test_the_installed_plugin_is_a_registered_objective() -> None:
    assert {"mlp", "cnn", "resmlp"} <= set(spec.objective_names())
    resmlp = objective.get_objective("resmlp")
    assert resmlp.name == "resmlp" and resmlp.params == {"blocks": int}


def test_objectives_endpoint_lists_the_plugin_with_its_default_space(client: TestClient) -> None:
    listed = {o["name"]: o for o in client.get("/v1/objectives").json()}
    assert {"mlp", "cnn", "resmlp"} <= set(listed)
    resmlp = listed["resmlp"]
    assert resmlp["params"] == {"blocks": "int"}
    assert "residual" in resmlp["description"].lower()
    space = resmlp["default_space"]["classification"]
    assert space["blocks"] == {"low": 1, "high": 4, "log": False, "step": None}
    assert "depth" not in space and "lr" in space and "loss" in space


@pytest.mark.slow
def test_a_job_tunes_the_plugin_end_to_end_over_http(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    for client in client_for(settings):
        created = client.post("/v1/jobs", json=resmlp_spec())
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        run_trials(settings, 2)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job
        assert job["objective"] == "resmlp"
        assert job["trials"]["complete"] == 2
        trials = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
        assert {t["params"]["blocks"] for t in trials} <= {1, 2}
        assert job["best"]["params"]["blocks"] in (1, 2)
        best = client.get(f"/v1/jobs/{job_id}/best-config", params={"format": "json"})
        assert best.status_code == 200, best.text
        exported = best.json()
        assert exported["objective"] == "resmlp"
        assert exported["search_space"]["blocks"] == job["best"]["params"]["blocks"]


def test_an_unregistered_objective_is_refused_naming_the_registered_ones(
    client: TestClient,
) -> None:
    refused = client.post("/v1/jobs", json=resmlp_spec(objective="resnet9000"))
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert "unknown objective 'resnet9000'" in detail
    for name in ("cnn", "mlp", "resmlp"):
        assert name in detail
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_parameter_the_plugin_does_not_have_is_refused_naming_its_own(
    client: TestClient,
) -> None:
    body = resmlp_spec()
    body["search_space"] = {**body["search_space"], "channels": {"choices": [8, 16]}}
    refused = client.post("/v1/jobs", json=body)
    assert refused.status_code == 422
    assert "has no parameter 'channels'" in refused.json()["detail"]
    assert "its own parameters (blocks)" in refused.json()["detail"]


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A distribution on sys.path registering objectives that break the protocol."""
    site_dir = tmp_path / "site"
    dist = site_dir / "broken_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[tuner.objectives]\n"
        "notanobjective = json:dumps\n"
        "misnamed = tuner.objective:MLP\n"
        "missing = no_such_module_here:THING\n"
        "shadow = shadow_plugin:Shadow\n"
    )
    (site_dir / "shadow_plugin.py").write_text(
        "from tuner.objective import Objective\n\n\n"
        "class Shadow(Objective):\n"
        "    name = 'shadow'\n"
        "    params = {'lr': float, 'blocks': list}\n"
    )
    monkeypatch.syspath_prepend(str(site_dir))
    _refresh_registry()
    yield
    monkeypatch.undo()
    _refresh_registry()


@pytest.mark.usefixtures("broken_plugins")
def test_broken_plugins_get_advice_and_do_not_hide_the_good_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    advice = {
        "notanobjective": "it is a function, not a tuner.objective.Objective",
        "misnamed": "its name is 'mlp'; make it match the entry point name",
        "missing": "does not load: ModuleNotFoundError",
        "shadow": "its params lr are common dimensions; rename them",
    }
    for name, words in advice.items():
        with pytest.raises(spec.SpecError, match=words):
            objective.get_objective(name)
    with caplog.at_level(logging.ERROR, logger="tuner.objective"):
        listed = {o["name"] for o in objective.list_objectives()}
    assert {"mlp", "cnn", "resmlp"} <= listed
    assert not listed & set(advice)
    assert len([r for r in caplog.records if r.name == "tuner.objective"]) == len(advice)


def test_a_request_names_a_registered_objective_never_code() -> None:
    for name in ("tuner_example_objective:RESMLP", "tuner_example_objective.ResMLP"):
        with pytest.raises(spec.SpecError, match="unknown objective"):
            spec.parse_spec({**resmlp_spec(), "objective": name})
