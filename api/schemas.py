"""Response and request bodies of the HTTP API, kept apart from the job tables.

The tables (``tuner.jobs``) are free to change shape; these models are the public
contract a client codes against, and the OpenAPI description is generated from them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from optuna.trial import FrozenTrial, TrialState
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuner.spec import Scalar

if TYPE_CHECKING:
    from tuner.jobs.models import Job

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TrialStateName = Literal["complete", "pruned", "fail", "running", "waiting"]
TRIAL_STATES: dict[str, TrialState] = {
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "fail": TrialState.FAIL,
    "running": TrialState.RUNNING,
    "waiting": TrialState.WAITING,
}

EXAMPLE_SPEC: dict[str, Any] = {
    "name": "digits-mlp",
    "objective": "mlp",
    "dataset": {"name": "digits"},
    "metrics": [{"name": "val_accuracy", "direction": "maximize"}],
    "budget": {"n_trials": 20, "max_epochs": 10},
    "parallelism": 2,
    "sampler": {"name": "tpe", "seed": 7},
    "search_space": {
        "lr": {"low": 1e-4, "high": 0.1, "log": True},
        "batch_size": {"choices": [32, 64, 128]},
        "epochs": {"low": 3, "high": 10},
        "optimizer": {"choices": {"sgd": {"momentum": {"low": 0.0, "high": 0.99}}, "adamw": {}}},
    },
}


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a diverged value reads as null."""
    return value if value is not None and math.isfinite(value) else None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from start to end (or to now when still going); naive times are UTC."""
    if start is None:
        return None
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    end = end or datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return max(0.0, (end - start).total_seconds())


def _trial_seconds(trial: FrozenTrial) -> float | None:
    """Run time so far; Optuna stamps trials with naive local times, so compare alike."""
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or datetime.now(trial.datetime_start.tzinfo)
    return max(0.0, (end - trial.datetime_start).total_seconds())


def _utc(local: datetime | None) -> datetime | None:
    """Optuna's naive local time as UTC, like every other time the API gives."""
    return None if local is None else local.astimezone(UTC)


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorOut(Out):
    """Every 4xx answer: what went wrong and what to change."""

    detail: str = Field(examples=["job 42 not found; list your jobs with GET /v1/jobs"])


Responses = dict[int | str, dict[str, Any]]
NOT_FOUND: Responses = {404: {"model": ErrorOut, "description": "No such job (for this caller)."}}
CONFLICT: Responses = {
    409: {"model": ErrorOut, "description": "The job's state does not allow it."}
}
INVALID: Responses = {
    422: {"model": ErrorOut, "description": "The request needs a change; detail says which."}
}
"""Error answers per route, for the OpenAPI description."""
GUARDED: Responses = {
    400: {"model": ErrorOut, "description": "A malformed Content-Length header."},
    401: {"model": ErrorOut, "description": "No valid API key (once any key exists)."},
    403: {"model": ErrorOut, "description": "The key lacks the scope this needs."},
    413: {"model": ErrorOut, "description": "The body is over TUNER_MAX_BODY_KB."},
    **INVALID,
    429: {"model": ErrorOut, "description": "Rate limit or active-jobs limit reached."},
}
"""What the guard and the limits may answer on any /v1 route."""


class Budget(Out):
    n_trials: int = Field(description="Trials the job runs in all (pruned and failed count).")
    timeout_s: float | None = Field(description="Wall-clock limit from the job's start.")


class TrialCounts(Out):
    """The job's budget counters, and every trial of its study by state.

    ``fail`` and ``stopped`` are Optuna's FAIL trials: the ones that count (the training
    failed) and the ones that were interrupted (a cancel, the timeout, a shutdown, a lost
    worker), which give their slot back and whose configuration runs again, so they do
    not count toward ``n_trials``; a retry queued as a job ended stays ``waiting`` until
    the job runs on (resume, or a PATCH that gives a succeeded job more), and runs first.
    """

    started: int = Field(
        description="Trials counted toward budget.n_trials: running or ended; an "
        "interrupted trial gives its count back."
    )
    finished: int = Field(
        description="Counted trials that ended: complete, pruned or failed (not interrupted)."
    )
    complete: int = 0
    pruned: int = 0
    fail: int = Field(default=0, description="Failed trials that count (the training failed).")
    stopped: int = Field(
        default=0, description="Interrupted trials: they do not count, and run again."
    )
    running: int = 0
    waiting: int = 0

    @classmethod
    def of(cls, job: Job, by_state: dict[str, int]) -> TrialCounts:
        """Counts from the job's counters and its study's trials by lower-case state: the
        failures that counted are what ``finished`` holds beyond complete and pruned."""
        counted = job.finished - by_state.get("complete", 0) - by_state.get("pruned", 0)
        failed = by_state.get("fail", 0)
        fail = min(failed, max(0, counted))
        return cls(
            started=job.started, finished=job.finished,
            **{**by_state, "fail": fail, "stopped": failed - fail},
        )


class JobLinks(Out):
    self: str
    trials: str
    events: str
    best_config: str
    best_model: str
    dashboard: str | None = Field(
        default=None, description="The study's page on optuna-dashboard, served at /."
    )


class TrialOut(Out):
    number: int
    state: TrialStateName
    values: list[float | None] | None = Field(
        description="Objective values in the order of the spec's metrics; null until complete."
    )
    params: dict[str, Any] = Field(description="Optuna parameters as suggested.")
    metrics: dict[str, float | None] = Field(
        default_factory=dict, description="Every metric the trial measured."
    )
    intermediate_values: dict[int, float | None] = Field(
        default_factory=dict, description="Reported value per epoch (pruning)."
    )
    duration_s: float | None
    started_at: datetime | None
    completed_at: datetime | None
    reason: str | None = Field(default=None, description="Why a trial failed or was pruned.")

    USER_ATTRS: ClassVar[tuple[str, ...]] = ("metrics", "fail_reason")
    """The trial user attributes ``of`` reads (readers load only these)."""

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialOut:
        metrics = trial.user_attrs.get("metrics")
        return cls(
            number=trial.number,
            state=trial.state.name.lower(),  # type: ignore[arg-type]
            values=[finite(v) for v in trial.values] if trial.values is not None else None,
            params=trial.params,
            metrics=(
                {k: finite(v) for k, v in metrics.items() if isinstance(v, int | float)}
                if isinstance(metrics, dict)
                else {}
            ),
            intermediate_values={k: finite(v) for k, v in trial.intermediate_values.items()},
            duration_s=_trial_seconds(trial),
            started_at=_utc(trial.datetime_start),
            completed_at=_utc(trial.datetime_complete),
            reason=trial.user_attrs.get("fail_reason"),
        )


class TrialList(Out):
    items: list[TrialOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class Best(Out):
    """The best trial (one metric) or the Pareto front (several metrics)."""

    trial_number: int | None = Field(description="The best trial; null for several metrics.")
    values: list[float | None] | None
    params: dict[str, Any] | None
    pareto_front_size: int | None = Field(
        default=None, description="Trials on the Pareto front, for several metrics."
    )
    pareto_front: list[TrialOut] | None = None


class JobSummary(Out):
    """A job as listed: what it is and how far it got, without reading its trials."""

    id: str
    name: str
    owner: str
    state: JobState
    reason: str | None
    objective: str
    dataset: str
    budget: Budget
    parallelism: int
    started: int
    finished: int
    study_name: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    links: JobLinks


class JobOut(JobSummary):
    """A job in full: counts by trial state, the best so far, elapsed time and ETA."""

    metrics: list[str]
    directions: list[str]
    trials: TrialCounts
    best: Best | None = Field(description="Null until a trial completes.")
    elapsed_s: float | None
    eta_s: float | None = Field(
        description="Mean trial time x remaining trials / parallelism, capped by the timeout."
    )
    spec: dict[str, Any]


class JobList(Out):
    items: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class JobPatch(BaseModel):
    """Change a job's budget: trials (not below those started) or timeout."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"n_trials": 40}, {"timeout_s": 1800}]}
    )

    n_trials: int | None = Field(default=None, ge=1, le=100_000, strict=True)
    timeout_s: float | None = Field(default=None, gt=0, le=7 * 24 * 3600, allow_inf_nan=False)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("give n_trials, timeout_s or both")
        return self


class EnqueueRequest(BaseModel):
    """Known configurations to try first, by Optuna parameter name."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"params": [{"lr": 0.01, "batch_size": 64, "optimizer": "adamw"}]}]
        },
    )

    params: list[dict[str, Scalar]] = Field(min_length=1, max_length=100)


class EnqueueOut(Out):
    enqueued: int


class Status(Out):
    status: Literal["ok"]


class Readiness(Out):
    status: Literal["ok", "unavailable"]
    database: bool
    migrations: bool
    detail: str | None = None


class ObjectiveOut(Out):
    """A model family that can be tuned, with its default search space per task."""

    name: str
    description: str
    params: dict[str, str] = Field(description="Objective-specific parameters and their types.")
    default_space: dict[str, dict[str, Any]] = Field(
        description="Per task, the dimensions a spec may leave out and their defaults."
    )


class DatasetOption(Out):
    default: Scalar | None = None
    min: float | None = None
    max: float | None = None
    help: str | None = None


class DatasetOut(Out):
    """A dataset a spec can name in ``dataset.name``."""

    name: str
    task: str
    description: str
    needs_path: bool = Field(description="Needs dataset.path, relative to the data root.")
    needs_target: bool = Field(description="Needs dataset.target, the label column.")
    options: dict[str, DatasetOption] = Field(description="Accepted dataset.options.")


class KeyOut(Out):
    """An API key without its secret."""

    id: str = Field(description="Public id: the start of the key, used to revoke it.")
    owner: str
    scopes: list[Literal["read", "submit", "admin"]]
    created_at: datetime
    revoked_at: datetime | None


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"owner": "alice", "scopes": ["read", "submit"]}]},
    )

    owner: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    scopes: list[Literal["read", "submit", "admin"]] = Field(min_length=1, max_length=3)


class KeyCreated(KeyOut):
    key: str = Field(description="The key itself: shown this once, only its hash is kept.")


class UploadOut(Out):
    """A dataset file uploaded by its owner; name it in a spec as dataset.path."""

    name: str
    format: Literal["csv", "npz"]
    owner: str
    path: str = Field(description="dataset.path for a spec: uploads/<owner>/<file>.")
    size_bytes: int
    created_at: datetime
