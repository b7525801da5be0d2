"""Behaviour events: one, or a batch of up to 1,000."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException
from starlette.concurrency import run_in_threadpool

from service.api.deps import FrontendState
from service.api.schemas import EventBatch, EventsBody, IngestOut, refuse_future
from service.events import NewEvent

router = APIRouter(prefix="/v1/events", tags=["events"])

EXAMPLES = {
    "one view": {
        "value": {
            "user_id": "u123",
            "type": "view",
            "item_id": "85123A",
            "client_event_id": "web-7f3a",
        }
    },
    "a batch": {
        "value": {
            "events": [
                {"user_id": "u123", "type": "sign_up", "timestamp": "2026-11-23T09:30:00Z"},
                {"user_id": "u123", "type": "add_to_cart", "item_id": "85123A"},
                {"user_id": "u123", "type": "purchase", "item_id": "85123A", "order_id": "o-1"},
            ]
        }
    },
}


@router.post("", response_model=IngestOut)
async def post_events(
    body: Annotated[EventsBody, Body(openapi_examples=EXAMPLES)],
    state: FrontendState,
) -> IngestOut:
    """Store one event or a batch; retries with the same client_event_id are not double-counted."""
    incoming = body.events if isinstance(body, EventBatch) else [body]
    if len(incoming) > state.settings.max_batch_events:
        raise HTTPException(413, f"at most {state.settings.max_batch_events} events per request")
    now = state.clock()
    batch = []
    for index, e in enumerate(incoming):
        ts = e.timestamp or now
        where = ("events", index, "timestamp") if isinstance(body, EventBatch) else ("timestamp",)
        refuse_future(ts, now, ("body", *where))
        batch.append(
            NewEvent(
                user_id=e.user_id,
                type=e.type,
                ts=ts,
                item_id=e.item_id,
                order_id=e.order_id,
                client_event_id=e.client_event_id,
            )
        )
    result = await run_in_threadpool(state.repository.add_events, batch)
    state.activity.add(result.stored, from_tail=False)  # this worker sees its own writes now
    for stored in result.stored:
        state.metrics.events.labels(stored.type).inc()
    if result.duplicates:
        state.metrics.event_duplicates.inc(result.duplicates)
    if state.auto_offers.enabled:
        viewers = {s.user_id for s in result.stored if s.type == "view"}
        state.auto_offers.on_views(viewers, {u: state.activity.recent(u) for u in viewers})
    return IngestOut(accepted=result.accepted, duplicates=result.duplicates)
