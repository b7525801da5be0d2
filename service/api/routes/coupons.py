"""Coupons at checkout: validate, redeem exactly once, release after a cancelled order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import CouponsDep, no_store
from service.api.docs import documented
from service.api.routes.offers import coupon_out
from service.api.schemas import CouponOut, Id, RedeemIn, RedemptionOut, ReleaseIn

router = APIRouter(prefix="/v1/coupons", tags=["coupons"], dependencies=[Depends(no_store)])
Code = Annotated[
    str, Path(min_length=1, max_length=64, description="As shown to the customer; any case.")
]


@router.get("/{code}", response_model=CouponOut, responses=documented(403, 404))
async def validate(
    code: Code,
    request: Request,
    coupons: CouponsDep,
    user_id: Annotated[Id | None, Query(description="403 when the coupon is not theirs.")] = None,
) -> CouponOut:
    """Look a coupon up without using it: status, discount, products, expiry."""
    client = request.client.host if request.client else "unknown"
    status = await run_in_threadpool(coupons.validate, code, user_id, client=client)
    return coupon_out(status)


@router.post(
    "/{code}/redeem", response_model=RedemptionOut, responses=documented(403, 404, 409, 410)
)
async def redeem(code: Code, body: RedeemIn, coupons: CouponsDep) -> RedemptionOut:
    """Use the coupon for an order, exactly once (a retry with the same order id gets 200)."""
    status, replayed = await run_in_threadpool(
        coupons.redeem, code, body.user_id, body.order_id, body.order_amount
    )
    c = status.coupon
    return RedemptionOut(
        coupon=coupon_out(status),
        order_id=c.order_id,
        redeemed_at=c.redeemed_at,
        discount_amount=None if c.discount_amount is None else round(c.discount_amount, 2),
        replayed=replayed,
    )


@router.post("/{code}/release", response_model=CouponOut, responses=documented(403, 404, 409, 410))
async def release(code: Code, body: ReleaseIn, coupons: CouponsDep) -> CouponOut:
    """Give a use back after the order was cancelled, while the coupon has time left."""
    status = await run_in_threadpool(coupons.release, code, body.user_id, body.order_id)
    return coupon_out(status)
