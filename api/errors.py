"""Exception handlers: every refusal is JSON ``{"detail": "..."}`` that says what to change.

Domain errors keep their own messages (``tuner.jobs``, ``tuner.spec``); this module
only chooses the status code. Request validation errors are rewritten one line per
problem, in the spec validator's style (``search_space.lr: low (1) must be less than
high (0.1)...``), so the API and the CLI explain a bad spec in the same words.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from api.limits import TooManyJobs
from tuner.jobs.store import (
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    JobError,
    JobNotFound,
)
from tuner.keys import KeyNotFound, KeyRequestError
from tuner.spec import SpecError, format_errors

log = logging.getLogger(__name__)

STATUS: dict[type[Exception], int] = {
    JobNotFound: 404,
    IdempotencyConflict: 409,
    InvalidTransition: 409,
    InvalidRequest: 422,
    SpecError: 422,
    KeyNotFound: 404,
    KeyRequestError: 422,
}
"""Status code per domain error; a JobError not listed here is a 409 (state conflict)."""


class Conflict(Exception):
    """The request is well formed but the job is not ready for it (409), e.g. no best trial."""


class _Report:
    """Adapts FastAPI's error list to what ``format_errors`` reads (``.errors()``)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self._errors = errors

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        return self._errors


def _relocate(err: dict[str, Any]) -> dict[str, Any]:
    """Body errors read as spec paths; query, header and path errors name their parameter."""
    if err["type"] == "json_invalid":
        at = err["loc"][-1] if len(err["loc"]) > 1 else "?"
        reason = err.get("ctx", {}).get("error", err["msg"])
        msg = f"not valid JSON ({reason} at character {at}); send one JSON object"
        return {**err, "loc": ("body",), "msg": msg}
    where, *rest = err["loc"] or ("body",)
    if where == "body":
        # A whole-spec check names its own fields; only a missing body is "body".
        loc = tuple(rest) if rest or err["type"] != "missing" else ("body",)
    else:
        loc = (f"{where} parameter {'.'.join(str(p) for p in rest)}",)
    return {**err, "loc": loc}


def request_errors(errors: list[dict[str, Any]]) -> str:
    """One line per problem: where it is and what to change."""
    return format_errors(_Report([_relocate(e) for e in errors]))  # type: ignore[arg-type]


def _detail(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = request_errors(list(exc.errors()))
    sent = request.headers.get("content-type", "")
    if "json" not in sent and any(e["loc"][:1] == ("body",) for e in exc.errors()):
        detail = (
            f"send the body as JSON with Content-Type: application/json (it came as "
            f"{sent or 'no Content-Type'!r}; with curl: -H 'Content-Type: application/json')\n"
            + detail
        )
    return _detail(422, detail)


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 409)
    return _detail(status, str(exc))


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return _detail(409, str(exc))


async def _too_many(_: Request, exc: Exception) -> JSONResponse:
    return _detail(429, str(exc))


UNREADABLE_BODY = {
    RecursionError: "the JSON body nests too deeply to read; a spec needs only a few levels",
    UnicodeDecodeError: "the body is not UTF-8 text; send JSON encoded as UTF-8",
}
"""What FastAPI's bare "error parsing the body" (400) was, said as advice (422, the
status of every other body that is not valid JSON)."""


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and exc.__cause__ is not None:
        cause = type(exc.__cause__)
        advice = next((d for kind, d in UNREADABLE_BODY.items() if issubclass(cause, kind)), None)
        if advice:  # like any other body that is not valid JSON: 422
            return _detail(422, advice)
    return _detail(exc.status_code, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _detail(500, "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(JobError, _domain)
    app.add_exception_handler(SpecError, _domain)
    app.add_exception_handler(KeyRequestError, _domain)
    app.add_exception_handler(TooManyJobs, _too_many)
    app.add_exception_handler(Conflict, _conflict)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
