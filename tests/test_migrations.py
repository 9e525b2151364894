"""Migrations: Alembic builds exactly the ORM's tables, beside Optuna's, idempotently."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import tuner.keys  # noqa: F401 - registers the api_keys table on Base
from tuner.jobs.db import VERSION_TABLE, alembic_config, include_name, make_engine, migrate
from tuner.jobs.models import Base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


def test_migration_matches_the_models(db_url: str) -> None:
    migrate(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "include_name": include_name, "version_table": VERSION_TABLE, "compare_type": True,
        })
        assert compare_metadata(context, Base.metadata) == []
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert context.get_current_revision() == head
    assert {"jobs", "trial_slots", "job_events", "workers", "api_keys"} <= set(Base.metadata.tables)
    engine.dispose()


def test_migrate_creates_ours_and_optunas_tables_and_runs_twice(db_url: str) -> None:
    migrate(db_url)
    migrate(db_url)
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"jobs", "trial_slots", "job_events", "workers", VERSION_TABLE} <= tables
    assert {"studies", "trials", "trial_heartbeats", "alembic_version"} <= tables


def test_concurrent_migrations_do_not_race(db_url: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(db_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_unsupported_url_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="sqlite:///"):
        make_engine("mysql://localhost/db")
