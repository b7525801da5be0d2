"""User segments (issue 12, item 1): the rules on hand-made histories with a fixed clock, the
bulk run against one user's refresh on SQLite and PostgreSQL, the API, export and erasure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.app import create_app
from service.db import make_engine, migrate
from service.segments.repository import SegmentRepository
from service.segments.rules import (
    Figures,
    ShopThresholds,
    ThresholdBuilder,
    breakpoints,
    lifecycle_stage,
    loyalty_type,
    score,
    segment,
)
from service.segments.service import SegmentRefresher, Segments
from service.settings import SegmentSettings, Settings
from service.tables import coupons, user_segments

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RULES = SegmentSettings()
SHOP = ShopThresholds(typical_interval_days=20.0)
MARKETING = "marketing-key-0123456789"
FRONTEND = "frontend-key-0123456789"
ADMIN = "admin-key-0123456789abcd"


def days(n: float) -> datetime:
    return NOW - timedelta(days=n)


def buyer(order_days_ago: Sequence[float], **extra: Any) -> Figures:
    """A customer whose orders were placed these many days before NOW."""
    at = sorted(days(d) for d in order_days_ago)
    return Figures(
        user_id="u",
        orders=len(at),
        first_order_at=at[0],
        last_order_at=at[-1],
        previous_order_at=at[-2] if len(at) > 1 else None,
        **extra,
    )


def stage(f: Figures, settings: SegmentSettings = RULES) -> str:
    return lifecycle_stage(f, NOW, SHOP, settings)


# --- lifecycle stage -------------------------------------------------------------------


def test_a_user_without_an_order_or_with_a_recent_first_order_is_new() -> None:
    assert stage(Figures(user_id="u", views=3)) == "new"
    assert stage(buyer([10])) == "new"
    assert stage(buyer([25, 10])) == "new"  # first order 25 days ago, within new_days = 30


def test_a_regular_customer_is_active_then_at_risk_then_lapsed_by_their_own_rhythm() -> None:
    weekly = [7 * k for k in range(1, 8)]  # every 7 days; their rhythm is 7 days
    assert stage(buyer(weekly)) == "active"
    # at_risk after max(2 x 7, 30) = 30 days, lapsed after max(4 x 7, 90) = 90 days: floors
    assert stage(buyer([d + 22 for d in weekly])) == "active"  # last order 29 days ago
    assert stage(buyer([d + 24 for d in weekly])) == "at_risk"  # 31 days
    assert stage(buyer([d + 84 for d in weekly])) == "lapsed"  # 91 days


def test_thresholds_follow_the_customers_rhythm_not_fixed_days() -> None:
    # last order 100 days ago: at_risk for a monthly buyer, still active for a yearly one
    monthly = [100 + 30 * k for k in range(4)]  # rhythm 30: at_risk after 60, lapsed after 120
    assert stage(buyer([d - 50 for d in monthly])) == "active"
    assert stage(buyer(monthly)) == "at_risk"
    assert stage(buyer([d + 30 for d in monthly])) == "lapsed"
    yearly = buyer([100 + 365 * k for k in range(4)])
    assert stage(yearly) == "active"  # at_risk only after 2 x 365 days


def test_a_customer_with_few_orders_is_judged_by_the_shops_typical_interval() -> None:
    two = buyer([200, 45])  # two orders: no rhythm of their own (rhythm_min_orders = 3)
    assert stage(two) == "at_risk"  # typical 20 days: at_risk after 40 (floor 30), lapsed 90
    slow_shop = ShopThresholds(typical_interval_days=60.0)
    assert lifecycle_stage(two, NOW, slow_shop, RULES) == "active"  # at_risk after 120 days


def test_a_customer_who_comes_back_after_a_lapse_is_returning_until_they_buy_again() -> None:
    back = buyer([400, 380, 360, 340, 5])  # every 20 days, then 335 days away, back 5 days ago
    assert stage(back) == "returning"
    assert stage(buyer([400, 380, 360, 340, 25, 5])) == "active"  # bought again since


def test_every_stage_threshold_is_configurable() -> None:
    weekly = [7 * k + 40 for k in range(1, 8)]  # last order 47 days ago
    assert stage(buyer(weekly)) == "at_risk"
    patient = SegmentSettings(at_risk_min_days=50, lapsed_min_days=100)
    assert stage(buyer(weekly), patient) == "active"
    strict = SegmentSettings(at_risk_min_days=10, lapsed_min_days=20, lapsed_factor=3)
    assert stage(buyer(weekly), strict) == "lapsed"


def test_every_threshold_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in SegmentSettings.model_fields:
        assert f"RECOFFER_SEGMENT_{name.upper()}" in readme, name


def test_inconsistent_thresholds_are_refused_naming_the_variables() -> None:
    with pytest.raises(ValueError, match="LAPSED_FACTOR"):
        SegmentSettings(at_risk_factor=3, lapsed_factor=2)
    with pytest.raises(ValueError, match="COMMITTED_MAX_SHARE"):
        SegmentSettings(committed_max_share=0.6, mercenary_share=0.5)


# --- loyalty type ----------------------------------------------------------------------


def kind(f: Figures) -> str:
    return loyalty_type(f, lifecycle_stage(f, NOW, SHOP, RULES), RULES)


REGULAR = [7 * k for k in range(1, 6)]


def test_each_loyalty_type_is_reachable() -> None:
    assert kind(Figures(user_id="u")) == "not_loyal"
    assert kind(Figures(user_id="u", views=12)) == "latent"  # browses, never bought
    assert kind(Figures(user_id="u", active_days=5)) == "latent"  # comes back, never bought
    assert kind(buyer(REGULAR)) == "habitual"  # buys regularly, does not browse
    assert kind(buyer(REGULAR, views=20, active_days=6)) == "committed"
    assert kind(buyer(REGULAR, coupon_orders=3)) == "mercenary"  # 3 of 5 with a coupon


def test_mercenary_comes_first_and_needs_enough_orders() -> None:
    assert kind(buyer(REGULAR, views=20, coupon_orders=3)) == "mercenary"
    assert kind(buyer([10], coupon_orders=1)) == "not_loyal"  # one order: too few to judge
    assert kind(buyer([30, 10], coupon_orders=1)) == "mercenary"  # half of two orders


def test_committed_buys_mostly_at_full_price_and_recently() -> None:
    # 2 of 5 with a coupon: above committed_max_share, below mercenary_share -> habitual
    assert kind(buyer(REGULAR, views=20, coupon_orders=2)) == "habitual"
    lapsed_regular = buyer([d + 200 for d in REGULAR], views=20)
    assert kind(lapsed_regular) == "latent"  # no longer buys, still browses


# --- scores --------------------------------------------------------------------------


def test_scores_are_quantiles_over_the_customers() -> None:
    breaks = breakpoints(list(range(1, 101)))
    assert breaks == (20, 40, 60, 80)
    assert [score(v, breaks) for v in (1, 20, 21, 50, 100)] == [1, 1, 2, 3, 5]
    assert [score(v, breaks, lower_is_better=True) for v in (1, 21, 100)] == [5, 4, 1]
    assert score(5, ()) is None


def test_the_builder_learns_the_typical_interval_and_breakpoints() -> None:
    builder = ThresholdBuilder(RULES, NOW)
    for n in range(1, 11):
        builder.add(buyer([10 * k for k in range(1, n + 1)], monetary=Decimal(n), currency="EUR"))
    builder.add(Figures(user_id="browser", views=5))  # not a customer
    shop = builder.build()
    assert builder.customers == 10
    assert shop.typical_interval_days == 10.0  # every customer with 3+ orders buys every 10 days
    assert shop.frequency == (2, 4, 6, 8)
    assert shop.monetary["EUR"] == (Decimal(2), Decimal(4), Decimal(6), Decimal(8))
    best = segment(
        buyer([10 * k for k in range(1, 11)], monetary=Decimal(10), currency="EUR"),
        NOW,
        shop,
        RULES,
    )
    assert (best.r_score, best.f_score, best.m_score) == (5, 5, 5)
    assert ShopThresholds.from_json(shop.as_json()) == shop


# --- on the database: bulk and one user agree -------------------------------------------


def purchase(user: str, at: datetime, order: str, price: str = "10.00", qty: int = 1) -> NewEvent:
    return NewEvent(
        user_id=user,
        type="purchase",
        ts=at,
        item_id="i1",
        order_id=order,
        quantity=qty,
        price=Decimal(price),
        currency="EUR",
    )


def view(user: str, at: datetime) -> NewEvent:
    return NewEvent(user_id=user, type="view", ts=at, item_id="i1")


def seed(repository: Repository) -> None:
    """Five customers, one per kind of history, and a browser."""
    evs: list[NewEvent] = []
    for k in range(1, 6):  # regular, weekly, two lines in one order each time
        evs += [
            purchase("regular", days(7 * k), f"r{k}"),
            purchase("regular", days(7 * k), f"r{k}"),
        ]
    for k in range(1, 13):
        evs.append(view("regular", days(k)))
    for k in range(4):
        evs.append(purchase("gone", days(300 + 20 * k), f"g{k}"))
    for d in (400, 380, 360, 5):
        evs.append(purchase("back", days(d), f"b{d}"))
    evs.append(purchase("first", days(3), "f1", price="99.99", qty=3))
    for k in range(3):
        evs.append(purchase("bargain", days(10 + 10 * k), f"c{k}"))
    for k in range(15):
        evs.append(view("browser", days(k % 10)))
    evs.append(view("future", NOW + timedelta(days=5)))  # after the moment: not counted
    repository.add_events(evs)
    with repository.writing() as conn:
        for k in range(2):  # two of bargain's three orders redeemed a coupon
            conn.execute(
                coupons.insert().values(
                    code=f"CODE{k}",
                    campaign_id="c",
                    user_id="bargain",
                    attribution_id=f"a{k}",
                    discount_percent=10.0,
                    issued_at=days(40),
                    expires_at=days(1),
                    redeemed_at=days(10 + 10 * k),
                    order_id=f"c{k}",
                )
            )


@pytest.fixture
def shop(database_url: str) -> Any:
    engine = make_engine(database_url)
    migrate(engine)
    repository = Repository(engine, lambda: NOW)
    seed(repository)
    yield Segments(SegmentRepository(repository), RULES, lambda: NOW), engine
    engine.dispose()


def rows(engine: Any) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {
            r.user_id: dict(r._mapping)
            for r in conn.execute(select(user_segments).order_by(user_segments.c.user_id))
        }


def test_bulk_run_segments_each_history_on_both_databases(shop: Any) -> None:
    segments, engine = shop
    summary = segments.run()
    assert summary.users == 6
    assert summary.customers == 5
    got = rows(engine)
    assert {u: (r["lifecycle_stage"], r["loyalty_type"]) for u, r in got.items()} == {
        "regular": ("active", "committed"),
        "gone": ("lapsed", "not_loyal"),
        "back": ("returning", "not_loyal"),
        "first": ("new", "not_loyal"),
        "bargain": ("new", "mercenary"),
        "browser": ("new", "latent"),
    }
    regular = got["regular"]
    assert regular["orders"] == 5  # two purchase lines per order: orders, not lines
    assert regular["monetary"] == Decimal("100.0000")  # exact money
    # 12 days with views, and 3 more with purchases inside the 30-day window
    assert regular["views"] == 12
    assert regular["active_days"] == 15
    assert got["first"]["monetary"] == Decimal("299.9700")
    assert got["bargain"]["coupon_orders"] == 2
    assert got["browser"]["r_score"] is None
    assert got["browser"]["views"] == 15
    assert got["browser"]["active_days"] == 10
    counts = segments.counts()
    assert counts.per_stage()["new"] == 3
    assert counts.per_type()["mercenary"] == 1
    assert counts.last_run is not None
    assert counts.last_run["users"] == 6


def test_one_users_refresh_agrees_with_the_bulk_run(shop: Any) -> None:
    segments, engine = shop
    segments.run()
    bulk = rows(engine)
    with engine.begin() as conn:
        conn.execute(user_segments.delete())
    for user in bulk:
        assert segments.compute(user, require_run=True) is not None
    assert rows(engine) == bulk


def test_an_older_snapshot_never_replaces_a_newer_row(shop: Any) -> None:
    segments, engine = shop
    segments.run()
    segments.clock = lambda: NOW + timedelta(days=200)
    segments.compute("regular")
    assert rows(engine)["regular"]["lifecycle_stage"] == "lapsed"
    segments.clock = lambda: NOW
    segments.run()  # as of NOW: older than the refresh, so that row stays
    assert rows(engine)["regular"]["lifecycle_stage"] == "lapsed"
    assert rows(engine)["gone"]["lifecycle_stage"] == "lapsed"


def test_nothing_is_refreshed_before_the_first_bulk_run(shop: Any) -> None:
    segments, engine = shop
    assert segments.compute("regular", require_run=True) is None
    assert rows(engine) == {}


# --- the API ---------------------------------------------------------------------------


def client(tmp_path: Path, database_url: str, clock: Any = lambda: NOW) -> TestClient:
    settings = Settings(
        model_dir=tmp_path / "models",
        database_url=database_url,
        marketing_keys=[MARKETING],
        frontend_keys=[FRONTEND],
        admin_keys=[ADMIN],
        reload_interval_seconds=0,
        event_poll_seconds=0.05,
        offer_metrics_seconds=0,
        access_log=False,
    )
    return TestClient(create_app(settings, clock=clock))


M = {"X-API-Key": MARKETING}


def test_profile_and_counts_through_the_api(tmp_path: Path, database_url: str) -> None:
    with client(tmp_path, database_url) as c:
        seed(c.app.state.recoffer.repository)  # type: ignore[attr-defined]
        # no row yet: computed on the fly, with the default interval (no run: no scores)
        r = c.get("/v1/users/regular/profile", headers=M)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["lifecycle_stage"], body["loyalty_type"]) == ("active", "committed")
        assert body["r_score"] is None
        assert body["orders"] == 5
        assert body["frequency"] == 5
        assert body["monetary"] == "100.0000"
        assert body["currency"] == "EUR"

        c.app.state.recoffer.segments.run()  # type: ignore[attr-defined]
        body = c.get("/v1/users/bargain/profile", headers=M).json()
        assert body["loyalty_type"] == "mercenary"
        assert body["coupon_share"] == pytest.approx(2 / 3, abs=1e-3)
        assert body["r_score"] in range(1, 6)

        r = c.get("/v1/users/nobody/profile", headers=M)
        assert r.status_code == 404
        assert r.json()["error"] == "unknown_user"
        r = c.put("/v1/users/signed", json={"attributes": {}}, headers={"X-API-Key": FRONTEND})
        assert r.status_code == 200
        body = c.get("/v1/users/signed/profile", headers=M).json()
        assert (body["lifecycle_stage"], body["loyalty_type"]) == ("new", "not_loyal")

        r = c.get("/v1/users/regular/profile", headers={"X-API-Key": FRONTEND})
        assert r.status_code == 403
        seg = c.get("/v1/segments", headers=M).json()
        assert seg["users"] == 7
        assert seg["stages"]["returning"] == 1
        assert seg["loyalty_types"]["latent"] == 1
        assert seg["matrix"]["new"]["mercenary"] == 1
        # the median of the rhythms of regular 7, bargain 10, gone 20 and back 131.7 days
        assert seg["typical_interval_days"] == pytest.approx(15.0)
        assert seg["last_run_as_of"].startswith("2026-06-01")


def test_a_purchase_refreshes_the_users_row_after_a_bulk_run(
    tmp_path: Path, database_url: str
) -> None:
    with client(tmp_path, database_url) as c:
        state = c.app.state.recoffer  # type: ignore[attr-defined]
        seed(state.repository)
        state.segments.run()
        assert c.get("/v1/users/gone/profile", headers=M).json()["lifecycle_stage"] == "lapsed"
        event = {
            "user_id": "gone",
            "type": "purchase",
            "item_id": "i1",
            "order_id": "again",
            "quantity": 1,
            "price": "5.00",
            "currency": "EUR",
            "timestamp": (NOW - timedelta(hours=1)).isoformat(),
        }
        assert c.post("/v1/events", json=event, headers={"X-API-Key": FRONTEND}).status_code == 200
        c.portal.call(state.segment_refresher.drain)  # type: ignore[union-attr]
        body = c.get("/v1/users/gone/profile", headers=M).json()
        assert (body["lifecycle_stage"], body["orders"]) == ("returning", 5)


def test_export_carries_the_segment_row_and_erasure_deletes_it(
    tmp_path: Path, database_url: str
) -> None:
    with client(tmp_path, database_url) as c:
        state = c.app.state.recoffer  # type: ignore[attr-defined]
        seed(state.repository)
        state.segments.run()
        a = {"X-API-Key": ADMIN}
        exported = c.get("/v1/users/regular/export", headers=a).json()
        assert exported["tables"]["user_segments"][0]["loyalty_type"] == "committed"
        r = c.delete("/v1/users/regular", headers=a)
        assert r.json()["removed"]["user_segments"] == 1
        assert c.get("/v1/users/regular/profile", headers=M).status_code == 404


def test_parallel_refreshes_and_a_bulk_run_leave_one_row_per_user(shop: Any) -> None:
    segments, engine = shop
    segments.run()
    users = ["regular", "gone", "back", "first", "bargain", "browser"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = [pool.submit(segments.compute, u) for u in users * 5]
        jobs.append(pool.submit(segments.run))
        for job in jobs:
            job.result()  # no conflict, no lock error
    got = rows(engine)
    assert sorted(got) == sorted(users)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(user_segments)).scalar_one() == 6
    assert got["bargain"]["loyalty_type"] == "mercenary"


class _Recorder:
    """Stands in for ``Segments``: records whom it computed."""

    def __init__(self, settings: SegmentSettings) -> None:
        self.settings = settings
        self.computed: list[str] = []

    def compute(self, user_id: str, *, require_run: bool = False) -> None:
        self.computed.append(user_id)
        if user_id == "broken":
            raise RuntimeError("database gone")


def test_the_refresher_throttles_views_and_survives_failures() -> None:
    recorder = _Recorder(SegmentSettings(refresh_view_seconds=300))

    async def scenario() -> list[int]:
        refresher = SegmentRefresher(recorder)  # type: ignore[arg-type]
        counts = [refresher.on_events([("a", "view"), ("b", "purchase"), ("c", "add_to_cart")])]
        await refresher.drain()
        counts.append(refresher.on_events([("a", "view"), ("b", "purchase"), ("broken", "view")]))
        await refresher.drain()  # the failure is logged, not raised
        return counts

    assert asyncio.run(scenario()) == [2, 2]  # a's second view within 300 s: skipped
    assert sorted(recorder.computed) == ["a", "b", "b", "broken"]
