"""The webhooks as the admin and marketing see them: the outbox and its log with filters,
replays, and the coupons of a campaign for a shop that pulls instead of being told."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.delivery.repository import CouponState, DeliveryRepository, OutboxEvent
from service.errors import InvalidInput, UnknownWebhookEvent
from service.offers.decisions import OfferEngine
from service.offers.repository.coupons import CouponRecord


@dataclass(frozen=True)
class CouponPage:
    coupons: list[CouponRecord]
    next_cursor: str | None  # None: the last page


def encode_cursor(coupon: CouponRecord) -> str:
    """An opaque cursor after ``coupon``: its issue time and attribution id (no code)."""
    text = f"{coupon.issued_at.isoformat()}|{coupon.attribution_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position ``encode_cursor`` wrote; InvalidInput (422) for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, ref = text.split("|", 1)
        moment = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidInput("cursor", "not a cursor this endpoint returned") from None
    if moment.tzinfo is None or not ref:
        raise InvalidInput("cursor", "not a cursor this endpoint returned")
    return moment, ref


class Webhooks:
    """Listings and replays of the outbox; the coupon export."""

    def __init__(
        self,
        repository: DeliveryRepository,
        offers: OfferEngine,
        clock: Callable[[], datetime],
        *,
        enabled: bool,
    ) -> None:
        self.repository = repository
        self.offers = offers
        self.clock = clock
        self.enabled = enabled  # a URL is configured: events are written and sent

    def event(self, event_id: str) -> OutboxEvent:
        found = self.repository.event(event_id)
        if found is None:
            raise UnknownWebhookEvent(event_id)
        return found

    def replay_one(self, event_id: str) -> OutboxEvent:
        """Send one event again (whatever its state), from its first try; the event after."""
        if not self.repository.replay(self.clock(), event_id=event_id):
            raise UnknownWebhookEvent(event_id)
        return self.event(event_id)

    def replay(
        self, states: tuple[str, ...], since: datetime | None, until: datetime | None
    ) -> int:
        """Send again every event in ``states`` (dead, failing) created in [since, until)."""
        if since is not None and until is not None and until <= since:
            raise InvalidInput("until", "must be later than since")
        return self.repository.replay(self.clock(), states=states, since=since, until=until)

    def campaign_coupons(
        self,
        campaign_id: str,
        *,
        state: CouponState | None,
        issued_since: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> CouponPage:
        """One page of the campaign's coupons in issue order; UnknownCampaign (404)."""
        self.offers.campaign(campaign_id)  # the engine's campaigns, as every route sees them
        after = None if cursor is None else decode_cursor(cursor)
        found = self.repository.campaign_coupons(
            campaign_id,
            self.clock(),
            state=state,
            issued_since=issued_since,
            after=after,
            limit=limit + 1,  # one more says whether a next page exists
        )
        page = found[:limit]
        more = len(found) > limit
        return CouponPage(page, encode_cursor(page[-1]) if more and page else None)
