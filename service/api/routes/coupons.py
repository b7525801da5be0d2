"""Coupons at checkout: validate, redeem exactly once, release after a cancelled order."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import CouponsDep, _presented_key, no_store, require_part, role_of
from service.api.docs import documented
from service.api.routes.offers import coupon_out
from service.api.schemas import (
    CouponOut,
    CouponTrailOut,
    Id,
    LedgerEntryOut,
    RedeemIn,
    RedemptionOut,
    ReleaseIn,
)
from service.errors import CouponNotFound
from service.middleware import client_address
from service.offers.coupons import Coupons
from service.offers.limiter import Caller
from service.offers.rules import format_code
from service.state import AppState

router = APIRouter(prefix="/v1/coupons", tags=["coupons"], dependencies=[Depends(no_store)])
Code = Annotated[
    str, Path(min_length=1, max_length=64, description="As shown to the customer; any case.")
]


def api_client(request: Request) -> str:
    """The calling key's role and fingerprint (12 hex digits of its SHA-256), never the key.

    Runs after the route's key check, so the key is a configured one.
    """
    key = _presented_key(request)
    role = None if key is None else role_of(key, request.app.state.recoffer_keys)
    if key is None or role is None:  # development mode (RECOFFER_AUTH_DISABLED): no keys
        return "development"
    return f"{role}:{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def caller_of(request: Request) -> Caller:
    """Whom a failed lookup counts against: the API client and the client's address."""
    state: AppState = request.app.state.recoffer
    address = client_address(request.scope, state.settings.trusted_proxies)
    return Caller(api_client(request), address)


CallerDep = Annotated[Caller, Depends(caller_of)]


def _coupons(state: AppState) -> Coupons:
    return state.coupons


AuditDep = Annotated[Coupons, Depends(require_part(_coupons, "marketing"))]


@router.get("/{code}", response_model=CouponOut, responses=documented(404))
async def validate(
    code: Code,
    coupons: CouponsDep,
    caller: CallerDep,
    user_id: Annotated[
        Id | None, Query(description="404, as for an unknown code, when it is not theirs.")
    ] = None,
) -> CouponOut:
    """Look a coupon up without using it: status, discount, products, expiry."""
    status = await run_in_threadpool(coupons.validate, code, user_id, caller=caller)
    return coupon_out(status)


@router.post(
    "/{code}/redeem", response_model=RedemptionOut, responses=documented(404, 409, 410, 422)
)
async def redeem(
    code: Code, body: RedeemIn, coupons: CouponsDep, caller: CallerDep
) -> RedemptionOut:
    """Use the coupon for an order, exactly once (a retry with the same order id gets 200)."""
    status, replayed = await run_in_threadpool(
        lambda: coupons.redeem(
            code,
            body.user_id,
            body.order_id,
            body.order_amount,
            body.currency,
            caller=caller,
            order_total=body.order_total,
        )
    )
    c = status.coupon
    return RedemptionOut(
        coupon=coupon_out(status),
        order_id=c.order_id,
        redeemed_at=c.redeemed_at,
        order_amount=c.order_amount,
        discount_amount=c.discount_amount,
        currency=c.currency,
        replayed=replayed,
    )


@router.post("/{code}/release", response_model=CouponOut, responses=documented(404, 409, 410))
async def release(code: Code, body: ReleaseIn, coupons: CouponsDep, caller: CallerDep) -> CouponOut:
    """Give the use back after the order that redeemed it was cancelled (bounded times)."""
    status = await run_in_threadpool(
        lambda: coupons.release(code, body.user_id, body.order_id, caller=caller)
    )
    return coupon_out(status)


@router.get("/{code}/trail", response_model=CouponTrailOut, responses=documented(404))
async def trail(code: Code, coupons: AuditDep) -> CouponTrailOut:
    """Every redemption and release of the coupon: who, which order, amount, when."""
    found = await run_in_threadpool(coupons.trail, code)
    if found is None:
        raise CouponNotFound("no such coupon")
    coupon, entries = found
    return CouponTrailOut(
        code=format_code(coupon.code),
        campaign_id=coupon.campaign_id,
        entries=[
            LedgerEntryOut(
                action=e.action,
                redemption=e.redemption,
                order_id=e.order_id,
                user_id=e.user_id,
                order_amount=e.order_amount,
                discount_amount=e.discount_amount,
                currency=e.currency,
                actor=e.actor,
                at=e.at,
            )
            for e in entries
        ],
    )
