"""A real browser (Debian's chromium, headless, via Playwright) on the served dashboard.

The job is submitted over the API; the dashboard at ``/`` of the same server must list
its study and show its trials.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import launch, require_chromium
from live_server import LiveServer, start_server
from specs import tiny_spec

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SPEC = tiny_spec("browser-demo")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    require_chromium()
    live = start_server(tmp_path_factory.mktemp("browser"), workers=1)
    yield live
    live.stop()


def finished_job(server: LiveServer) -> dict[str, object]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        job = http.post("/v1/jobs", json=SPEC).json()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            job = http.get(f"/v1/jobs/{job['id']}").json()
            if job["state"] == "succeeded":
                return job
            time.sleep(0.5)
    pytest.fail(f"job did not finish: {job}")


def test_the_dashboard_shows_the_job_study_and_its_trials(
    server: LiveServer, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    job = finished_job(server)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{server.url}/dashboard", wait_until="networkidle")
            expect(page.get_by_text(str(job["study_name"])).first).to_be_visible(timeout=30_000)

            page.goto(f"{server.url}{job['links']['dashboard']}/trials")  # type: ignore[index]
            for number in range(3):
                trial = page.get_by_text(re.compile(rf"^Trial {number}\b")).first
                expect(trial).to_be_visible(timeout=30_000)
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 0
