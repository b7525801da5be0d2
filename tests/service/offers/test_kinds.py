"""Every lifecycle kind end to end over HTTP, with an injected clock, on SQLite and PostgreSQL.

Events in, a sweep (``POST .../run``) or an evaluation, then the decision and its coupon with
the right products and occurrence; the next occurrence is decided again, the same occurrence
never twice; the page's offer and the stats of a campaign whose users have several decisions.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from benchmarks.harness import ManualClock as Clock
from service.app import create_app
from service.offers.rules import in_holdout
from service.settings import Settings
from service.state import AppState
from service.tables import coupons, offer_decisions, user_segments

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)

CAMPAIGNS = """
[campaigns.come_back]
kind = "win_back"
min_orders = 2
lapse_rhythm_factor = 2.0
min_lapse_days = 14
restrict_to_top_items = 3
holdout_percent = 0

[campaigns.cart]
kind = "abandoned_cart"
cart_idle_hours = 4
cart_max_age_hours = 72
holdout_percent = 0

[campaigns.cart_top]
kind = "abandoned_cart"
restrict_to_top_items = 1
holdout_percent = 0

[campaigns.happy_birthday]
kind = "birthday"
days_before = 3
days_after = 7
holdout_percent = 0

[campaigns.first_order_day]
kind = "purchase_anniversary"
days_before = 2
days_after = 5
holdout_percent = 0

[campaigns.thank_you]
kind = "frequent_buyer"
min_orders = 3
within_days = 30
holdout_percent = 0

[campaigns.come_back_full_price]
kind = "win_back"
exclude_segments = ["mercenary"]
holdout_percent = 0
"""


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def client(
    small_model_root: Path, database_url: str, clock: Clock, tmp_path: Path
) -> Iterator[TestClient]:
    path = tmp_path / "campaigns.toml"
    path.write_text(CAMPAIGNS)
    settings = Settings(
        model_dir=small_model_root,
        database_url=database_url,
        frontend_keys=[FRONTEND],
        marketing_keys=[MARKETING],
        reload_interval_seconds=0,
        event_poll_seconds=0.05,
        offer_metrics_seconds=0,
        campaign_schedule_seconds=0,  # the schedule has its own tests
        access_log=False,
        campaigns_file=path,
    )
    with TestClient(create_app(settings, clock=clock)) as c:
        yield c


def state(client: TestClient) -> AppState:
    recoffer: AppState = client.app.state.recoffer  # type: ignore[attr-defined]
    return recoffer


def send(client: TestClient, *events: dict[str, Any]) -> None:
    body = [{**e, "timestamp": e["timestamp"].isoformat()} for e in events]
    r = client.post("/v1/events", json={"events": body}, headers=F)
    assert r.status_code == 200, r.text


def order(user: str, at: datetime, order_id: str | None, item: str = "i00001") -> dict[str, Any]:
    event: dict[str, Any] = {"user_id": user, "type": "purchase", "item_id": item, "timestamp": at}
    if order_id is not None:
        event["order_id"] = order_id
    return event


def cart(user: str, at: datetime, item: str) -> dict[str, Any]:
    return {"user_id": user, "type": "add_to_cart", "item_id": item, "timestamp": at}


def evaluate(client: TestClient, user: str, campaign: str) -> dict[str, Any]:
    body = {"user_id": user, "campaign_id": campaign}
    r = client.post("/v1/offers/evaluate", json=body, headers=F)
    assert r.status_code == 200, r.text
    decided: dict[str, Any] = r.json()
    return decided


def run(client: TestClient, campaign: str) -> dict[str, int]:
    """Sweep ``campaign`` as a job over HTTP; its counts once done."""
    r = client.post(f"/v1/campaigns/{campaign}/run", headers=M)
    assert r.status_code == 202, r.text
    assert state(client).sweeps.wait(60)
    job = client.get(f"/v1/campaigns/{campaign}/runs/{r.json()['job_id']}", headers=M).json()
    assert job["state"] == "done", job
    keys = ("issued", "holdout", "budget_exhausted", "not_eligible", "already_decided")
    return {k: int(job[k]) for k in keys if job.get(k)}


def decisions(client: TestClient, campaign: str) -> list[tuple[str, str, str, int]]:
    """(user, occurrence, decision, coupons) rows of the campaign as stored."""
    d, c = offer_decisions, coupons
    with state(client).repository.engine.connect() as conn:
        rows = conn.execute(
            select(d.c.user_id, d.c.occurrence, d.c.decision, func.count(c.c.code))
            .select_from(d.outerjoin(c, c.c.attribution_id == d.c.attribution_id))
            .where(d.c.campaign_id == campaign)
            .group_by(d.c.user_id, d.c.occurrence, d.c.decision)
            .order_by(d.c.user_id, d.c.occurrence)
        ).all()
    return [(str(u), str(o), str(k), int(n)) for u, o, k, n in rows]


# --- win-back ------------------------------------------------------------------------------------


def test_a_win_back_leaves_out_an_excluded_segment_and_records_the_segment(
    client: TestClient,
) -> None:
    last = T0 - timedelta(days=40)
    for user in ("bargain-hunter", "regular"):
        send(client, order(user, last - timedelta(days=10), f"{user}-1"), order(user, last, user))
    with state(client).repository.engine.begin() as conn:
        for user, loyalty in (("bargain-hunter", "mercenary"), ("regular", "habitual")):
            conn.execute(
                user_segments.insert().values(
                    user_id=user,
                    orders=2,
                    coupon_orders=2 if loyalty == "mercenary" else 0,
                    views=0,
                    active_days=2,
                    lifecycle_stage="at_risk",
                    loyalty_type=loyalty,
                    computed_at=T0,
                )
            )
    assert run(client, "come_back_full_price")["issued"] == 1
    assert [r[0] for r in decisions(client, "come_back_full_price")] == ["regular"]
    refused = evaluate(client, "bargain-hunter", "come_back_full_price")
    assert refused["reasons"] == ["excluded_segment:mercenary"]
    d = offer_decisions
    with state(client).repository.engine.connect() as conn:
        recorded = conn.execute(
            select(d.c.lifecycle_stage, d.c.loyalty_type, d.c.campaign_version).where(
                d.c.campaign_id == "come_back_full_price"
            )
        ).one()
    assert tuple(recorded[:2]) == ("at_risk", "habitual")  # the segment when decided
    assert recorded[2] is not None  # the definition version in force (item 5)


def test_a_lapsed_customer_is_won_back_once_per_lapse(client: TestClient, clock: Clock) -> None:
    # two orders ten days apart, the last 40 days ago: lapsed (2 x 10 days, at least 14)
    last = T0 - timedelta(days=40)
    send(
        client,
        order("lapsed", last - timedelta(days=10), "o1"),
        order("lapsed", last - timedelta(days=10), "o1", item="i00002"),  # same order
        order("lapsed", last, "o2"),
        order("once", T0 - timedelta(days=200), "o3"),  # one order: not a candidate
        order("recent", T0 - timedelta(days=30), "o4"),
        order("recent", T0 - timedelta(days=2), "o5"),  # bought two days ago: not lapsed
    )
    counts = run(client, "come_back")
    assert counts["issued"] == 1
    lapse = f"lapse:{last.date().isoformat()}"
    assert decisions(client, "come_back") == [("lapsed", lapse, "issued", 1)]
    body = evaluate(client, "lapsed", "come_back")
    assert (body["decision"], body["occurrence"]) == ("already_decided", lapse)
    # the model's top three for the user in the whole catalogue
    expected = state(client).recommendations.top_items("lapsed", 3)
    assert len(expected) == 3
    assert body["coupon"]["item_ids"] == expected
    assert evaluate(client, "recent", "come_back")["reasons"] == ["not_lapsed"]
    assert evaluate(client, "once", "come_back")["reasons"] == ["too_few_orders"]
    # the same lapse is never decided twice
    assert run(client, "come_back").get("issued", 0) == 0
    # the customer comes back, buys, and lapses again: a new occurrence, decided again
    clock.advance(days=1)
    send(client, order("lapsed", clock.now, "o6"))
    assert evaluate(client, "lapsed", "come_back")["reasons"] == ["not_lapsed"]
    clock.advance(days=120)
    assert run(client, "come_back")["issued"] >= 1
    again = f"lapse:{(T0 + timedelta(days=1)).date().isoformat()}"
    assert [r for r in decisions(client, "come_back") if r[0] == "lapsed"] == [
        ("lapsed", lapse, "issued", 1),
        ("lapsed", again, "issued", 1),
    ]


def test_a_purchase_after_the_last_order_seen_takes_the_win_back_offer_back(
    client: TestClient,
) -> None:
    last = T0 - timedelta(days=60)
    send(client, order("back", last - timedelta(days=20), "a1"), order("back", last, "a2"))
    offers = state(client).offers
    campaign = offers.campaign("come_back")
    repository = offers.repository.decisions
    facts = repository.lifecycle_facts(campaign, "back", T0, attributes=False)
    assert (facts.orders, facts.last_order_at) == (2, last)
    # the customer buys while the decision is being made: the write sees it and refuses
    send(client, order("back", T0 - timedelta(minutes=1), "a3"))
    decided = offers._decide(campaign, facts, T0)
    assert (decided.decision, decided.reasons) == ("not_eligible", ("already_purchased",))
    assert decisions(client, "come_back") == []


# --- abandoned cart ------------------------------------------------------------------------------


def test_an_abandoned_cart_gets_a_coupon_on_its_items_once_per_cart(
    client: TestClient, clock: Clock
) -> None:
    started = T0 - timedelta(hours=6)
    send(
        client,
        order("shopper", T0 - timedelta(days=3), "old", item="i00009"),
        cart("shopper", started, "i00003"),
        cart("shopper", started + timedelta(hours=1), "i00004"),
        cart("busy", T0 - timedelta(hours=1), "i00005"),  # still shopping
        cart("bought", T0 - timedelta(hours=8), "i00006"),
        order("bought", T0 - timedelta(hours=7), "b1", item="i00006"),  # the cart was bought
    )
    counts = run(client, "cart")
    assert counts["issued"] == 1
    occurrence = f"cart:{started.isoformat(timespec='seconds')}"
    body = evaluate(client, "shopper", "cart")
    assert (body["decision"], body["occurrence"]) == ("already_decided", occurrence)
    assert sorted(body["coupon"]["item_ids"]) == ["i00003", "i00004"]  # the cart, ranked
    ranked = state(client).recommendations.rank("shopper", ["i00004", "i00003"])
    assert body["coupon"]["item_ids"] == ranked
    assert evaluate(client, "busy", "cart")["reasons"] == ["cart_still_active"]
    assert evaluate(client, "bought", "cart")["reasons"] == ["no_open_cart"]
    # restrict_to_top_items = 1 keeps the cart's top product only
    top = evaluate(client, "shopper", "cart_top")
    assert (top["decision"], top["coupon"]["item_ids"]) == ("issued", ranked[:1])
    # the cart is bought, a new one is filled and left: decided again, for the new cart
    send(client, order("shopper", T0 - timedelta(minutes=30), "s2", item="i00003"))
    clock.advance(days=1)
    send(client, cart("shopper", clock.now - timedelta(hours=5), "i00007"))
    second = evaluate(client, "shopper", "cart")
    assert second["decision"] == "issued"
    assert second["coupon"]["item_ids"] == ["i00007"]
    assert second["occurrence"] != occurrence
    assert [r[2] for r in decisions(client, "cart")] == ["issued", "issued"]


# --- birthday and anniversary --------------------------------------------------------------------


def test_a_birthday_is_celebrated_once_a_year(client: TestClient, clock: Clock) -> None:
    for user, birthday in (("bday", "1990-11-22"), ("bad", "11-31"), ("far", "05-01")):
        r = client.put(f"/v1/users/{user}", json={"attributes": {"birthday": birthday}}, headers=F)
        assert r.status_code == 200, r.text
    client.put("/v1/users/none", json={"attributes": {"vip": True}}, headers=F)
    counts = run(client, "happy_birthday")
    assert counts == {"issued": 1, "not_eligible": 2}  # "none" is no candidate
    body = evaluate(client, "bday", "happy_birthday")
    assert (body["decision"], body["occurrence"]) == ("already_decided", "year:2026")
    assert body["coupon"]["item_ids"] is None  # store-wide by default
    assert evaluate(client, "bad", "happy_birthday")["reasons"] == ["birthday_invalid"]
    assert evaluate(client, "far", "happy_birthday")["reasons"] == ["not_birthday"]
    assert evaluate(client, "none", "happy_birthday")["reasons"] == ["birthday_unknown"]
    clock.advance(days=365)
    assert run(client, "happy_birthday")["issued"] == 1
    assert [r[1] for r in decisions(client, "happy_birthday")] == ["year:2026", "year:2027"]


def test_the_first_orders_anniversary_is_celebrated_once_a_year(
    client: TestClient, clock: Clock
) -> None:
    send(
        client,
        order("loyal", datetime(2025, 11, 21, 9, tzinfo=UTC), "f1"),
        order("loyal", datetime(2026, 3, 1, tzinfo=UTC), "f2"),
        order("young", datetime(2026, 11, 1, tzinfo=UTC), "y1"),  # not a year yet
        order("other", datetime(2024, 6, 1, tzinfo=UTC), "x1"),
    )
    assert run(client, "first_order_day")["issued"] == 1
    body = evaluate(client, "loyal", "first_order_day")
    assert (body["decision"], body["occurrence"]) == ("already_decided", "year:2026")
    assert evaluate(client, "young", "first_order_day")["reasons"] == ["not_anniversary"]
    clock.advance(days=40)
    assert evaluate(client, "loyal", "first_order_day")["reasons"] == ["not_anniversary"]
    clock.advance(days=325)
    assert evaluate(client, "loyal", "first_order_day")["decision"] == "issued"
    assert [r[1] for r in decisions(client, "first_order_day")] == ["year:2026", "year:2027"]


# --- frequent buyer ------------------------------------------------------------------------------


def test_a_frequent_buyer_is_thanked_at_every_multiple_of_min_orders(
    client: TestClient, clock: Clock
) -> None:
    day = timedelta(days=1)
    send(
        client,
        order("often", T0 - 20 * day, "q1"),
        order("often", T0 - 20 * day, "q1", item="i00002"),  # one order, two lines
        order("often", T0 - 10 * day, None),  # no order id: an order of its own
        order("often", T0 - 5 * day, "q3"),
        order("seldom", T0 - 100 * day, "s1"),
        order("seldom", T0 - 50 * day, "s2"),
        order("seldom", T0 - 5 * day, "s3"),  # three orders, one within 30 days
    )
    assert run(client, "thank_you")["issued"] == 1
    body = evaluate(client, "often", "thank_you")
    assert (body["decision"], body["occurrence"]) == ("already_decided", "orders:1")
    assert evaluate(client, "seldom", "thank_you")["reasons"] == ["too_few_recent_orders"]
    send(client, order("often", T0 - day, "q4"), order("often", T0, "q5"))
    assert evaluate(client, "often", "thank_you")["decision"] == "already_decided"  # 5 orders
    clock.advance(hours=1)
    send(client, order("often", clock.now, "q6"))
    assert evaluate(client, "often", "thank_you")["occurrence"] == "orders:2"
    assert [r[1] for r in decisions(client, "thank_you")] == ["orders:1", "orders:2"]


# --- the page, the stats ---------------------------------------------------------------------


def test_the_page_shows_the_current_occurrences_decision_only(
    client: TestClient, clock: Clock
) -> None:
    send(client, cart("page", T0 - timedelta(hours=5), "i00011"))
    url = "/v1/users/page/recommendations"
    shown = client.get(url, params={"include_offer": "true"}, headers=F).json()["offer"]
    assert shown is None  # a GET decides nothing
    decided = evaluate(client, "page", "cart")
    assert decided["decision"] == "issued"
    shown = client.get(url, params={"include_offer": "true"}, headers=F).json()["offer"]
    assert shown["coupon"]["code"] == decided["coupon"]["code"]
    assert shown["occurrence"] == decided["occurrence"]
    # the cart went cold (older than cart_max_age_hours): that occurrence is over
    clock.advance(days=4)
    assert client.get(url, params={"include_offer": "true"}, headers=F).json()["offer"] is None


def test_stats_count_every_occurrences_decision(client: TestClient, clock: Clock) -> None:
    treated = [u for u in (f"st{n}" for n in range(40)) if not in_holdout("cart", u, 0)][:2]
    for user in treated:
        send(client, cart(user, T0 - timedelta(hours=5), "i00001"))
    run(client, "cart")
    for user in treated:  # each buys, fills a new cart and leaves it
        send(client, order(user, T0 - timedelta(minutes=10), f"o-{user}"))
    clock.advance(days=1)
    for user in treated:
        send(client, cart(user, clock.now - timedelta(hours=5), "i00002"))
    run(client, "cart")
    stats = client.get("/v1/campaigns/cart/stats", headers=M).json()
    assert stats["decisions"]["issued"] == 4  # two users, two carts each
    assert stats["coupons"]["active"] + stats["coupons"]["expired"] == 4
