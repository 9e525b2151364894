"""Service settings, read once from TUNER_* environment variables (and CLI flags).

Every process of a deployment (API, workers) reads the same variables, so one
``TUNER_DATABASE_URL`` points them all at the same jobs and studies.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNER_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///studies/tuner.db",
        description="SQLAlchemy URL shared by jobs and Optuna studies "
        "(sqlite:///path or postgresql+psycopg://user@host/db).",
    )
    data_root: Path = Field(default=Path("data"), description="User dataset files live here.")
    artifact_root: Path = Field(
        default=Path("studies/artifacts"), description="Weights of the best trials."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=0, le=256,
        description="Embedded worker processes started by `tuner serve`.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N")
    torch_threads: int | None = Field(
        default=None, ge=1, description="Threads per worker; default cores / workers."
    )
    db_pool_size: int = Field(default=2, ge=1, le=32, description="Connections per process.")
    db_max_overflow: int = Field(default=2, ge=0, le=32)

    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    grace_period_s: float = Field(default=10.0, gt=0, description="Silence before reaping.")
    reaper_interval_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=1, ge=0, le=10)
    poll_interval_s: float = Field(default=0.5, gt=0, description="Idle worker poll.")
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    top_k_models: int = Field(default=3, ge=1, le=100)

    max_trials: int = Field(default=10_000, ge=1)
    max_epochs: int = Field(default=1_000, ge=1)
    max_timeout_s: float = Field(default=24 * 3600, gt=0)
    max_model_params: int = Field(
        default=20_000_000, ge=1,
        description="Largest model a trial may build, in parameters; a configuration over "
        "it fails its trial before any memory is taken.",
    )
    max_dataset_mb: float = Field(default=50.0, gt=0)
    max_jobs_per_owner: int = Field(default=20, ge=1)
    max_body_kb: int = Field(default=256, ge=1)
    rate_limit_per_minute: int = Field(default=600, ge=1)
    insecure: bool = Field(default=False, description="Allow a non-loopback bind with no keys.")
    log_json: bool = Field(
        default=False, description="Log JSON lines (time, level, logger, message, context)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Webhooks (docs/webhooks.md): the service POSTs to URLs its users give it.
    webhook_secret: SecretStr | None = Field(
        default=None, min_length=16,
        description="HMAC-SHA256 key that signs every webhook; without it, specs with a "
        "webhook_url are refused.",
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhooks to loopback, private, link-local and other non-public "
        "addresses (off: a job could otherwise make the server call internal services).",
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_backoff_s: float = Field(
        default=10.0, gt=0, description="First retry delay; doubles each attempt, up to 1 h."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    webhook_poll_interval_s: float = Field(
        default=2.0, gt=0, description="How often `tuner serve` looks for due deliveries."
    )


@cache
def get_settings() -> Settings:
    return Settings()
