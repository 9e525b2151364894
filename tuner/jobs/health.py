"""Whether a worker is alive, read from the row its heartbeat thread updates.

``tuner worker --check`` (docker-compose's worker healthcheck) runs every 30 s next to
a worker busy training, so it imports the tables and SQLAlchemy only, not the store's
engine and torch. ``/metrics`` counts live workers by the same rule.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, func, select

from tuner.jobs.models import WorkerRow, utcnow
from tuner.settings import Settings


def allowed_silence(settings: Settings) -> timedelta:
    """How long a running worker may go unheard: its row is written on the reaper's
    schedule, so the grace period plus one reaper interval."""
    return timedelta(seconds=settings.grace_period_s + settings.reaper_interval_s)


def worker_health(engine: Engine, hostname: str, settings: Settings) -> str | None:
    """Why no worker on ``hostname`` is alive, or None. Alive: running, and heard from
    within ``allowed_silence``. A worker whose process froze or lost the database falls
    silent; one busy with a long trial keeps beating (its heartbeat is a thread)."""
    with engine.connect() as conn:
        beat = conn.scalar(
            select(func.max(WorkerRow.heartbeat_at))
            .where(WorkerRow.hostname == hostname, WorkerRow.state == "running")
        )
    if beat is None:
        return f"no worker is running on {hostname}"
    silent, allowed = utcnow() - beat, allowed_silence(settings)
    if silent > allowed:
        return (
            f"the worker on {hostname} was last heard from {silent.total_seconds():.0f} s "
            f"ago, more than the {allowed.total_seconds():g} s allowed "
            "(TUNER_GRACE_PERIOD_S + TUNER_REAPER_INTERVAL_S): it is frozen or cut off "
            "from the database"
        )
    return None
