"""``GET /metrics``: Prometheus text format, read from the database on each scrape.

Outside ``/v1`` by Prometheus convention. With API keys, a scraper needs a key with
the read scope, sent as ``Authorization: Bearer <key>`` (Prometheus'
``authorization`` / ``bearer_token_file`` settings). The format follows the
scraper's Accept header (Prometheus text, or OpenMetrics when asked for).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from api.deps import Read, SettingsDep, StoreDep
from tuner.monitoring import TunerCollector

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    dependencies=[Read],
    response_class=Response,
    responses={200: {
        "content": {"text/plain": {}, "application/openmetrics-text": {}},
        "description": "Prometheus text format (OpenMetrics when the Accept header asks).",
    }},
    summary="Service metrics for Prometheus",
)
def metrics(
    store: StoreDep, settings: SettingsDep, accept: Annotated[str, Header()] = ""
) -> Response:
    """Jobs and trials by state, trial durations, live workers and their last
    heartbeat, webhook deliveries, and this process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TunerCollector(store.engine, settings))
    ProcessCollector(registry=registry)
    encode, content_type = choose_encoder(accept)
    return Response(encode(registry), media_type=content_type)
