"""``tuner submit / jobs / status / watch / cancel / resume / report`` against a live server.

The commands run through typer's CliRunner in this process and talk HTTP to a real
server (uvicorn + one embedded worker on 127.0.0.1) that runs tiny jobs for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from live_server import free_port, live_server
from specs import tiny_spec
from typer.testing import CliRunner, Result

from tuner.cli import app
from tuner.client import Client
from tuner.remote import export_from_server, is_job_id
from tuner.spec import parse_spec

runner = CliRunner()


def tuner(*args: str, server: str | None = None) -> Result:
    env = {"TUNER_SERVER": server, "TUNER_API_KEY": None, "COLUMNS": "200"}
    return runner.invoke(app, list(args), env=env)


def one_red_line(result: Result) -> str:
    """The error output of a refused command: exactly one line, no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_commands_are_registered_with_help() -> None:
    result = tuner("--help")
    for name in ("submit", "jobs", "status", "watch", "cancel", "resume", "report"):
        assert name in result.output
    assert "TUNER_SERVER" in tuner("submit", "--help").output


def test_no_server_is_one_line_that_says_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_red_line(tuner("jobs", "--server", url))
    assert url in line and "tuner serve" in line


def test_a_spec_file_that_is_missing_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # refused before any request
    line = one_red_line(tuner("submit", str(tmp_path / "nope.yaml"), "--server", url))
    assert "nope.yaml" in line


def test_job_ids_are_told_apart_from_study_names() -> None:
    assert is_job_id("j_0123456789ab")
    assert not is_job_id("digits-cnn") and not is_job_id("j_notHex")


# --- against a live server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("cli")) as url:
        yield url


@pytest.fixture(scope="module")
def watched(live: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Result]:
    """``tuner submit spec.yaml --watch`` of a three-trial job: its id and the result."""
    spec = tmp_path_factory.mktemp("spec") / "spec.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec("cli-watch")))
    result = tuner("submit", str(spec), "--watch", server=live)
    job_id = next(w for w in result.output.split() if is_job_id(w))
    return job_id, result


@pytest.mark.slow
def test_submit_watch_ends_with_a_success_line(watched: tuple[str, Result]) -> None:
    job_id, result = watched
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"job {job_id} succeeded: 3 of 3 trials; best val_accuracy=")


@pytest.mark.slow
def test_jobs_lists_the_job_and_filters_by_state(live: str, watched: tuple[str, Result]) -> None:
    job_id, _ = watched
    listed = tuner("jobs", server=live)
    assert listed.exit_code == 0 and job_id in listed.stdout and "3/3" in listed.stdout
    assert job_id in tuner("jobs", "--state", "succeeded", server=live).stdout
    assert job_id not in tuner("jobs", "--state", "failed", server=live).stdout
    assert "state" in one_red_line(tuner("jobs", "--state", "sleeping", server=live))


@pytest.mark.slow
def test_status_shows_state_trials_and_best(live: str, watched: tuple[str, Result]) -> None:
    job_id, _ = watched
    result = tuner("status", job_id, server=live)
    assert result.exit_code == 0, result.output
    assert job_id in result.stdout and "succeeded" in result.stdout
    assert "3 of 3 finished (3 complete, 0 pruned" in result.stdout
    assert "val_accuracy=" in result.stdout and f"{live}/dashboard/" in result.stdout


@pytest.mark.slow
def test_an_unknown_job_is_one_line_with_the_servers_detail(live: str) -> None:
    line = one_red_line(tuner("status", "j_000000000000", server=live))
    assert "j_000000000000" in line
    assert "`tuner jobs`" in line and "GET /v1/jobs" not in line


@pytest.mark.slow
def test_a_bad_spec_is_one_line_naming_the_field(live: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_spec(search_space={"lr": {"low": 1, "high": 0.1}})))
    line = one_red_line(tuner("submit", str(bad), server=live))
    assert "search_space.lr" in line and "must be less than high" in line


@pytest.mark.slow
def test_cancel_resume_and_watch_of_a_cancelled_job_exits_1(live: str, tmp_path: Path) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump(tiny_spec("cli-long", n_trials=10_000)))
    submitted = tuner("submit", str(spec), "--idempotency-key", "once", server=live)
    job_id = next(w for w in submitted.stdout.split() if is_job_id(w))
    assert f"tuner watch {job_id}" in submitted.stdout
    again = tuner("submit", str(spec), "--idempotency-key", "once", server=live)
    assert job_id in again.stdout

    cancelled = tuner("cancel", job_id, server=live)
    assert cancelled.exit_code == 0 and f"tuner resume {job_id}" in cancelled.stdout
    watched = tuner("watch", job_id, server=live)
    assert watched.exit_code == 1
    assert f"job {job_id} cancelled" in watched.stdout
    assert "cancelled" in one_red_line(tuner("cancel", job_id, server=live))

    resumed = tuner("resume", job_id, server=live)
    assert resumed.exit_code == 0 and "queued" in resumed.stdout
    tuner("cancel", job_id, server=live)


@pytest.mark.slow
def test_export_from_server_writes_a_runnable_spec(
    live: str, watched: tuple[str, Result], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id, _ = watched
    out = tmp_path / "best.yaml"
    export_from_server(job_id, out, None, None, live, None)
    spec = parse_spec(yaml.safe_load(out.read_text()))
    assert spec.provenance is not None and spec.provenance.study.endswith(job_id)
    export_from_server(job_id, None, "json", None, live, None)
    assert parse_spec(yaml.safe_load(capsys.readouterr().out)).name == spec.name

    with Client(live) as client:
        ranked = client.trials(job_id, state="complete", sort="value")
    chosen = ranked[-1]  # not the best: --trial picks it
    picked = tuner("export", job_id, "--trial", str(chosen.number), server=live)
    assert picked.exit_code == 0, picked.output
    exported = parse_spec(yaml.safe_load(picked.stdout))
    assert exported.provenance is not None
    assert exported.provenance.trial_number == chosen.number
    assert exported.provenance.values == chosen.values
    missing = one_red_line(tuner("export", job_id, "--trial", "999", server=live))
    assert "has no trial 999" in missing


@pytest.mark.slow
def test_report_writes_the_html_page(
    live: str, watched: tuple[str, Result], tmp_path: Path
) -> None:
    job_id, _ = watched
    out = tmp_path / "report.html"
    with Client(live) as client:
        assert client.report(job_id, tmp_path).suffix == ".html"
    result = tuner("report", job_id, "-o", str(out), server=live)
    assert result.exit_code == 0, result.output
    assert out.read_text().lstrip().lower().startswith("<!doctype html")
