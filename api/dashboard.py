"""optuna-dashboard on the service's own port.

Its frontend calls ``/api/...`` and ``/static/...``, so it only works mounted at
``/``; the app factory mounts it last, after every ``/v1`` route, and it serves
whatever the service does not. It reads the same storage as the workers, so each
job's study (``job-<id>``) shows up live. :class:`api.security.Guard` sits in front
of all of it (admin keys only), cached answers included.

One route is cached: ``GET /api/studies/<id>``, the study with every trial, which the
page loads first. At 10,000 trials that is ~27 MB of JSON and seconds of CPU, so many
browsers (or a reload storm) each computing it would stall the server. Its answer is
kept gzipped (~1/80 of the size) per study and query in an :class:`api.cache.ReadCache`:
one computation at a time, refreshed ``TTL_S`` after the last one ended and never
served more than ``MAX_AGE_S`` after it, for small studies. A big study's answer stays
fresh for four times as long as it took (``MAX_BUSY``: polling it keeps at most a
quarter of a thread busy; 3-9 s here at 10,000 trials, so up to ~40 s of lag). The
page then polls with ``?after=<n>``, a cheaper answer with its own entry.
optuna-dashboard itself already serves a study of 500+ trials from a trial list up to
10 s old.
"""

from __future__ import annotations

import gzip
import io
import re
from dataclasses import dataclass
from typing import Any

from a2wsgi import WSGIMiddleware
from optuna.artifacts._protocol import ArtifactStore
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from api.cache import ReadCache

TTL_S = 2.0
MAX_AGE_S = 10.0
MAX_BUSY = 0.25
MAX_ENTRIES = 16
STUDY_DETAIL = re.compile(r"/api/studies/[0-9]+")


def dashboard_app(storage: BaseStorage, artifacts: ArtifactStore) -> ASGIApp:
    """optuna-dashboard's WSGI app behind a WSGI -> ASGI adapter, with its study detail
    cached; it lists each trial's saved weights from the same artifact store."""
    app = wsgi(storage, artifact_store=artifacts)
    return StudyDetailCache(WSGIMiddleware(app), app)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes
    gzipped: bool


class StudyDetailCache:
    """``GET /api/studies/<id>`` from the cache; every other request to ``app``."""

    def __init__(self, app: ASGIApp, wsgi_app: Any) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
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
            await self.app(scope, receive, send)
            return
        path, query = scope["path"], scope["query_string"].decode("latin-1")
        answer: Answer = await self.cache.get(
            ("study", path, query), lambda: self._render(path, query)
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

    def _render(self, path: str, query: str) -> Answer:
        """The dashboard's own answer (called as WSGI, in the thread pool); a 200 gzipped.
        Only the path and query reach it, so the answer is the same for every caller."""
        environ = {
            "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": query, "SERVER_NAME": "localhost", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_LENGTH": "0", "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
            started.update(status=int(status.split()[0]), headers=dict(headers))

        chunks = self.wsgi_app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        content_type = started["headers"].get("Content-Type", "application/json")
        if started["status"] != 200:
            return Answer(started["status"], content_type, body, gzipped=False)
        return Answer(200, content_type, gzip.compress(body, compresslevel=6), gzipped=True)
