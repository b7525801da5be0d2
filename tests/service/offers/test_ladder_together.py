"""Issue 12's items together: what one item's path owes another's (found in review).

A pause or an archive stops a sweep in flight; an erasure during a sweep or a segment run is
not undone by its writes (no decision, coupon, webhook event or segment row comes back); a
coupon of an earlier occurrence stays the user's offer while it can be used; on-view
evaluation belongs to the new-user kind. Each on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.clock import utc_now
from service.db import make_engine, migrate
from service.delivery import outbox
from service.offers import decisions as engine_module
from service.offers.campaigns import Campaign
from service.offers.decisions import OfferEngine
from service.offers.repository import OfferRepository
from service.offers.targeting import UpliftTargeting
from service.privacy.repository import PrivacyRepository
from service.segments.repository import SegmentRepository
from service.segments.service import Segments
from service.settings import SegmentSettings
from service.tables import coupons, offer_decisions, user_segments, webhook_events

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WIN_BACK = Campaign(campaign_id="wb", kind="win_back", holdout_percent=0, max_per_day=None)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def base(database_url: str) -> Iterator[Repository]:
    engine = make_engine(database_url, timeout_seconds=30)
    migrate(engine)
    yield Repository(engine)
    engine.dispose()


def offers(base: Repository, *campaigns: Campaign, clock: Clock | None = None) -> OfferEngine:
    clock = clock or Clock()
    repository = OfferRepository(base)
    targeting = UpliftTargeting(repository.reports, clock, background=False)
    return OfferEngine(
        {c.campaign_id: c for c in campaigns}, repository, clock, targeting=targeting
    )


def lapsed(base: Repository, user: str) -> None:
    """Two orders ten days apart, the last 40 days ago: lapsed for the default win-back."""
    last = NOW - timedelta(days=40)
    base.add_events(
        [
            NewEvent(
                user,
                "purchase",
                last - timedelta(days=10 * k),
                item_id="i1",
                order_id=f"{user}-{k}",
            )
            for k in range(2)
        ]
    )


def count(base: Repository, table: object, user: str | None = None) -> int:
    t = table  # a Table
    query = select(func.count()).select_from(t)  # type: ignore[arg-type]
    if user is not None:
        query = query.where(t.c.user_id == user)  # type: ignore[attr-defined]
    with base.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_a_pause_stops_a_sweep_at_its_next_batch(
    base: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SWEEP_BATCH", 10)
    engine = offers(base, WIN_BACK)
    for n in range(50):
        lapsed(base, f"u{n:03d}")

    def pause_after_the_first(done: int, total: int, counts: object) -> None:
        if done == 10:  # what the store's listener does when marketing pauses it
            engine.campaigns = {"wb": WIN_BACK.model_copy(update={"enabled": False})}

    result = engine.sweep("wb", pause_after_the_first)
    assert result.decisions["issued"] == 10
    assert count(base, offer_decisions) == 10


def test_an_erasure_during_a_sweep_is_not_undone_by_its_writes(
    base: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SWEEP_BATCH", 10)
    outbox.enable(base, outbox.Outbox(timedelta(hours=1)))
    engine = offers(base, WIN_BACK)
    for n in range(20):
        lapsed(base, f"u{n:03d}")
    privacy = PrivacyRepository(base)

    def erase_one_of_the_next_batch(done: int, total: int, counts: object) -> None:
        if done == 10:
            privacy.erase("u015", NOW)

    try:
        result = engine.sweep("wb", erase_one_of_the_next_batch)
    finally:
        outbox.disable(base)
    assert result.decisions["issued"] == 19
    for table in (offer_decisions, coupons, webhook_events):
        assert count(base, table, "u015") == 0, table.name
    # and a single evaluation of an erased id decides nothing
    assert engine.evaluate("u015", "wb").decision == "not_eligible"
    assert count(base, offer_decisions, "u015") == 0


def test_a_segment_run_does_not_bring_back_an_erased_user(base: Repository) -> None:
    for user in ("u1", "u2"):
        lapsed(base, user)
    repository = SegmentRepository(base)
    save = repository.save

    def erase_then_save(rows: object) -> None:
        PrivacyRepository(base).erase("u2", NOW)  # while the run was computing
        save(rows)  # type: ignore[arg-type]

    repository.save = erase_then_save  # type: ignore[method-assign]
    Segments(repository, SegmentSettings(), utc_now).run()
    assert count(base, user_segments, "u1") == 1
    assert count(base, user_segments, "u2") == 0


def test_a_coupon_of_the_open_cart_stays_the_offer_when_the_customer_comes_back(
    base: Repository,
) -> None:
    clock = Clock()
    cart = Campaign(campaign_id="cart", kind="abandoned_cart", holdout_percent=0)
    engine = offers(base, cart, clock=clock)
    base.upsert_user("s", signed_up_at=NOW - timedelta(days=3))
    base.add_events([NewEvent("s", "add_to_cart", NOW - timedelta(hours=5), item_id="i1")])
    issued = engine.evaluate("s", "cart")
    assert issued.decision == "issued"
    assert issued.coupon is not None
    clock.now += timedelta(minutes=10)
    base.add_events([NewEvent("s", "add_to_cart", clock.now, item_id="i2")])  # back at the cart
    page = engine.offer_for_page("s", decide=False)
    assert page is not None
    assert page.coupon is not None
    assert page.coupon.code == issued.coupon.code
    again = engine.evaluate("s", "cart")
    assert again.decision == "already_decided"
    assert again.coupon is not None
    assert again.coupon.code == issued.coupon.code
    # once the coupon has expired it is no offer; the same cart is never decided twice
    clock.now = issued.coupon.expires_at + timedelta(seconds=1)
    later = engine.offer_for_page("s", decide=True)
    assert later is not None
    assert later.coupon is None
    assert later.decision == "already_decided"
    assert count(base, offer_decisions, "s") == 1


def test_on_view_evaluation_belongs_to_the_new_user_kind() -> None:
    with pytest.raises(ValidationError, match="evaluate_on_view: not a field of kind 'win_back'"):
        Campaign(campaign_id="wb", kind="win_back", evaluate_on_view=True)
    assert Campaign(evaluate_on_view=True).evaluate_on_view
