"""Database engine and migrations for the job tables (SQLite or PostgreSQL).

>>> engine = make_engine("sqlite:///studies/tuner.db")   # doctest: +SKIP
>>> migrate("sqlite:///studies/tuner.db")               # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from tuner.errors import UsageError
from tuner.jobs.models import Base
from tuner.storage import cause_of, engine_kwargs_for, make_storage, parse_url, shown

VERSION_TABLE = "tuner_alembic_version"
"""Our Alembic version table; Optuna keeps its own ``alembic_version`` beside it."""

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_MIGRATE_LOCK = 0x7475_6E65  # "tune": one advisory lock id for every tuner process


def make_engine(url: str) -> Engine:
    """An engine for the job tables, set up like Optuna's storage on the same URL.

    SQLite: WAL, busy_timeout 30 s, synchronous=NORMAL on every connection (the helper
    is shared with ``tuner.storage.make_storage``). PostgreSQL: psycopg 3 with a bounded pool
    (``db_pool_size`` + ``db_max_overflow`` per process) and pre-ping.
    """
    if parse_url(url).get_backend_name() not in ("sqlite", "postgresql"):
        raise UsageError(
            f"unsupported database URL {shown(url)}: use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host/db"
        )
    url, kwargs = engine_kwargs_for(url)
    return create_engine(url, **kwargs)


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic sees only tuner's tables, never Optuna's in the same database."""
    return type_ != "table" or name in Base.metadata.tables


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time: DDL on SQLite is not transactional here."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATE_LOCK})
                conn.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def migrate(url: str) -> None:
    """Bring the database up to date: tuner's tables (Alembic) and Optuna's.

    Idempotent and safe to run from several processes at once; run it before the
    workers start so none of them races to create tables.
    """
    engine = make_engine(url)
    try:
        with _migration_lock(engine):
            with engine.begin() as conn:
                config = alembic_config()
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
            storage = make_storage(url)  # creates and stamps Optuna's tables
            storage.remove_session()
            storage.engine.dispose()
    except (OSError, OperationalError) as exc:  # no such folder, no server, no access
        raise UsageError(f"cannot open database {shown(url)}: {cause_of(exc)}") from None
    finally:
        engine.dispose()
