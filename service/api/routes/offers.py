"""Offer decisions for one user, and the user's active coupons."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path
from starlette.concurrency import run_in_threadpool

from service.api.deps import CouponReaderDep, OffersDep, no_store
from service.api.docs import documented
from service.api.schemas import CouponOut, DecisionOut, EvaluateIn, Id, UserOffersOut
from service.offers.coupons import CouponStatus, coupon_status
from service.offers.decisions import Decision, OfferEngine
from service.offers.rules import format_code

router = APIRouter(tags=["offers"], dependencies=[Depends(no_store)])


def coupon_out(status: CouponStatus) -> CouponOut:
    c = status.coupon
    return CouponOut(
        code=format_code(c.code),
        campaign_id=c.campaign_id,
        user_id=c.user_id,
        status=status.status,
        discount_percent=c.discount_percent,
        item_ids=c.item_ids,
        issued_at=c.issued_at,
        expires_at=c.expires_at,
        seconds_left=status.seconds_left,
        attribution_id=c.attribution_id,
        discount_kind="fixed" if c.discount_kind == "fixed" else "percent",
        fixed_discount=c.discount_fixed,
        currency=c.terms_currency,
        min_order_amount=c.min_order_amount,
    )


def decision_out(decision: Decision, engine: OfferEngine) -> DecisionOut:
    coupon = None
    if decision.coupon is not None:
        coupon = coupon_out(coupon_status(decision.coupon, engine.clock()))
    return DecisionOut(
        campaign_id=decision.campaign_id,
        user_id=decision.user_id,
        decision=decision.decision,
        reasons=list(decision.reasons),
        views=decision.views,
        min_views=decision.min_views,
        previous_decision=decision.previous,
        attribution_id=decision.attribution_id,
        decided_at=decision.decided_at,
        coupon=coupon,
        campaign_version=decision.campaign_version,
        occurrence=decision.occurrence,
    )


@router.post("/v1/offers/evaluate", response_model=DecisionOut, responses=documented(404))
async def evaluate(
    body: Annotated[
        EvaluateIn, Body(openapi_examples={"built-in campaign": {"value": {"user_id": "u123"}}})
    ],
    offers: OffersDep,
) -> DecisionOut:
    """Decide whether the user gets the campaign's coupon now, and record it (once per user)."""
    decision = await run_in_threadpool(offers.evaluate, body.user_id, body.campaign_id)
    return decision_out(decision, offers)


@router.get("/v1/users/{user_id}/offers", response_model=UserOffersOut)
async def user_offers(
    user_id: Annotated[Id, Path(description="The shop's user id.")], coupons: CouponReaderDep
) -> UserOffersOut:
    """The user's active coupons, with their expiry and seconds left."""
    active = await run_in_threadpool(coupons.active, user_id)
    return UserOffersOut(user_id=user_id, offers=[coupon_out(o) for o in active])
