"""The outbox writes: each event inside the transaction of the fact it tells, and the scan
that adds ``coupon.expiring``.

``coupons_issued`` runs inside the decision write (``repository.decisions``), and
``coupon_redeemed`` inside the redemption (``repository.coupons``), on their connection: the
event commits with the coupon or not at all, so none is lost and none tells of a rolled-back
write. Webhooks are on for a database once the lifespan calls ``enable`` on its
``Repository`` (a URL is configured); otherwise these writes do nothing and the outbox stays
empty (no event piles up for a shop that never asked for them).

Each event has a unique ``event_key``, "what happened once": the coupon issued, its n-th
redemption, its expiry announced (``repository.DeliveryRepository.scan_expiring`` inserts
with ``ON CONFLICT DO NOTHING`` on that key, so any number of scanners write one per coupon).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection

from service.delivery.events import EventType, coupon_data, redemption_data
from service.tables import webhook_events

if TYPE_CHECKING:
    from service.activity.repository import Repository
    from service.offers.repository.coupons import CouponRecord


@dataclass(frozen=True)
class Outbox:
    """Webhooks on for one database: what its writes need to know."""

    expiring_lead: timedelta  # coupon.expiring this long before the expiry


_ENABLED: weakref.WeakKeyDictionary[Repository, Outbox] = weakref.WeakKeyDictionary()


def enable(base: Repository, outbox: Outbox) -> None:
    """Write events for the decisions and redemptions made through ``base``."""
    _ENABLED[base] = outbox


def disable(base: Repository) -> None:
    _ENABLED.pop(base, None)


def enabled(base: Repository) -> Outbox | None:
    """The outbox of ``base``, None while webhooks are off for it."""
    return _ENABLED.get(base)


def event_row(
    kind: EventType, key: str, coupon: CouponRecord, data: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """A new, pending row of ``webhook_events`` (due at once)."""
    return {
        "event_id": uuid.uuid4().hex,
        "event_key": key,
        "type": kind,
        "coupon_ref": coupon.attribution_id,
        "campaign_id": coupon.campaign_id,
        "user_id": coupon.user_id,
        "payload": data,
        "created_at": now,
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": now,
    }


def coupons_issued(
    base: Repository, conn: Connection, issued: Sequence[CouponRecord | None]
) -> None:
    """``coupon.issued`` for each coupon of ``issued`` (None: no coupon), on ``conn``."""
    if base not in _ENABLED:
        return
    rows = [
        event_row("coupon.issued", f"issued:{c.attribution_id}", c, coupon_data(c), c.issued_at)
        for c in issued
        if c is not None
    ]
    if rows:
        conn.execute(webhook_events.insert(), rows)


def coupon_redeemed(base: Repository, conn: Connection, used: CouponRecord) -> None:
    """``coupon.redeemed`` for the redemption just written on ``conn``."""
    if base not in _ENABLED or used.redeemed_at is None:
        return
    number = used.releases + 1  # the n-th redemption follows n - 1 releases
    key = f"redeemed:{used.attribution_id}:{number}"
    row = event_row("coupon.redeemed", key, used, redemption_data(used), used.redeemed_at)
    conn.execute(webhook_events.insert(), row)
