"""A tiny shop for the webhook tests: a clock moved by hand, hesitating new users, threads
released together."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine
from service.offers.campaigns import Campaign
from service.offers.decisions import OfferEngine
from service.offers.repository import OfferRepository

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CAMPAIGN = "new_user_high_intent"


def engine_for(
    url: str, clock: Callable[[], datetime], campaign: Campaign | None = None
) -> OfferEngine:
    """The built-in campaign, by default without a holdout: every eligible user is issued one."""
    campaign = campaign or Campaign(holdout_percent=0)
    engine = make_engine(url, timeout_seconds=30, pool_size=10)
    base = Repository(engine, clock)
    return OfferEngine({campaign.campaign_id: campaign}, OfferRepository(base), clock)


def hesitating(engine: OfferEngine, user_id: str, views: int = 11) -> None:
    """A user who signed up two hours ago and viewed ``views`` products since."""
    base = engine.repository.base
    start = engine.clock() - timedelta(hours=2)
    base.upsert_user(user_id, signed_up_at=start)
    base.add_events(
        [
            NewEvent(user_id, "view", start + timedelta(minutes=n + 1), item_id=f"i{n}")
            for n in range(views)
        ]
    )


def issue(engine: OfferEngine, user_id: str) -> str:
    """A coupon for a new hesitating user; its code."""
    hesitating(engine, user_id)
    decision = engine.evaluate(user_id, CAMPAIGN)
    assert decision.coupon is not None, decision
    return decision.coupon.code
