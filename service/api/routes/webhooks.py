"""Webhooks for the admin (the outbox, its delivery log, replays) and the coupons of a
campaign for marketing, for a shop that pulls rather than being told."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.api.deps import no_store, require_part
from service.api.docs import documented
from service.api.routes.offers import coupon_out
from service.api.schemas import CampaignRef, CouponOut, Strict, UtcDatetime
from service.delivery.repository import CouponState, DeliveryLogEntry, OutboxEvent
from service.delivery.service import Webhooks
from service.offers.coupons import coupon_status
from service.offers.rules import redacted
from service.state import AppState

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
coupon_router = APIRouter(
    prefix="/v1/campaigns", tags=["campaigns"], dependencies=[Depends(no_store)]
)
EventPath = Annotated[str, Path(min_length=1, max_length=32, description="The event's id.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Rows at most.")]
After = Annotated[
    int, Query(ge=0, le=2**62, description="Cursor: the next_after of the previous page.")
]
Since = Annotated[UtcDatetime | None, Query(description="From this time on (included).")]
Until = Annotated[UtcDatetime | None, Query(description="Before this time (excluded).")]
EventState = Literal["pending", "delivered", "dead"]
EventKind = Literal["coupon.issued", "coupon.redeemed", "coupon.expiring"]
ReplayState = Literal["dead", "failing"]


def _webhooks(state: AppState) -> Webhooks:
    assert state.webhooks is not None  # built by every lifespan
    return state.webhooks


WebhooksAdminDep = Annotated[Webhooks, Depends(require_part(_webhooks, "admin"))]
WebhooksMarketingDep = Annotated[Webhooks, Depends(require_part(_webhooks, "marketing"))]


class WebhookEventOut(BaseModel):
    event_id: str = Field(description="Stable: the receiver's idempotency key.")
    type: str
    state: EventState
    campaign_id: str
    user_id: str | None
    coupon: str = Field(description="The coupon's fingerprint (sha256:...), never its code.")
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


class WebhookEventsOut(BaseModel):
    enabled: bool = Field(description="Whether a URL is configured (events written and sent).")
    events: list[WebhookEventOut]
    next_after: int | None = Field(description="Pass as `after` for the next page; null: last.")


class DeliveryOut(BaseModel):
    event_id: str
    attempt: int
    at: datetime
    status_code: int | None = Field(description="Null: no answer (see error).")
    error: str | None
    duration_ms: float
    sender: str


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut]
    next_after: int | None


class ReplayIn(Strict):
    states: list[ReplayState] = Field(
        default_factory=lambda: list[ReplayState](["dead"]),
        min_length=1,
        max_length=2,
        description="dead: gave up; failing: pending after at least one failed try.",
    )
    since: UtcDatetime | None = Field(None, description="Created from this time on.")
    until: UtcDatetime | None = Field(None, description="Created before this time.")


class ReplayOut(BaseModel):
    replayed: int


class CampaignCouponOut(CouponOut):
    """A coupon as every other answer shows it (its money terms included), and its use."""

    redeemed_at: datetime | None
    order_id: str | None


class CampaignCouponsOut(BaseModel):
    campaign_id: str
    coupons: list[CampaignCouponOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")


def _event_out(e: OutboxEvent) -> WebhookEventOut:
    code = str(e.payload.get("code", "")).replace("-", "")
    return WebhookEventOut(
        event_id=e.event_id,
        type=e.type,
        state=e.state,
        campaign_id=e.campaign_id,
        user_id=e.user_id,
        coupon=redacted(code),
        created_at=e.created_at,
        attempts=e.attempts,
        next_attempt_at=e.next_attempt_at,
        delivered_at=e.delivered_at,
        last_status=e.last_status,
        last_error=e.last_error,
    )


def _delivery_out(d: DeliveryLogEntry) -> DeliveryOut:
    return DeliveryOut(
        event_id=d.event_id,
        attempt=d.attempt,
        at=d.at,
        status_code=d.status_code,
        error=d.error,
        duration_ms=round(d.duration_ms, 3),
        sender=d.sender,
    )


@router.get("/events", response_model=WebhookEventsOut)
async def list_events(
    webhooks: WebhooksAdminDep,
    state: Annotated[EventState | None, Query(description="Only this state.")] = None,
    type: Annotated[EventKind | None, Query(description="Only this event type.")] = None,
    campaign_id: Annotated[CampaignRef | None, Query(description="Only this campaign.")] = None,
    since: Since = None,
    until: Until = None,
    after: After = 0,
    limit: Limit = 100,
) -> WebhookEventsOut:
    """Outbox events, oldest first, with filters; paginated by `after`."""
    found = await run_in_threadpool(
        lambda: webhooks.repository.events(
            state=state,
            kind=type,
            campaign_id=campaign_id,
            since=since,
            until=until,
            after=after,
            limit=limit,
        )
    )
    return WebhookEventsOut(
        enabled=webhooks.enabled,
        events=[_event_out(e) for e in found],
        next_after=found[-1].id if len(found) == limit else None,
    )


@router.get("/events/{event_id}", response_model=WebhookEventOut, responses=documented(404))
async def get_event(event_id: EventPath, webhooks: WebhooksAdminDep) -> WebhookEventOut:
    """One outbox event: its state and last answer."""
    return _event_out(await run_in_threadpool(webhooks.event, event_id))


@router.get("/deliveries", response_model=DeliveriesOut)
async def list_deliveries(
    webhooks: WebhooksAdminDep,
    event_id: Annotated[str | None, Query(max_length=32, description="Only this event.")] = None,
    failed: Annotated[bool | None, Query(description="true: failures only; false: 2xx.")] = None,
    since: Since = None,
    until: Until = None,
    after: After = 0,
    limit: Limit = 100,
) -> DeliveriesOut:
    """The delivery log: every try, when, its status code or error, how long it took."""
    found = await run_in_threadpool(
        lambda: webhooks.repository.deliveries(
            event_id=event_id, since=since, until=until, failed=failed, after=after, limit=limit
        )
    )
    return DeliveriesOut(
        deliveries=[_delivery_out(d) for d in found],
        next_after=found[-1].id if len(found) == limit else None,
    )


@router.post("/events/{event_id}/replay", response_model=WebhookEventOut, responses=documented(404))
async def replay_event(event_id: EventPath, webhooks: WebhooksAdminDep) -> WebhookEventOut:
    """Send one event again from its first try, whatever its state."""
    return _event_out(await run_in_threadpool(webhooks.replay_one, event_id))


@router.post("/replay", response_model=ReplayOut, responses=documented(422))
async def replay_events(body: ReplayIn, webhooks: WebhooksAdminDep) -> ReplayOut:
    """Send again every dead (or failing) event created in a range."""
    count = await run_in_threadpool(webhooks.replay, tuple(body.states), body.since, body.until)
    return ReplayOut(replayed=count)


@coupon_router.get(
    "/{campaign_id}/coupons", response_model=CampaignCouponsOut, responses=documented(404, 422)
)
async def campaign_coupons(
    campaign_id: Annotated[CampaignRef, Path(description="The campaign's id.")],
    webhooks: WebhooksMarketingDep,
    state: Annotated[CouponState | None, Query(description="Only coupons in this state.")] = None,
    issued_since: Annotated[
        UtcDatetime | None, Query(description="Issued at or after this time.")
    ] = None,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The next_cursor of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Coupons at most.")] = 100,
) -> CampaignCouponsOut:
    """The campaign's issued coupons in issue order, with their codes; paginated by cursor."""
    page = await run_in_threadpool(
        lambda: webhooks.campaign_coupons(
            campaign_id, state=state, issued_since=issued_since, cursor=cursor, limit=limit
        )
    )
    now = webhooks.clock()
    out = []
    for c in page.coupons:
        status = coupon_status(c, now)
        out.append(
            CampaignCouponOut(
                **coupon_out(status).model_dump(), redeemed_at=c.redeemed_at, order_id=c.order_id
            )
        )
    return CampaignCouponsOut(campaign_id=campaign_id, coupons=out, next_cursor=page.next_cursor)
