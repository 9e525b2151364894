"""Shared fixtures: one torch thread, temporary SQLite and PostgreSQL URLs, tiny specs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import torch
from psycopg import sql
from sqlalchemy.engine import make_url

from tuner.spec import StudySpec, parse_spec

# Several test sessions share two cores: keep training to one thread.
torch.set_num_threads(1)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test only (created on first use)."""
    return f"sqlite:///{tmp_path / 'studies' / 'test.db'}"


TINY_SPACE: dict[str, Any] = {
    "lr": {"low": 0.01, "high": 0.1, "log": True},
    "batch_size": 64,
    "depth": 1,
    "width": {"choices": [8, 16]},
    "batch_norm": False,
    "dropout": 0.0,
    "optimizer": "adam",
    "schedule": "none",
    "weight_decay": 0.0,
}
"""A small space that trains in a blink on iris: a few searched dimensions only."""


@pytest.fixture
def make_spec() -> Callable[..., StudySpec]:
    """Build a tiny iris spec (3 epochs, tiny space); keyword arguments override fields."""

    def build(**overrides: Any) -> StudySpec:
        data: dict[str, Any] = {
            "name": "tiny",
            "objective": "mlp",
            "dataset": {"name": "iris"},
            "budget": {"n_trials": 3, "max_epochs": 3},
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "none"},
            "search_space": dict(TINY_SPACE),
        }
        for key, value in overrides.items():
            if key == "search_space":
                data["search_space"] = {**data["search_space"], **value}
            else:
                data[key] = value
        return parse_spec(data)

    return build


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards.

    Skipped when no server answers, unless TUNER_REQUIRE_POSTGRES=1 (CI), where that fails.
    """
    admin = os.environ.get("TUNER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("TUNER_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but not reachable: {exc}")
        pytest.skip(f"no PostgreSQL at {admin}")
    name = f"tuner_test_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = make_url(admin).set(drivername="postgresql+psycopg", database=name)
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )
