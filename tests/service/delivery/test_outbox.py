"""The outbox is written in the transaction of the fact it tells: an issued coupon, a
redemption; never for a write that was rolled back; coupon.expiring once per coupon however
many scanners run. On SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Connection, func, select, text, update

from benchmarks.harness import ManualClock as Clock
from benchmarks.harness import all_at_once
from service.db import migrate
from service.delivery import outbox
from service.delivery.repository import DeliveryRepository
from service.errors import CouponAlreadyRedeemed
from service.offers.campaigns import Campaign
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.rules import format_code
from service.tables import coupons, offer_decisions, webhook_events

from .conftest import LEAD, rows
from .shop import CAMPAIGN, NOW, engine_for, hesitating, issue


def test_an_issued_coupon_writes_one_coupon_issued_event_with_what_the_shop_needs(
    offers: OfferEngine,
) -> None:
    code = issue(offers, "u-issued")
    [event] = rows(offers)
    assert (event["type"], event["state"], event["attempts"]) == ("coupon.issued", "pending", 0)
    assert event["user_id"] == "u-issued"
    data = event["payload"]
    assert data["code"] == format_code(code)  # the full code: the shop has to show it
    assert data["user_id"] == "u-issued"
    assert data["campaign_id"] == CAMPAIGN
    assert data["discount_percent"] > 0
    stored = offers.repository.coupons.coupon(code)
    assert stored is not None
    # the money terms travel too (issue 12, item 3): a percent coupon without a minimum
    assert (data["discount_kind"], data["fixed_discount"], data["min_order_amount"]) == (
        stored.discount_kind,
        None,
        None,
    )
    assert data["item_ids"] == stored.item_ids  # the products it is for (None: store-wide)
    assert data["expires_at"] > data["issued_at"]
    assert len(event["event_id"]) == 32


def test_with_webhooks_off_nothing_is_written(offers: OfferEngine) -> None:
    outbox.disable(offers.repository.base)
    issue(offers, "u-off")
    assert rows(offers) == []


def test_a_failure_after_the_event_rolls_the_decision_back_and_the_event_with_it(
    offers: OfferEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = outbox.coupons_issued

    def then_fail(*args: object) -> None:
        real(*args)  # type: ignore[arg-type]
        raise RuntimeError("the transaction fails after the event was written")

    monkeypatch.setattr(outbox, "coupons_issued", then_fail)
    hesitating(offers, "u-rolled")
    with pytest.raises(RuntimeError):
        offers.evaluate("u-rolled", CAMPAIGN)
    with offers.repository.engine.connect() as conn:
        for table in (offer_decisions, coupons, webhook_events):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 0


def test_an_event_that_cannot_be_written_refuses_the_coupon(
    offers: OfferEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise RuntimeError("the outbox is unavailable")

    monkeypatch.setattr(outbox, "coupons_issued", refuse)
    hesitating(offers, "u-refused")
    with pytest.raises(RuntimeError):
        offers.evaluate("u-refused", CAMPAIGN)
    with offers.repository.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(coupons)).scalar_one() == 0


def test_a_decision_refused_by_the_cap_writes_no_event(database_url: str) -> None:
    clock = Clock(NOW)
    offers = engine_for(database_url, clock, Campaign(holdout_percent=0, max_total=1))
    try:
        migrate(offers.repository.engine)
        outbox.enable(offers.repository.base, outbox.Outbox(LEAD))
        issue(offers, "u-first")
        hesitating(offers, "u-second")
        assert offers.evaluate("u-second", CAMPAIGN).decision == "budget_exhausted"
        assert [e["user_id"] for e in rows(offers)] == ["u-first"]
    finally:
        outbox.disable(offers.repository.base)
        offers.repository.engine.dispose()


def test_a_sweep_writes_one_event_per_coupon_it_issues(offers: OfferEngine) -> None:
    for n in range(30):
        hesitating(offers, f"u-swept-{n}")
    result = offers.sweep(CAMPAIGN)
    assert result.decisions["issued"] == 30
    events = rows(offers)
    assert sorted(e["user_id"] for e in events) == sorted(f"u-swept-{n}" for n in range(30))
    with offers.repository.engine.connect() as conn:
        refs = set(conn.execute(select(coupons.c.attribution_id)).scalars())
    assert {e["coupon_ref"] for e in events} == refs


def test_redemptions_write_coupon_redeemed_with_the_order_each_use_once(
    offers: OfferEngine,
) -> None:
    code = issue(offers, "u-redeem")
    shop = Coupons(offers.repository, offers.clock)
    shop.redeem(code, "u-redeem", "o-1", Decimal("80.00"), "EUR")
    with pytest.raises(CouponAlreadyRedeemed):
        shop.redeem(code, "u-redeem", "o-9", Decimal("10.00"), "EUR")  # refused: no event
    shop.release(code, "u-redeem", "o-1")
    shop.redeem(code, "u-redeem", "o-2", Decimal("50.00"), "EUR")
    events = rows(offers)
    assert [e["type"] for e in events] == ["coupon.issued", "coupon.redeemed", "coupon.redeemed"]
    first, second = events[1]["payload"], events[2]["payload"]
    assert (first["order_id"], first["order_amount"], first["redemption"]) == ("o-1", "80.0000", 1)
    assert (second["order_id"], second["redemption"]) == ("o-2", 2)
    assert first["discount_amount"] is not None
    assert first["currency"] == "EUR"
    assert len({e["coupon_ref"] for e in events}) == 1  # one coupon: one line of order


def test_the_expiry_scan_announces_each_unredeemed_coupon_once(
    offers: OfferEngine, clock: Clock
) -> None:
    soon = issue(offers, "u-soon")
    used = issue(offers, "u-used")
    Coupons(offers.repository, offers.clock).redeem(used, "u-used", "o-1")
    repo = DeliveryRepository(offers.repository.base)
    coupon = offers.repository.coupons.coupon(soon)
    assert coupon is not None
    lead = timedelta(hours=2)
    assert repo.scan_expiring(clock(), lead) == 0  # a day left: not yet
    clock.now = coupon.expires_at - timedelta(hours=1)  # inside the lead time
    written = repo.scan_expiring(clock(), lead)
    assert repo.scan_expiring(clock(), lead) == 0  # a repeat writes nothing
    expiring = [e for e in rows(offers) if e["type"] == "coupon.expiring"]
    assert written == len(expiring) == 1  # the redeemed coupon is not announced
    assert expiring[0]["user_id"] == "u-soon"
    assert expiring[0]["payload"]["lead_seconds"] == 7200
    clock.now = coupon.expires_at + timedelta(seconds=1)
    assert repo.scan_expiring(clock(), lead) == 0  # expired: nothing more


def test_the_scan_announces_only_coupons_the_shop_was_told_of_and_living_past_the_lead(
    offers: OfferEngine, clock: Clock
) -> None:
    outbox.disable(offers.repository.base)
    untold = issue(offers, "u-untold")  # issued while webhooks were off
    outbox.enable(offers.repository.base, outbox.Outbox(LEAD))
    told = issue(offers, "u-told")
    repo = DeliveryRepository(offers.repository.base)
    coupon = offers.repository.coupons.coupon(told)
    assert coupon is not None
    clock.now = coupon.expires_at - timedelta(hours=1)
    assert repo.scan_expiring(clock(), LEAD) == 1
    announced = [e["user_id"] for e in rows(offers) if e["type"] == "coupon.expiring"]
    assert announced == ["u-told"]
    assert offers.repository.coupons.coupon(untold) is not None
    # a lead as long as the coupon's life: it would be "expiring" from its issue, so never
    short = offers.repository.coupons.coupon(issue(offers, "u-short"))
    assert short is not None
    clock.now = short.expires_at - timedelta(hours=1)
    assert repo.scan_expiring(clock(), timedelta(hours=24)) == 0
    assert repo.scan_expiring(clock(), LEAD) == 1  # with a shorter lead it is announced


def test_concurrent_scanners_write_coupon_expiring_once_per_coupon(database_url: str) -> None:
    clock = Clock(NOW)
    offers = engine_for(database_url, clock)
    try:
        migrate(offers.repository.engine)
        outbox.enable(offers.repository.base, outbox.Outbox(LEAD))
        for n in range(40):
            hesitating(offers, f"u-scan-{n}")
        offers.sweep(CAMPAIGN)
        clock.advance(hours=19)  # every coupon (24 h) within the lead time (6 h)
        # four scanners on separate engines, as four replicas would be
        scanners = [
            DeliveryRepository(engine_for(database_url, clock).repository.base) for _ in range(4)
        ]
        written = all_at_once(4, lambda i: scanners[i].scan_expiring(clock(), LEAD))
        assert not [w for w in written if isinstance(w, BaseException)], written
        expiring = [e for e in rows(offers) if e["type"] == "coupon.expiring"]
        assert len(expiring) == 40 == sum(w for w in written if isinstance(w, int))
        assert len({e["coupon_ref"] for e in expiring}) == 40
        for s in scanners:
            s.engine.dispose()
    finally:
        outbox.disable(offers.repository.base)
        offers.repository.engine.dispose()


def test_a_redemption_under_way_keeps_the_scan_from_announcing_its_coupon(
    fresh_postgres: str,
) -> None:
    clock = Clock(NOW)
    offers = engine_for(fresh_postgres, clock)
    try:
        migrate(offers.repository.engine)
        outbox.enable(offers.repository.base, outbox.Outbox(LEAD))
        code = issue(offers, "u-race")
        scanner = DeliveryRepository(engine_for(fresh_postgres, clock).repository.base)
        with offers.repository.base.writing() as conn:  # a redemption, not committed yet
            conn.execute(update(coupons).where(coupons.c.code == code).values(redeemed_at=NOW))
            with ThreadPoolExecutor(1) as pool:
                # 20 h on, the coupon (24 h) is within the lead (6 h)
                scan = pool.submit(scanner.scan_expiring, NOW + timedelta(hours=20), LEAD)
                _until_waiting_on_a_lock(conn)  # the scan waits for this transaction to end
                assert not scan.done()
                conn.commit()
                assert scan.result(timeout=30) == 0  # redeemed: not announced
        scanner.engine.dispose()
    finally:
        outbox.disable(offers.repository.base)
        offers.repository.engine.dispose()


def _until_waiting_on_a_lock(conn: Connection, seconds: float = 20.0) -> None:
    """Until another session of this database waits for a lock (the scan on our row)."""
    from sqlalchemy.exc import OperationalError

    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with conn.engine.connect() as probe:
            try:
                if probe.execute(query).scalar_one():
                    return
            except OperationalError:
                pass
        time.sleep(0.01)
    raise AssertionError("the scan never waited for the redemption's lock")
