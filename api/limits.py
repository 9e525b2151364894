"""Bounded resources: request body size, and what a job may ask for before it is written.

:class:`BodyLimit` counts body bytes as the app reads them, so a chunked body with no
Content-Length is cut off at the limit without being held in memory; a declared
Content-Length over the limit is refused before a byte is read. Dataset uploads
(``POST /v1/datasets``) get ``max_dataset_mb``, every other request ``max_body_kb``.

:func:`admit` runs before ``jobs.create``: the spec's budget against the service's
limits, the owner's active jobs, the dataset file (it must exist under the data root,
and an upload must be the caller's own) and a search space with nothing to search.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.security import refuse
from tuner.data import DatasetError, resolve_path, validate
from tuner.jobs.store import InvalidRequest, JobStore
from tuner.keys import Principal
from tuner.objective import check_smallest_model, get_objective
from tuner.settings import Settings
from tuner.space import resolve_space
from tuner.spec import Branches, Choice, Range, SpecError, StudySpec
from tuner.webhooks import check_webhook

UPLOAD_PATH = "/v1/datasets"
UPLOADS_DIR = "uploads"
"""Uploaded datasets live in ``<data_root>/uploads/<owner>/``."""


class TooManyJobs(Exception):
    """The owner has as many active jobs as allowed (429)."""


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(
            413,
            f"request body over the limit of {limit} bytes ({setting}); send less "
            "(upload big datasets with POST /v1/datasets)",
        )


class BodyLimit:
    """Refuse bodies over the limit with 413, counting bytes as they arrive."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.body_limit = settings.max_body_kb * 1024
        self.upload_limit = int(settings.max_dataset_mb * 2**20)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"] == UPLOAD_PATH
        limit = self.upload_limit if upload else self.body_limit
        too_large = BodyTooLarge(
            limit, "TUNER_MAX_DATASET_MB" if upload else "TUNER_MAX_BODY_KB"
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await refuse(send, 400, "Content-Length must be a whole number of bytes")
                return
            if int(declared) > limit:
                await refuse(send, 413, str(too_large.detail))
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as exc:  # raised where no handler turned it into a response
            if started:
                raise
            await refuse(send, 413, str(exc.detail))


# --- admission of a job ------------------------------------------------------------


def check_budget(settings: Settings, n_trials: int | None, timeout_s: float | None) -> None:
    """n_trials and timeout within the service's limits (422 naming the setting)."""
    if n_trials is not None and n_trials > settings.max_trials:
        raise InvalidRequest(
            f"budget.n_trials is {n_trials}, over this server's limit of "
            f"{settings.max_trials} (TUNER_MAX_TRIALS); ask for fewer trials"
        )
    if timeout_s is not None and timeout_s > settings.max_timeout_s:
        raise InvalidRequest(
            f"budget.timeout_s is {timeout_s:g}, over this server's limit of "
            f"{settings.max_timeout_s:g} s (TUNER_MAX_TIMEOUT_S); ask for less time"
        )


def check_active_jobs(settings: Settings, store: JobStore, owner: str) -> None:
    active = store.active_count(owner)
    if active >= settings.max_jobs_per_owner:
        raise TooManyJobs(
            f"owner {owner!r} has {active} queued or running jobs, the limit is "
            f"{settings.max_jobs_per_owner} (TUNER_MAX_JOBS_PER_OWNER); wait for one to "
            "end or cancel one"
        )


def admit(spec: StudySpec, principal: Principal, settings: Settings, store: JobStore) -> None:
    """Refuse a spec this server will not run for this caller; writes nothing."""
    check_budget(settings, spec.budget.n_trials, spec.budget.timeout_s)
    if spec.budget.max_epochs > settings.max_epochs:
        raise InvalidRequest(
            f"budget.max_epochs is {spec.budget.max_epochs}, over this server's limit of "
            f"{settings.max_epochs} (TUNER_MAX_EPOCHS); lower max_epochs"
        )
    check_dataset(spec, principal, settings)
    check_searchable(spec)
    check_model_size(spec, settings)
    check_webhook(spec.webhook_url, settings)
    check_active_jobs(settings, store, principal.owner)


def check_dataset(spec: StudySpec, principal: Principal, settings: Settings) -> None:
    """The dataset must load as a worker would load it (options, sizes, a file's columns),
    so a job is not created only to fail; a file must be under the data root, an upload
    the caller's own."""
    path = spec.dataset.path
    if path is not None:
        _check_file(path, principal, settings)
    try:
        validate(spec.dataset, settings.data_root)
    except DatasetError as exc:
        raise InvalidRequest(f"dataset: {exc}") from None


def _check_file(path: str, principal: Principal, settings: Settings) -> None:
    parts = Path(path).parts
    if parts[0] == UPLOADS_DIR and not principal.is_admin and (
        len(parts) < 3 or parts[1] != principal.owner
    ):
        raise InvalidRequest(
            f"dataset.path {path!r} is not one of your uploads; use "
            f"{UPLOADS_DIR}/{principal.owner}/<file> (GET /v1/datasets/uploads lists them)"
        )
    try:
        file = resolve_path(path, settings.data_root)
    except DatasetError as exc:
        raise InvalidRequest(f"dataset.path: {exc}") from None
    size, limit = file.stat().st_size, settings.max_dataset_mb * 2**20
    if size > limit:
        raise InvalidRequest(
            f"dataset.path {path!r} is {size / 2**20:.1f} MB, over the limit of "
            f"{settings.max_dataset_mb:g} MB (TUNER_MAX_DATASET_MB); use a smaller file"
        )


def check_searchable(spec: StudySpec) -> None:
    """Several trials of a space with nothing left to search would train one model again
    and again: refuse that (one trial of a fixed space is fine, e.g. to retrain)."""
    if spec.budget.n_trials == 1:
        return
    try:
        space = resolve_space(spec, get_objective(spec.objective))
    except SpecError as exc:
        raise InvalidRequest(str(exc)) from None
    if not any(_searched(value) for value in space.values()):
        raise InvalidRequest(
            "every dimension of search_space is fixed, so each trial would train the same "
            f"model; search at least one (e.g. lr: {{low: 1e-4, high: 0.1, log: true}}) "
            f"or set budget.n_trials to 1 (it is {spec.budget.n_trials})"
        )


def check_model_size(spec: StudySpec, settings: Settings) -> None:
    """A space whose smallest model is over the limit would fail every trial: refuse it."""
    try:
        check_smallest_model(spec, settings.max_model_params)
    except SpecError as exc:
        raise InvalidRequest(str(exc)) from None


def _searched(value: object) -> bool:
    if isinstance(value, Range):
        return True
    if isinstance(value, Choice):
        return len(value.choices) > 1
    if isinstance(value, Branches):
        return len(value.choices) > 1 or any(
            _searched(v) for params in value.choices.values() for v in params.values()
        )
    return False
