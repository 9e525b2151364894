"""Live progress as server-sent events, read from the job's event log.

Events are named ``state``, ``trial`` or ``best``; each carries its log id as the SSE
id, so a client that reconnects with ``Last-Event-ID`` continues after it. The stream
ends once the job has ended and everything up to its final state has been sent (a
resumed job's earlier ``cancelled`` does not end it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import JobDep, Read, StoreDep
from api.schemas import INVALID, NOT_FOUND, TERMINAL_STATES
from tuner.jobs.store import JobNotFound, JobStore

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["events"])

POLL_S = 0.5
"""How often the stream looks for new events."""
BATCH = 100


async def _stream(
    request: Request, store: JobStore, job_id: str, owner: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    last_state: str | None = None  # the newest state this stream has sent
    while not await request.is_disconnected():
        # The job is read before its events: when it reads as ended, the event of
        # that state is already in the log (both are written in one transaction).
        try:
            job = await run_in_threadpool(store.get, job_id, owner=owner)
        except JobNotFound:  # deleted while watched
            return
        events = await run_in_threadpool(store.events, job_id, after=after, limit=BATCH)
        for event in events:
            after = event.id
            if event.kind == "state":
                last_state = event.data.get("state")
            yield ServerSentEvent(data=json.dumps(event.data), event=event.kind, id=str(event.id))
        caught_up = len(events) < BATCH
        if caught_up and job.state in TERMINAL_STATES and last_state in (None, job.state):
            return
        if caught_up:
            await anyio.sleep(POLL_S)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": (
                "text/event-stream of `state`, `trial` and `best` events (`best`: a new best "
                "value, or with several metrics a trial no earlier trial equals or beats "
                "in every metric)."
            ),
            "content": {"text/event-stream": {}},
        },
        **NOT_FOUND,
        **INVALID,
    },
    dependencies=[Read],
    summary="Follow a job live (server-sent events)",
)
async def job_events(
    request: Request,
    job: JobDep,
    store: StoreDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=r"^[0-9]{1,18}$",
            description="Resume after this event id (browsers send it on reconnect).",
        ),
    ] = None,
) -> EventSourceResponse:
    """Each event's data is a JSON object, named as in the job and trial resources:
    ``state`` has the job's new ``state`` and ``reason``; ``trial`` a trial that ended
    (``trial_number``, ``state`` as in ``/trials``, ``values``, ``reason``, and the job's
    ``finished`` of ``n_trials``); ``best`` a trial with a new best value, or, with
    several metrics, one that no earlier trial equals or beats in every metric (a new
    point of the Pareto front): ``trial_number``, ``values``, ``params``."""
    after = int(last_event_id) if last_event_id else 0
    return EventSourceResponse(_stream(request, store, job.id, job.owner, after))
