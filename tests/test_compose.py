"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Every service's command must be one the ``tuner`` CLI accepts (parsed by the real
click command behind typer), every TUNER_* variable a Settings field whose value
validates, and the image must install torch's CPU build.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tuner.cli import app
from tuner.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
TUNER_SERVICES = [name for name, s in SERVICES.items() if "command" in s]


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_the_scaled_out_deployment_has_its_parts() -> None:
    assert {"postgres", "api", "worker"} <= set(SERVICES)
    postgres = SERVICES["postgres"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert all("healthcheck" in s for s in SERVICES.values())
    assert argv(SERVICES["api"])[:4] == ["tuner", "serve", "--workers", "0"]
    assert argv(SERVICES["worker"])[:2] == ["tuner", "worker"]
    assert SERVICES["worker"]["deploy"]["replicas"] >= 2
    for name, service in SERVICES.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in SERVICES[dependency]


def parse_tuner(words: list[str]) -> dict[str, Any]:
    """A ``tuner`` command line parsed by the real click command behind typer: each
    option must exist and each value convert. Returns the parameters."""
    program, subcommand, *args = words
    assert program == "tuner"
    group = typer.main.get_command(app)  # typer's own click: its Group, its Context
    command = group.get_command(group.context_class(group), subcommand)  # type: ignore[attr-defined]
    assert command is not None, f"tuner has no command {subcommand!r}"
    return command.make_context(f"tuner {subcommand}", list(args)).params


@pytest.mark.parametrize("name", TUNER_SERVICES)
def test_every_command_is_a_real_tuner_command(name: str) -> None:
    parse_tuner(argv(SERVICES[name]))


def test_the_worker_healthcheck_asks_tuner_for_the_worker_heartbeat() -> None:
    """Not a check that the process exists (PID 1 always does while the container runs):
    ``tuner worker --check`` reads the heartbeat the worker writes to the database."""
    kind, *words = SERVICES["worker"]["healthcheck"]["test"]
    assert kind == "CMD"
    assert parse_tuner(words)["check"] is True


@pytest.mark.parametrize("name", TUNER_SERVICES)
def test_every_variable_is_a_known_setting_with_a_valid_value(name: str) -> None:
    env = environment(SERVICES[name])
    fields = {
        key.removeprefix("TUNER_").lower(): value
        for key, value in env.items() if key.startswith("TUNER_")
    }
    unknown = sorted(set(fields) - set(Settings.model_fields))
    assert not unknown, f"{name}: not settings: {unknown}"
    assert fields["database_url"].startswith("postgresql+psycopg://")
    Settings.model_validate(fields)  # raises when a value does not fit its field


def test_pool_settings_keep_sixteen_workers_under_postgres_default_limit() -> None:
    """docs/scaling.md: a worker holds at most db_pool_size + db_max_overflow connections."""
    env = environment(SERVICES["worker"])
    per_worker = int(env["TUNER_DB_POOL_SIZE"]) + int(env["TUNER_DB_MAX_OVERFLOW"])
    api = 2 * per_worker  # the API keeps two pools: the job store's and the dashboard's
    assert 16 * per_worker + api < 100 - 3  # max_connections - superuser_reserved


def test_the_image_installs_the_cpu_build_of_torch_first() -> None:
    lines = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("RUN ")
    ]
    torch = [i for i, line in enumerate(lines) if re.search(r"pip install .*\btorch\b", line)]
    assert torch, "the Dockerfile does not install torch"
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch[0]]
    project = [i for i, line in enumerate(lines) if re.search(r"pip install (-e )?\.", line)]
    assert project and torch[0] < project[0], "torch (CPU) must come before the project"
