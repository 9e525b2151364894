"""Live progress as server-sent events, read from the job's event log.

Events are named ``state``, ``trial`` or ``best``; each carries its log id as the SSE
id, so a client that reconnects with ``Last-Event-ID`` continues after it. The stream
ends once the job's terminal state has been sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentOwner, JobDep, StoreDep
from api.schemas import INVALID, NOT_FOUND, TERMINAL_STATES
from tuner.jobs import JobNotFound, JobStore

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["events"])

POLL_S = 0.5
"""How often the stream looks for new events."""
BATCH = 100


def _is_terminal_state(kind: str, data: dict[str, object]) -> bool:
    return kind == "state" and data.get("state") in TERMINAL_STATES


async def _stream(
    request: Request, store: JobStore, job_id: str, owner: str, after: int
) -> AsyncIterator[ServerSentEvent]:
    while not await request.is_disconnected():
        # The state is read before the events, so a terminal state's event is already
        # visible when the job reads as ended.
        try:
            job = await run_in_threadpool(store.get, job_id, owner=owner)
        except JobNotFound:  # deleted while watched
            return
        events = await run_in_threadpool(store.events, job_id, after=after, limit=BATCH)
        for event in events:
            after = event.id
            yield ServerSentEvent(data=json.dumps(event.data), event=event.kind, id=str(event.id))
            if _is_terminal_state(event.kind, event.data):
                return
        if not events and job.state in TERMINAL_STATES:
            return
        if len(events) < BATCH:
            await anyio.sleep(POLL_S)


@router.get(
    "/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "text/event-stream of `state`, `trial` and `best` events.",
            "content": {"text/event-stream": {}},
        },
        **NOT_FOUND,
        **INVALID,
    },
    summary="Follow a job live (server-sent events)",
)
async def job_events(
    request: Request,
    job: JobDep,
    store: StoreDep,
    owner: CurrentOwner,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            pattern=r"^[0-9]{1,18}$",
            description="Resume after this event id (browsers send it on reconnect).",
        ),
    ] = None,
) -> EventSourceResponse:
    """Each event's data is a JSON object: ``state`` has the new state and reason,
    ``trial`` the finished trial, ``best`` the new best value and params."""
    after = int(last_event_id) if last_event_id else 0
    return EventSourceResponse(_stream(request, store, job.id, owner, after))
