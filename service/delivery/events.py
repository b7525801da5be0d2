"""What an event says and how it is signed: plain functions, no database, no HTTP.

A body is ``{"id", "type", "created_at", "data"}``; ``data`` carries what a shop needs to write
to its customer, the full coupon code included (the shop must show it). The signature is an
HMAC-SHA256 with the shared secret over ``"<unix time>.<body>"``, sent as
``Recoffer-Signature: t=<unix time>,v1=<hex>``: the time in the signed text lets a receiver
refuse old messages replayed by someone who recorded one.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import orjson

from service.offers.rules import format_code

if TYPE_CHECKING:
    from service.offers.repository.coupons import CouponRecord

EventType = Literal["coupon.issued", "coupon.redeemed", "coupon.expiring"]
SIGNATURE_HEADER = "Recoffer-Signature"
EVENT_ID_HEADER = "Recoffer-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def coupon_data(coupon: CouponRecord) -> dict[str, Any]:
    """The coupon as every event tells it (JSON-ready)."""
    return {
        "user_id": coupon.user_id,
        "campaign_id": coupon.campaign_id,
        "code": format_code(coupon.code),
        "discount_percent": coupon.discount_percent,
        # the terms (issue 12, item 3), named as the API's coupons name them: a fixed amount
        # and a minimum order in currency (a redemption's currency is its order's: the same)
        "discount_kind": coupon.discount_kind,
        "fixed_discount": _money(coupon.discount_fixed),
        "currency": coupon.terms_currency,
        "min_order_amount": _money(coupon.min_order_amount),
        "item_ids": coupon.item_ids,  # None: store-wide
        "issued_at": coupon.issued_at.isoformat(),
        "expires_at": coupon.expires_at.isoformat(),
    }


def redemption_data(coupon: CouponRecord) -> dict[str, Any]:
    """``coupon_data`` and the redemption: order, amounts, currency, which use it was."""
    assert coupon.redeemed_at is not None
    return {
        **coupon_data(coupon),
        "redeemed_at": coupon.redeemed_at.isoformat(),
        "order_id": coupon.order_id,
        "order_amount": _money(coupon.order_amount),
        "discount_amount": _money(coupon.discount_amount),
        "currency": coupon.currency,
        "redemption": coupon.releases + 1,
    }


def body(event_id: str, kind: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed) for one event."""
    envelope = {"id": event_id, "type": kind, "created_at": created_at.isoformat(), "data": data}
    return orjson.dumps(envelope)


def sign(secret: str, timestamp: int, payload: bytes) -> str:
    """The ``Recoffer-Signature`` header value for ``payload`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str,
    header: str,
    payload: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """Whether ``header`` signs ``payload`` with ``secret`` within ``tolerance`` of ``now``.

    What a shop's receiver does (the README has the same in a few lines for the shop to copy).
    """
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, payload).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)
