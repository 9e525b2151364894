"""Python client for a tuner server: submit jobs, follow them live, take away the results.

>>> from tuner.client import Client
>>> with Client("http://127.0.0.1:8000") as tuner:             # doctest: +SKIP
...     job = tuner.submit("studies/digits-cnn.yaml")
...     job = tuner.wait(job.id, progress=lambda j: print(j.finished, "/", j.budget.n_trials))
...     tuner.best_config(job.id, path="best.yaml")
...     tuner.download_model(job.id, "best.safetensors")

The server URL and API key default to ``TUNER_SERVER`` and ``TUNER_API_KEY``.
:class:`AsyncClient` has the same methods, as coroutines and async iterators.

Every refusal raises a :class:`TunerError` carrying the server's ``detail`` (what to
change); the subclasses say what kind of refusal it was, so callers can catch
:class:`NotFound` or :class:`Conflict` alone. Results are small pydantic models that
keep fields a newer server adds, so an older client keeps working.

Specs are sent as they are written: the server validates them (it knows which
objectives are installed on its side), and its message names the field to change.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing, closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, Literal, TypeVar

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field

from tuner.spec import StudySpec, read_spec_data

if TYPE_CHECKING:
    import pandas

DEFAULT_SERVER = "http://127.0.0.1:8000"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
POLL_INTERVAL_S = 1.0
"""Pause between status reads when events cannot be followed (and between reconnects)."""
PAGE_SIZE = 100
"""The server's largest page."""

T = TypeVar("T")
SpecInput = StudySpec | Mapping[str, Any] | str | os.PathLike[str]
ConfigFormat = Literal["yaml", "json"]


# --- errors ----------------------------------------------------------------------------


class TunerError(Exception):
    """The server refused a request, or could not be reached. ``detail`` says what to do."""

    def __init__(self, status_code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code!r}, {self.detail!r})"


class NotFound(TunerError):
    """404: no such job, trial or route (for this API key)."""


class Conflict(TunerError):
    """409: the job's state does not allow it (yet), or an Idempotency-Key was reused."""


class Invalid(TunerError):
    """400/422: the request needs a change; ``detail`` names the field."""


class Unauthorized(TunerError):
    """401/403: no API key, a wrong one, or one without access."""


class RateLimited(TunerError):
    """429: too many requests; try again after ``retry_after`` seconds (when known)."""

    def __init__(self, status_code: int | None, detail: str, retry_after: float | None) -> None:
        super().__init__(status_code, detail)
        self.retry_after = retry_after


class Unreachable(TunerError):
    """No server answered at the configured URL."""


class WaitTimeout(TunerError, TimeoutError):
    """``wait`` gave up before the job ended; the job itself keeps running."""


_BY_STATUS: dict[int, type[TunerError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: Invalid,
}


def _detail(response: httpx.Response) -> str:
    """The server's ``{"detail": ...}``, or what the response says otherwise."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or response.reason_phrase or f"HTTP {response.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI's default validation shape
        return "\n".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', e)}"
            if isinstance(e, dict) else str(e)
            for e in detail
        )
    return str(detail) if detail is not None else str(body)[:500]


def _raise_for(response: httpx.Response) -> None:
    """Turn an error response (body already read) into the matching TunerError."""
    if not response.is_error:
        return
    status, detail = response.status_code, _detail(response)
    if status == 429:
        retry = response.headers.get("Retry-After", "")
        raise RateLimited(status, detail, float(retry) if retry.isdigit() else None)
    raise _BY_STATUS.get(status, TunerError)(status, detail)


@contextmanager
def _transport_errors(base_url: str) -> Iterator[None]:
    """Network failures read as advice: which URL was tried and what to do about it."""
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise Unreachable(
            None,
            f"cannot reach the tuner server at {base_url} ({exc or type(exc).__name__}); "
            "start one with `tuner serve`, or point --server / TUNER_SERVER at a running one",
        ) from None
    except httpx.TimeoutException as exc:
        raise TunerError(
            None,
            f"the tuner server at {base_url} did not answer in time ({type(exc).__name__}); "
            "try again, or give the client a longer timeout",
        ) from None
    except httpx.TransportError as exc:
        raise TunerError(
            None, f"talking to the tuner server at {base_url} failed: {exc or type(exc).__name__}"
        ) from None


# --- results ---------------------------------------------------------------------------


class _Result(BaseModel):
    """Keeps fields a newer server adds (``model_extra``), so old clients keep working."""

    model_config = ConfigDict(extra="allow")


class JobBudget(_Result):
    n_trials: int
    timeout_s: float | None = None


class TrialCounts(_Result):
    started: int = 0
    finished: int = 0
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    stopped: int = 0
    running: int = 0
    waiting: int = 0


class Best(_Result):
    """The best trial so far (one metric), or the size of the Pareto front (several)."""

    trial_number: int | None = None
    values: list[float | None] | None = None
    params: dict[str, Any] | None = None
    pareto_front_size: int | None = None


class Job(_Result):
    """A tuning job. Listing gives the summary fields; ``get`` adds trials, best and ETA."""

    id: str
    name: str
    state: str
    reason: str | None = None
    objective: str = ""
    dataset: str = ""
    budget: JobBudget
    parallelism: int = 1
    started: int = 0
    finished: int = 0
    study_name: str = ""
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    links: dict[str, str | None] = Field(default_factory=dict)
    metrics: list[str] = Field(default_factory=list)
    directions: list[str] = Field(default_factory=list)
    trials: TrialCounts | None = None
    best: Best | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    spec: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """True once the job succeeded, failed or was cancelled."""
        return self.state in TERMINAL_STATES


class Trial(_Result):
    number: int
    state: str
    values: list[float | None] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    intermediate_values: dict[int, float | None] = Field(default_factory=dict)
    duration_s: float | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    reason: str | None = None

    @property
    def value(self) -> float | None:
        """The first metric's value (None until complete, or when it diverged)."""
        return self.values[0] if self.values else None


class Event(_Result):
    """One server-sent event: ``state``, ``trial`` or ``best``, with its JSON data."""

    id: str | None = None
    event: str = "message"
    data: Any = None


class _Page(_Result, Generic[T]):
    items: list[T]
    next_cursor: str | None = None


# --- requests shared by both clients -----------------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request and how to read its answer; the clients only send it."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _model(cls: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda response: cls.model_validate(response.json())


def _job_path(job_id: str) -> str:
    if not job_id or "/" in job_id:
        raise Invalid(None, f"{job_id!r} is not a job id; job ids look like j_0123456789ab")
    return f"/v1/jobs/{job_id}"


def _submit_call(spec: SpecInput, idempotency_key: str | None) -> _Call[Job]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return _Call("POST", "/v1/jobs", _model(Job), json=_spec_body(spec), headers=headers)


def _action_call(job_id: str, action: Literal["cancel", "resume"]) -> _Call[Job]:
    return _Call("POST", f"{_job_path(job_id)}/{action}", _model(Job))


def _update_call(job_id: str, n_trials: int | None, timeout_s: float | None) -> _Call[Job]:
    body = _present({"n_trials": n_trials, "timeout_s": timeout_s})
    if not body:
        raise Invalid(None, "give n_trials, timeout_s or both to update a job")
    return _Call("PATCH", _job_path(job_id), _model(Job), json=body)


def _model_download(job_id: str, trial: int | None) -> tuple[str, str]:
    """The best-model URL and the file name to save it under, for the best or ``trial``."""
    url = f"{_job_path(job_id)}/best-model"
    if trial is None:
        return url, f"{job_id}.safetensors"
    return f"{url}?trial={int(trial)}", f"{job_id}-trial{trial}.safetensors"


def _best_config_call(job_id: str, fmt: ConfigFormat, trial: int | None) -> _Call[str]:
    if fmt not in ("yaml", "json"):
        raise Invalid(None, f"unknown format {fmt!r}; use yaml or json")
    params = _present({"format": fmt, "trial": trial})
    return _Call("GET", f"{_job_path(job_id)}/best-config", lambda r: r.text, params=params)


def _jobs_page(state: str | None, cursor: str | None, size: int) -> _Call[_Page[Job]]:
    params = {"state": state, "cursor": cursor, "limit": size}
    return _Call("GET", "/v1/jobs", _model(_Page[Job]), params=_present(params))


def _trials_page(
    job_id: str, state: str | None, sort: str, cursor: str | None
) -> _Call[_Page[Trial]]:
    params = {"state": state, "sort": sort, "cursor": cursor, "limit": PAGE_SIZE}
    return _Call(
        "GET", f"{_job_path(job_id)}/trials", _model(_Page[Trial]), params=_present(params)
    )


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _spec_body(spec: SpecInput) -> dict[str, Any]:
    """The request body for a spec object, a mapping or a YAML/JSON file."""
    if isinstance(spec, StudySpec):
        return spec.model_dump(mode="json", exclude_none=True)
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, str | os.PathLike):
        return read_spec_data(spec)
    raise TypeError(f"a spec is a StudySpec, a dict or a file path, not {type(spec).__name__}")


# --- server-sent events --------------------------------------------------------------


class _SSEDecoder:
    """The text/event-stream format, line by line (comments and pings are skipped)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line (without its line break); a blank line completes an event."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            text = "\n".join(self._data)
            event = Event(id=self._id, event=self._event or "message", data=_json_or_text(text))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- helpers for waiting and files ------------------------------------------------------


class _Deadline:
    """When ``wait`` gives up, and how long one read may block before then."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def check(self, job: Job) -> None:
        if self._end is not None and time.monotonic() >= self._end:
            raise WaitTimeout(
                None,
                f"job {job.id} is still {job.state} after {self.timeout:g} s "
                f"({job.finished} of {job.budget.n_trials} trials); it keeps running: wait "
                f"again, or stop it with `tuner cancel {job.id}`",
            )

    def read_timeout(self, default: float) -> float:
        if self._end is None:
            return default
        return max(0.1, min(default, self._end - time.monotonic()))

    def pause(self) -> float:
        return self.read_timeout(POLL_INTERVAL_S)


def _progress_key(job: Job) -> tuple[object, ...]:
    return (job.state, job.started, job.finished, job.trials, job.best)


def _changes(jobs: Iterator[Job]) -> Iterator[Job]:
    """Skip reads that show no progress (a ``best`` event follows its ``trial`` event)."""
    last: tuple[object, ...] | None = None
    for job in jobs:
        if (key := _progress_key(job)) != last:
            last = key
            yield job


async def _achanges(jobs: AsyncIterator[Job]) -> AsyncIterator[Job]:
    last: tuple[object, ...] | None = None
    async for job in jobs:
        if (key := _progress_key(job)) != last:
            last = key
            yield job


_FILENAME = re.compile(r'filename="?([^";/\\]+)"?')


def _target(path: Path, response: httpx.Response, default_name: str) -> Path:
    """Write into ``path``, or into the directory ``path`` under the server's file name."""
    if not path.is_dir():
        return path
    found = _FILENAME.search(response.headers.get("Content-Disposition", ""))
    return path / (found.group(1) if found else default_name)


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Write beside ``path`` and move into place at the end, so a broken transfer never
    leaves a half file there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as out:
            yield out
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def _save_text(path: str | Path | None, text: str) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")


def _user_agent() -> str:
    try:
        return f"tuner-client/{version('tuner')}"
    except PackageNotFoundError:
        return "tuner-client"


def _trials_frame(trials: list[Trial]) -> pandas.DataFrame:
    """One row per trial, with Optuna's column names (``params_lr``, ``values_0``...)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "trials(as_dataframe=True) needs pandas; install it with: pip install 'tuner[pandas]'"
        ) from None
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state}
        for i, v in enumerate(t.values or []):
            row[f"values_{i}"] = v
        if t.values is not None and len(t.values) == 1:
            row["value"] = row.pop("values_0")
        row.update({f"params_{k}": v for k, v in t.params.items()})
        row.update({f"metrics_{k}": v for k, v in t.metrics.items()})
        row.update(
            duration_s=t.duration_s, started_at=t.started_at, completed_at=t.completed_at,
            reason=t.reason,
        )
        rows.append(row)
    return pd.DataFrame(rows)


# --- the clients ------------------------------------------------------------------------


class _Base:
    """Configuration shared by both clients: URL, key, timeout."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float) -> None:
        url = (base_url or os.environ.get("TUNER_SERVER") or DEFAULT_SERVER).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TunerError(
                None, f"server URL {url!r} must start with http:// or https://, "
                f"e.g. {DEFAULT_SERVER}",
            )
        self.base_url = url
        self.timeout = timeout
        key = api_key if api_key is not None else os.environ.get("TUNER_API_KEY")
        self._headers = {"User-Agent": _user_agent(), "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _stream_timeout(self, read: float) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=read)


class Client(_Base):
    """Talk to a tuner server (blocking). Use it as a context manager, or call close().

    ``transport`` replaces the network (e.g. ``httpx.WSGITransport`` over the app).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        with _transport_errors(self.base_url):
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        _raise_for(response)
        return call.parse(response)

    # jobs

    def submit(self, spec: SpecInput, *, idempotency_key: str | None = None) -> Job:
        """Queue a job. The same ``idempotency_key`` and spec return the same job."""
        return self._send(_submit_call(spec, idempotency_key))

    def get(self, job_id: str) -> Job:
        return self._send(_Call("GET", _job_path(job_id), _model(Job)))

    def list(
        self, *, state: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> Iterator[Job]:
        """Jobs newest first, page after page; ``limit`` stops after that many."""
        cursor, seen = None, 0
        while True:
            page = self._send(_jobs_page(state, cursor, min(page_size, limit or page_size)))
            for job in page.items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, job_id: str) -> Job:
        """Stop the job; running trials stop after their current epoch."""
        return self._send(_action_call(job_id, "cancel"))

    def resume(self, job_id: str) -> Job:
        """Queue a cancelled or failed job again, to its remaining budget."""
        return self._send(_action_call(job_id, "resume"))

    def update(
        self, job_id: str, *, n_trials: int | None = None, timeout_s: float | None = None
    ) -> Job:
        """Raise the job's budget."""
        return self._send(_update_call(job_id, n_trials, timeout_s))

    def delete(self, job_id: str) -> None:
        """Delete the job and its study; running trials stop."""
        self._send(_Call("DELETE", _job_path(job_id), lambda _: None))

    # following a job

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events as they happen (from after ``last_event_id``); ends with the job."""
        yield from self._events(job_id, last_event_id, self.timeout)

    def _events(self, job_id: str, last_event_id: str | None, read: float) -> Iterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        decoder = _SSEDecoder()
        with _transport_errors(self.base_url), self._http.stream(
            "GET", f"{_job_path(job_id)}/events", headers=headers,
            timeout=self._stream_timeout(read),
        ) as response:
            if response.is_error:
                response.read()
                _raise_for(response)
            for line in response.iter_lines():
                if (event := decoder.feed(line)) is not None:
                    yield event

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[Job], object] | None = None,
    ) -> Job:
        """Block until the job ends and return it; ``progress`` gets the job after each event.

        Follows the event stream, reconnecting where it left off; where the stream
        cannot be followed (a proxy that buffers it, say) it polls instead.
        """
        deadline = _Deadline(timeout)
        with closing(self._follow(job_id, deadline)) as updates:
            for job in _changes(updates):
                if progress:
                    progress(job)
                if job.done:
                    break
                deadline.check(job)
        return job

    def _follow(self, job_id: str, deadline: _Deadline) -> Iterator[Job]:
        """The job now and after each of its events; polls where events cannot be followed."""
        yield self.get(job_id)
        last_id, follow = None, True
        while True:
            if follow:
                stream = self._events(job_id, last_id, deadline.read_timeout(self.timeout))
                try:
                    with closing(stream):
                        for event in stream:
                            last_id = event.id or last_id
                            yield self.get(job_id)
                except TunerError:
                    follow = False
            time.sleep(deadline.pause())  # the stream ended early (or polling): look again
            yield self.get(job_id)

    # results

    def trials(
        self,
        job_id: str,
        *,
        state: str | None = None,
        sort: Literal["number", "value"] = "number",
        as_dataframe: bool = False,
    ) -> list[Trial] | pandas.DataFrame:
        """All trials of the job (``sort="value"``: best first); a DataFrame needs pandas."""
        found: list[Trial] = []
        cursor = None
        while True:
            page = self._send(_trials_page(job_id, state, sort, cursor))
            found.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return _trials_frame(found) if as_dataframe else found

    def trial(self, job_id: str, number: int) -> Trial:
        return self._send(_Call("GET", f"{_job_path(job_id)}/trials/{number}", _model(Trial)))

    def best_config(
        self,
        job_id: str,
        *,
        format: ConfigFormat = "yaml",
        path: str | Path | None = None,
        trial: int | None = None,
    ) -> str:
        """The best trial (or completed trial number ``trial``) as a runnable spec
        (``tuner train`` retrains it); also written to ``path`` when given."""
        text = self._send(_best_config_call(job_id, format, trial))
        _save_text(path, text)
        return text

    def download_model(self, job_id: str, path: str | Path, *, trial: int | None = None) -> Path:
        """Save the best trial's weights (or kept trial ``trial``'s; safetensors) to
        ``path`` (a file or a directory)."""
        url, name = _model_download(job_id, trial)
        return self._download(url, Path(path), name)

    def report(self, job_id: str, path: str | Path) -> Path:
        """Save the job's HTML report (plots, top trials, diagnosis) to ``path``."""
        return self._download(
            f"{_job_path(job_id)}/report", Path(path), f"{job_id}-report.html"
        )

    def _download(self, url: str, path: Path, default_name: str) -> Path:
        with _transport_errors(self.base_url), self._http.stream("GET", url) as response:
            if response.is_error:
                response.read()
                _raise_for(response)
            target = _target(path, response, default_name)
            with _atomic_file(target) as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return target

    # catalog

    def objectives(self) -> list[dict[str, Any]]:
        """Model families the server can tune, with their default search spaces."""
        return self._send(_Call("GET", "/v1/objectives", lambda r: r.json()))

    def datasets(self) -> list[dict[str, Any]]:
        """Datasets a spec can name on this server."""
        return self._send(_Call("GET", "/v1/datasets", lambda r: r.json()))


class AsyncClient(_Base):
    """:class:`Client`'s methods as coroutines (``list`` and ``events`` iterate async).

    ``transport`` replaces the network (e.g. ``httpx.ASGITransport(app)``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        with _transport_errors(self.base_url):
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.json, headers=call.headers
            )
        _raise_for(response)
        return call.parse(response)

    async def submit(self, spec: SpecInput, *, idempotency_key: str | None = None) -> Job:
        return await self._send(_submit_call(spec, idempotency_key))

    async def get(self, job_id: str) -> Job:
        return await self._send(_Call("GET", _job_path(job_id), _model(Job)))

    async def list(
        self, *, state: str | None = None, limit: int | None = None, page_size: int = 50
    ) -> AsyncIterator[Job]:
        cursor, seen = None, 0
        while True:
            page = await self._send(_jobs_page(state, cursor, min(page_size, limit or page_size)))
            for job in page.items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield job
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def cancel(self, job_id: str) -> Job:
        return await self._send(_action_call(job_id, "cancel"))

    async def resume(self, job_id: str) -> Job:
        return await self._send(_action_call(job_id, "resume"))

    async def update(
        self, job_id: str, *, n_trials: int | None = None, timeout_s: float | None = None
    ) -> Job:
        return await self._send(_update_call(job_id, n_trials, timeout_s))

    async def delete(self, job_id: str) -> None:
        await self._send(_Call("DELETE", _job_path(job_id), lambda _: None))

    async def events(
        self, job_id: str, *, last_event_id: str | None = None
    ) -> AsyncIterator[Event]:
        async for event in self._events(job_id, last_event_id, self.timeout):
            yield event

    async def _events(
        self, job_id: str, last_event_id: str | None, read: float
    ) -> AsyncIterator[Event]:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        decoder = _SSEDecoder()
        with _transport_errors(self.base_url):
            async with self._http.stream(
                "GET", f"{_job_path(job_id)}/events", headers=headers,
                timeout=self._stream_timeout(read),
            ) as response:
                if response.is_error:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if (event := decoder.feed(line)) is not None:
                        yield event

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        progress: Callable[[Job], object | Awaitable[object]] | None = None,
    ) -> Job:
        """See :meth:`Client.wait`; ``progress`` may be a plain function or a coroutine one."""

        deadline = _Deadline(timeout)
        async with aclosing(self._follow(job_id, deadline)) as updates:
            async for job in _achanges(updates):
                if progress and inspect.isawaitable(result := progress(job)):
                    await result
                if job.done:
                    break
                deadline.check(job)
        return job

    async def _follow(self, job_id: str, deadline: _Deadline) -> AsyncIterator[Job]:
        yield await self.get(job_id)
        last_id, follow = None, True
        while True:
            if follow:
                stream = self._events(job_id, last_id, deadline.read_timeout(self.timeout))
                try:
                    async with aclosing(stream):
                        async for event in stream:
                            last_id = event.id or last_id
                            yield await self.get(job_id)
                except TunerError:
                    follow = False
            await anyio.sleep(deadline.pause())
            yield await self.get(job_id)

    async def trials(
        self,
        job_id: str,
        *,
        state: str | None = None,
        sort: Literal["number", "value"] = "number",
        as_dataframe: bool = False,
    ) -> list[Trial] | pandas.DataFrame:
        found: list[Trial] = []
        cursor = None
        while True:
            page = await self._send(_trials_page(job_id, state, sort, cursor))
            found.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return _trials_frame(found) if as_dataframe else found

    async def trial(self, job_id: str, number: int) -> Trial:
        return await self._send(
            _Call("GET", f"{_job_path(job_id)}/trials/{number}", _model(Trial))
        )

    async def best_config(
        self,
        job_id: str,
        *,
        format: ConfigFormat = "yaml",
        path: str | Path | None = None,
        trial: int | None = None,
    ) -> str:
        text = await self._send(_best_config_call(job_id, format, trial))
        _save_text(path, text)
        return text

    async def download_model(
        self, job_id: str, path: str | Path, *, trial: int | None = None
    ) -> Path:
        url, name = _model_download(job_id, trial)
        return await self._download(url, Path(path), name)

    async def report(self, job_id: str, path: str | Path) -> Path:
        return await self._download(
            f"{_job_path(job_id)}/report", Path(path), f"{job_id}-report.html"
        )

    async def _download(self, url: str, path: Path, default_name: str) -> Path:
        with _transport_errors(self.base_url):
            async with self._http.stream("GET", url) as response:
                if response.is_error:
                    await response.aread()
                    _raise_for(response)
                target = _target(path, response, default_name)
                with _atomic_file(target) as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
        return target

    async def objectives(self) -> list[dict[str, Any]]:
        return await self._send(_Call("GET", "/v1/objectives", lambda r: r.json()))

    async def datasets(self) -> list[dict[str, Any]]:
        return await self._send(_Call("GET", "/v1/datasets", lambda r: r.json()))
