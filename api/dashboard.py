"""optuna-dashboard on the service's own port.

Its frontend calls ``/api/...`` and ``/static/...``, so it only works mounted at
``/``; the app factory mounts it last, after every ``/v1`` route, and it serves
whatever the service does not. It reads the same storage as the workers, so each
job's study (``job-<id>``) shows up live. :class:`api.security.Guard` sits in front
of all of it (admin keys only), cached answers included.

One route is cached: ``GET /api/studies/<id>``, the study with every trial, which the
page loads first. At 10,000 trials that is ~27 MB of JSON and 2-7 s of CPU (a full
re-read of the trials whenever optuna-dashboard's own 10 s trial list expired), so many
browsers (or a reload storm) each computing it would stall the server; even one
computing it in the server's process stalls every other request on the GIL (~200 ms at a
time), so it is rendered in a child process (:mod:`api.study_render`). The answer is
kept gzipped (~1/80 of the size) per study and query in an :class:`api.cache.ReadCache`:
one computation at a time, refreshed ``TTL_S`` after the last one ended, or for a big
study after four times as long as it took (``MAX_BUSY``: polling keeps the child busy
at most a quarter of the time). While a refresh runs the previous answer is served, for
up to ``MAX_AGE_S - TTL_S`` past its freshness: rendering is off the API's process, so
waiting for it gains nothing, and the page loads its first answer once, then polls with
``?after=<n>`` (its own entry) from the first trial it holds that was still running, so
it catches up with a late first answer at its next poll.
"""

from __future__ import annotations

import gzip
import json
import re

from a2wsgi import WSGIMiddleware
from optuna.artifacts._protocol import ArtifactStore
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.cache import ReadCache
from api.study_render import Answer, StudyRenderer
from tuner.jobs.store import JOB_STUDY_PREFIX

TTL_S = 2.0
MAX_AGE_S = 30.0
MAX_BUSY = 0.25
MAX_ENTRIES = 16
STUDY_DETAIL = re.compile(r"/api/studies/[0-9]+")
# \d as the dashboard's router reads ids: any Unicode digit, which int() takes ("١٢" is 12).
STUDY_CHANGE = re.compile(r"/api/studies/(?P<id>\d+)(?P<rename>/rename)?")
JSON_BODY = re.compile(
    r"/api/(studies(/\d+(/rename|/note|/preference|/preference_feedback_component"
    r"|/\d+/note))?|trials/\d+/(tell|user-attrs))"
)
"""optuna-dashboard's routes that read a JSON object (a 500 for any other body)."""
JOB_STUDY = re.compile(re.escape(JOB_STUDY_PREFIX) + r"(?P<job>j_[0-9a-f]+)")
PAGE = "/dashboard"


def dashboard_app(
    storage: BaseStorage, artifacts: ArtifactStore, database_url: str
) -> StudyDetailCache:
    """optuna-dashboard's WSGI app behind a WSGI -> ASGI adapter, with its study detail
    cached and rendered in a child process on ``database_url`` (the storage's); it lists
    each trial's saved weights from the same artifact store."""
    app = WSGIMiddleware(wsgi(storage, artifact_store=artifacts))  # type: ignore[arg-type]
    return StudyDetailCache(app, StudyRenderer(database_url), storage)


class StudyDetailCache:
    """``GET /api/studies/<id>`` from the cache; every other request to ``app``."""

    def __init__(self, app: ASGIApp, renderer: StudyRenderer, storage: BaseStorage) -> None:
        self.app = app
        self.renderer = renderer
        self.storage = storage
        self.cache = ReadCache(
            ttl_s=TTL_S, max_age_s=MAX_AGE_S, max_entries=MAX_ENTRIES, workers=2,
            max_busy=MAX_BUSY,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not STUDY_DETAIL.fullmatch(scope["path"])
        ):
            if scope["type"] == "http":
                if scope["path"].startswith(PAGE):
                    self.renderer.start()  # a browser on the page asks for a study next
                if refusal := await self._job_study_change(scope):
                    await _send_json(send, *refusal)
                    return
                if scope["method"] in ("POST", "PUT") and JSON_BODY.fullmatch(scope["path"]):
                    body = await _read_body(receive)
                    if not _is_json_object(Headers(scope=scope), body):
                        await _send_json(send, 400, {
                            "reason": "send a JSON object (Content-Type: application/json)"
                        })
                        return
                    receive = _replay(body, receive)
                scope = _with_accept_encoding(scope)
            await self.app(scope, receive, send)
            return
        path, query = scope["path"], scope["query_string"].decode("latin-1")
        answer: Answer = await self.cache.get(
            ("study", path, query), lambda: self.renderer.render(path, query)
        )
        body, headers = answer.body, [(b"content-type", answer.content_type.encode())]
        if answer.gzipped:
            headers.append((b"vary", b"Accept-Encoding"))
            if "gzip" in Headers(scope=scope).get("accept-encoding", ""):
                headers.append((b"content-encoding", b"gzip"))
            else:
                body = gzip.decompress(body)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _job_study_change(self, scope: Scope) -> tuple[int, dict[str, str]] | None:
        """Why a delete or rename of a study is refused: 404 for one that is not there
        (optuna-dashboard's answer was a 500), 409 for a job's, which would be left
        without its trials (its workers then fail it): the job API does both."""
        found = STUDY_CHANGE.fullmatch(scope["path"])
        if found is None or scope["method"] != ("POST" if found["rename"] else "DELETE"):
            return None
        study_id = int(found["id"])
        try:
            name = await run_in_threadpool(self.storage.get_study_name_from_id, study_id)
        except KeyError:
            return 404, {"reason": f"no study with id {study_id}"}
        job = JOB_STUDY.fullmatch(name)
        if job is None:
            return None
        return 409, {"reason": (
            f"study {name} belongs to job {job['job']}; delete the job (DELETE "
            f"/v1/jobs/{job['job']}) to remove both, or export its best trial first"
        )}

    def close(self) -> None:
        """Stop the renderer's child process (the app's shutdown)."""
        self.renderer.close()


def _with_accept_encoding(scope: Scope) -> Scope:
    """optuna-dashboard reads Accept-Encoding without a default (its static files were a
    500 to a client that sent none): give it ``identity``, which the client did mean."""
    if any(name == b"accept-encoding" for name, _ in scope["headers"]):
        return scope
    return {**scope, "headers": [*scope["headers"], (b"accept-encoding", b"identity")]}


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (the body limit in front of the app bounds it)."""
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then waits on the
    client's own (a disconnect) as the app would have."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _is_json_object(headers: Headers, body: bytes) -> bool:
    """What optuna-dashboard's ``request.json.get`` needs: the JSON type, then an object."""
    if headers.get("content-type", "").partition(";")[0].strip().lower() != "application/json":
        return False
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):  # not JSON or not UTF-8; nested past Python's stack
        return False


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
    ]})
    await send({"type": "http.response.body", "body": data})
