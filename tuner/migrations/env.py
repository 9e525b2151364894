"""Alembic environment for tuner's tables; run through ``tuner.jobs.db.migrate(url)``.

With the alembic CLI, the URL comes from ``TUNER_DATABASE_URL``:
``alembic -c tuner/migrations/alembic.ini upgrade head``.
"""

from __future__ import annotations

from alembic import context

import tuner.jobs.outbox  # registers webhook_deliveries on Base, for autogenerate
import tuner.keys  # noqa: F401 - registers the api_keys table on Base, for autogenerate
from tuner.jobs.db import VERSION_TABLE, include_name, make_engine
from tuner.jobs.models import Base
from tuner.settings import get_settings


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        engine = make_engine(get_settings().database_url)
        with engine.begin() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
