"""The dashboard's study detail is rendered in a child process: started by the page,
replaced when it dies, stopped with the app."""

from __future__ import annotations

import gzip
import json
import os
import signal
from pathlib import Path

import optuna
from fastapi.testclient import TestClient

from api.study_render import StudyRenderer
from tests.secure_app import make_service
from tuner.storage import make_storage

HEAVY = ("torch", "tuner.engine")  # not scikit-learn: optuna-dashboard imports it


def _study(tmp_path: Path, n_trials: int) -> tuple[str, int]:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="s", storage=make_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n_trials)
    return url, study._study_id


def _child_pid(renderer: StudyRenderer) -> int:
    pool = renderer._current_pool()
    return pool.submit(os.getpid).result()


def test_a_study_is_rendered_gzipped_by_another_process(tmp_path: Path) -> None:
    url, study_id = _study(tmp_path, 3)
    renderer = StudyRenderer(url)
    try:
        answer = renderer.render(f"/api/studies/{study_id}", "")
        assert answer.status == 200 and answer.gzipped
        assert len(json.loads(gzip.decompress(answer.body))["trials"]) == 3
        assert _child_pid(renderer) != os.getpid()
        missing = renderer.render("/api/studies/999", "")
        assert missing.status == 404 and not missing.gzipped  # errors pass through as sent
        assert "not found" in json.loads(missing.body)["reason"]
    finally:
        renderer.close()


def test_a_child_that_died_is_replaced_and_close_stops_it(tmp_path: Path) -> None:
    url, study_id = _study(tmp_path, 2)
    renderer = StudyRenderer(url)
    try:
        first = _child_pid(renderer)
        os.kill(first, signal.SIGKILL)
        answer = renderer.render(f"/api/studies/{study_id}", "after=1")
        assert answer.status == 200
        assert len(json.loads(gzip.decompress(answer.body))["trials"]) == 1
        second = _child_pid(renderer)
        assert second != first
    finally:
        renderer.close()
    assert not Path(f"/proc/{second}").exists()  # stopped and reaped


def test_the_page_starts_the_renderer_and_the_apps_shutdown_stops_it(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    dashboard = next(r for r in service.app.routes if getattr(r, "name", "") == "dashboard")
    renderer: StudyRenderer = dashboard.app.renderer  # type: ignore[attr-defined]
    admin = {"Authorization": f"Bearer {service.key('root', 'admin')}"}
    with TestClient(service.app, headers=admin) as client:
        assert client.get("/api/studies").status_code == 200
        assert renderer._pool is None  # the page's API calls alone start nothing
        assert client.get("/dashboard").status_code == 200
        assert renderer._pool is not None
        child = _child_pid(renderer)
        assert Path(f"/proc/{child}").exists()
    assert renderer._pool is None and not Path(f"/proc/{child}").exists()


def test_the_child_renders_without_torch_or_the_engine(tmp_path: Path) -> None:
    """The child starts on a browser's first visit, and the visit waits for it: a child
    importing torch and the engine took 2.0 s to its first answer here, one without 1.2 s."""
    url, study_id = _study(tmp_path, 2)
    renderer = StudyRenderer(url)
    try:
        assert renderer.render(f"/api/studies/{study_id}", "").status == 200
        probe = f"sorted(m for m in {HEAVY!r} if m in __import__('sys').modules)"
        loaded = renderer._current_pool().submit(eval, probe).result()
        assert loaded == []
    finally:
        renderer.close()
