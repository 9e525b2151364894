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
from specs import TINY_SPACE, tiny_spec
from sqlalchemy.engine import make_url

from tuner.settings import get_settings
from tuner.spec import StudySpec, parse_spec

# Several test sessions share two cores: keep training to one thread.
torch.set_num_threads(1)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file of this test only (created on first use)."""
    return f"sqlite:///{tmp_path / 'studies' / 'test.db'}"


@pytest.fixture
def make_spec() -> Callable[..., StudySpec]:
    """Build the tiny iris spec with 3 epochs; overrides replace fields, search_space merges."""

    def build(**overrides: Any) -> StudySpec:
        space = {**TINY_SPACE, **overrides.pop("search_space", {})}
        return parse_spec(tiny_spec(max_epochs=3, **overrides, search_space=space))

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


@pytest.fixture
def set_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], None]]:
    """Set a TUNER_* variable for one test: ``get_settings()`` reads it afresh, and reads
    the environment again after the test, so no other test sees it."""

    def set_variable(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    yield set_variable
    get_settings.cache_clear()
