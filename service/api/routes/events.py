"""Behaviour events: one, or a batch of up to 1,000."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from service.activity.ingest import EventDraft
from service.api.deps import IngestDep
from service.api.schemas import EventBatch, EventsBody, IngestOut

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
    "impressions of a list": {
        "value": {
            "events": [
                {
                    "user_id": "u123",
                    "type": "impression",
                    "item_id": "85123A",
                    "request_id": "<the recommendations response's request_id>",
                    "placement": "home",
                    "position": 0,
                },
                {
                    "user_id": "u123",
                    "type": "click",
                    "item_id": "85123A",
                    "request_id": "<the recommendations response's request_id>",
                },
            ]
        }
    },
    "a batch": {
        "value": {
            "events": [
                {"user_id": "u123", "type": "sign_up", "timestamp": "2026-11-23T09:30:00Z"},
                {"user_id": "u123", "type": "add_to_cart", "item_id": "85123A"},
                {
                    "user_id": "u123",
                    "type": "purchase",
                    "item_id": "85123A",
                    "order_id": "o-1",
                    "quantity": 6,
                    "price": "2.55",
                    "currency": "GBP",
                },
            ]
        }
    },
}


@router.post("", response_model=IngestOut)
async def post_events(
    body: Annotated[EventsBody, Body(openapi_examples=EXAMPLES)],
    ingest: IngestDep,
) -> IngestOut:
    """Store one event or a batch; retries with the same client_event_id are not double-counted."""
    batch = isinstance(body, EventBatch)
    incoming = body.events if isinstance(body, EventBatch) else [body]
    drafts = [
        EventDraft(
            user_id=e.user_id,
            type=e.type,
            ts=e.timestamp,
            item_id=e.item_id,
            order_id=e.order_id,
            client_event_id=e.client_event_id,
            quantity=e.quantity,
            price=e.price,
            currency=e.currency,
            request_id=e.request_id,
            placement=e.placement,
            position=e.position,
        )
        for e in incoming
    ]
    result = await ingest.add_events(drafts, batch=batch)
    return IngestOut(accepted=result.accepted, duplicates=result.duplicates)
