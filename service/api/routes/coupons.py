"""Coupons at checkout: validate, redeem exactly once, release after a cancelled order."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import AppState, FrontendState
from service.api.routes.offers import coupon_out
from service.api.schemas import CouponOut, Id, RedeemIn, RedemptionOut, ReleaseIn
from service.errors import CouponNotFound, CouponNotYours
from service.offers.engine import CouponStatus

router = APIRouter(prefix="/v1/coupons", tags=["coupons"])
Code = Annotated[
    str, Path(min_length=1, max_length=64, description="As shown to the customer; any case.")
]
T = TypeVar("T")


async def _guarded(
    state: AppState, request: Request, user_id: str | None, call: Callable[[], T]
) -> T:
    """Run a lookup under the failed-lookup limits (429 once used up); failures count.

    A lookup made for a user counts against that user only: the shop's backend calls for all
    its customers from one address, and one customer's typos must not lock out the others.
    Anonymous lookups count against the calling address.
    """
    settings = state.settings
    if user_id is not None:
        limits = [(f"user:{user_id}", settings.coupon_failures_per_user)]
    else:
        client = request.client.host if request.client else "unknown"
        limits = [(f"client:{client}", settings.coupon_failures_per_client)]
    try:
        state.coupon_limiter.check(limits)
    except Exception:
        state.metrics.coupon_refusals.labels("rate_limited").inc()
        raise
    try:
        return await run_in_threadpool(call)
    except (CouponNotFound, CouponNotYours) as exc:
        state.coupon_limiter.fail(key for key, _ in limits)
        reason = "not_found" if isinstance(exc, CouponNotFound) else "not_yours"
        state.metrics.coupon_refusals.labels(reason).inc()
        raise


def _redemption(status: CouponStatus, replayed: bool) -> RedemptionOut:
    c = status.coupon
    return RedemptionOut(
        coupon=coupon_out(status),
        order_id=c.order_id,
        redeemed_at=c.redeemed_at,
        discount_amount=None if c.discount_amount is None else round(c.discount_amount, 2),
        replayed=replayed,
    )


@router.get("/{code}", response_model=CouponOut)
async def validate(
    code: Code,
    request: Request,
    state: FrontendState,
    user_id: Annotated[Id | None, Query(description="403 when the coupon is not theirs.")] = None,
) -> CouponOut:
    """Look a coupon up without using it: status, discount, products, expiry."""
    status = await _guarded(state, request, user_id, lambda: state.offers.validate(code, user_id))
    return coupon_out(status)


@router.post("/{code}/redeem", response_model=RedemptionOut)
async def redeem(
    code: Code, body: RedeemIn, request: Request, state: FrontendState
) -> RedemptionOut:
    """Use the coupon for an order, exactly once (a retry with the same order id gets 200)."""
    status, replayed = await _guarded(
        state,
        request,
        body.user_id,
        lambda: state.offers.redeem(code, body.user_id, body.order_id, body.order_amount),
    )
    return _redemption(status, replayed)


@router.post("/{code}/release", response_model=CouponOut)
async def release(code: Code, body: ReleaseIn, request: Request, state: FrontendState) -> CouponOut:
    """Give a use back after the order was cancelled, while the coupon has time left."""
    status = await _guarded(
        state,
        request,
        body.user_id,
        lambda: state.offers.release(code, body.user_id, body.order_id),
    )
    return coupon_out(status)
