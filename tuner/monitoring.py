"""Prometheus metrics read from the database on every scrape.

Every process of a deployment writes the same database, so one scrape of any
``tuner serve`` sees the whole service: jobs and trials by state, trial durations,
workers and their last heartbeat, webhook deliveries. Nothing is counted in memory,
so a restart loses nothing and several servers report the same numbers. Each family
is one aggregate query (``GROUP BY`` in SQL); per-worker series are bounded.

>>> registry = CollectorRegistry(auto_describe=False)           # doctest: +SKIP
>>> registry.register(TunerCollector(engine, settings))         # doctest: +SKIP
>>> generate_latest(registry)                                    # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from tuner.jobs.health import allowed_silence
from tuner.jobs.models import Job, JobState, WorkerRow, utcnow
from tuner.jobs.optuna_tables import TRIAL_STATES, seconds_between, trials
from tuner.jobs.outbox import DeliveryState, WebhookDelivery
from tuner.settings import Settings

log = logging.getLogger("tuner.monitoring")

DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Upper bounds (seconds) of the trial duration histogram; +Inf is added."""
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
MAX_WORKER_SERIES = 200
"""Per-worker heartbeat series: the most recently seen workers, at most this many."""
WORKER_HISTORY = timedelta(hours=24)
"""Workers not seen for this long drop out of the per-worker series."""


class TunerCollector(Collector):
    """Reads the service's state from the database when Prometheus scrapes."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tuner_database_up", "1 when the last scrape could read the database, else 0."
        )
        try:
            with self.engine.connect() as conn:
                families = [
                    self._jobs(conn), self._trials(conn), self._durations(conn),
                    *self._workers(conn), self._deliveries(conn),
                ]
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _jobs(self, conn: Connection) -> Metric:
        family = GaugeMetricFamily("tuner_jobs", "Jobs by state.", labels=["state"])
        counts = dict(conn.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        for state in JobState:
            family.add_metric([state.value], counts.get(state.value, 0))
        return family

    def _trials(self, conn: Connection) -> Metric:
        family = GaugeMetricFamily(
            "tuner_trials", "Optuna trials in this database by state.", labels=["state"]
        )
        query = select(trials.c.state, func.count()).group_by(trials.c.state)
        counts = dict(conn.execute(query).all())
        for state in TRIAL_STATES:
            family.add_metric([state.lower()], counts.get(state, 0))
        return family

    def _durations(self, conn: Connection) -> Metric:
        """Finished trials' durations, bucketed and summed in SQL (one row per state)."""
        family = HistogramMetricFamily(
            "tuner_trial_duration_seconds",
            "Wall time of finished trials (start to complete), by final state.",
            labels=["state"],
        )
        seconds = seconds_between(
            conn, trials.c.datetime_start, trials.c.datetime_complete
        )
        columns = [
            func.sum(case((seconds <= bound, 1), else_=0)) for bound in DURATION_BUCKETS
        ]
        query = (
            select(trials.c.state, func.count(), func.sum(seconds), *columns)
            .where(  # only finished trials have a completion time
                trials.c.datetime_start.is_not(None), trials.c.datetime_complete.is_not(None)
            )
            .group_by(trials.c.state)
        )
        rows = {row[0]: row[1:] for row in conn.execute(query)}
        for state in FINISHED_STATES:
            total, total_s, *below = rows.get(state, (0, 0.0, *[0] * len(DURATION_BUCKETS)))
            buckets = [(str(b), int(n or 0)) for b, n in zip(DURATION_BUCKETS, below, strict=True)]
            family.add_metric(
                [state.lower()], [*buckets, ("+Inf", int(total or 0))], float(total_s or 0.0)
            )
        return family

    def _workers(self, conn: Connection) -> list[Metric]:
        """Live workers (beat within the reaper's grace), and each recent one's last beat."""
        now = utcnow()
        live_after = now - allowed_silence(self.settings)
        live = GaugeMetricFamily(
            "tuner_workers_live",
            "Workers running and heard from within the grace period plus a reaper interval.",
        )
        live.add_metric([], conn.scalar(
            select(func.count()).where(
                WorkerRow.state == "running", WorkerRow.heartbeat_at >= live_after
            )
        ) or 0)
        beats = GaugeMetricFamily(
            "tuner_worker_last_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat (workers seen in the last 24 h); "
            "state lost: running, but silent past the grace period (killed, or cut off).",
            labels=["worker", "hostname", "state"],
        )
        recent = conn.execute(
            select(WorkerRow.id, WorkerRow.hostname, WorkerRow.state, WorkerRow.heartbeat_at)
            .where(WorkerRow.heartbeat_at >= now - WORKER_HISTORY)
            .order_by(WorkerRow.heartbeat_at.desc())
            .limit(MAX_WORKER_SERIES)
        )
        for worker_id, hostname, state, beat in recent:
            said = "lost" if state == "running" and beat < live_after else state
            beats.add_metric([worker_id, hostname, said], beat.timestamp())
        return [live, beats]

    def _deliveries(self, conn: Connection) -> Metric:
        family = GaugeMetricFamily(
            "tuner_webhook_deliveries", "Webhook notices by delivery state.", labels=["state"]
        )
        query = select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)
        counts = dict(conn.execute(query).all())
        for state in DeliveryState:
            family.add_metric([state.value], counts.get(state.value, 0))
        return family
