"""The README's tour, run as written against a real server: every command in it works.

The fenced blocks of "A five-minute tour" run in order in a temporary folder holding a
copy of ``studies/``, with only the server's address (and ``<id>``, the job the first
block creates) filled in. The commands of the other sections are covered where their
feature is tested: `tuner keys` (test_auth), `tuner serve`/`tuner worker` on many
processes (test_fault_tolerance, test_scale), the plugin install (test_plugins).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.live_server import LiveServer, start_server
from tuner.spec import parse_spec

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def tour_blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block in the tour section, in order."""
    tour = README.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", tour, flags=re.S)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("readme-server"), workers=2)
    yield live
    live.stop()


def run_block(code: str, server: LiveServer, cwd: Path, job_id: str | None) -> str:
    code = code.replace("http://127.0.0.1:8000", server.url).replace(".venv/bin/", f"{BIN}/")
    if job_id:
        code = code.replace("<id>", job_id)
    assert "<" not in code.replace("<<", ""), f"unfilled placeholder in:\n{code}"
    env = {**os.environ, "TUNER_SERVER": server.url, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("TUNER_DATABASE_URL", None)  # local commands use the README's default database
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_tour_runs_as_written(server: LiveServer, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "studies", tmp_path / "studies", ignore=shutil.ignore_patterns("*.db*"))
    blocks = tour_blocks()
    assert [lang for lang, _ in blocks] == ["bash", "bash", "bash", "python", "bash"]
    job_id: str | None = None
    for lang, code in blocks:
        if lang == "python":
            script = code.replace("http://127.0.0.1:8000", server.url)
            subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=600)
            continue
        out = run_block(code, server, tmp_path, job_id)
        if job_id is None:  # the first block submits the job the others name
            job_id = json.loads(out)["id"]

    # What the tour promised it would leave behind.
    assert "Diagnosis" in (tmp_path / "report.html").read_text()
    exported = parse_spec(yaml.safe_load((tmp_path / "best.yaml").read_text()))
    assert exported.provenance is not None and exported.budget.n_trials == 1
    assert load_file(str(tmp_path / "best.safetensors"))
    assert load_file(str(tmp_path / "model.safetensors"))
    assert (tmp_path / "studies" / "tuner.db").exists()  # `tuner run` used the default
