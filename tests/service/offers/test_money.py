"""Money (issue 12, item 3): fixed and percent discounts, the minimum order and the coupon's
currency, money budgets counted from the discount given (also under concurrency), and the
revenue stats with their interval. On SQLite and on PostgreSQL."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from benchmarks.harness import ManualClock as Clock
from benchmarks.harness import all_at_once
from service.activity.records import NewEvent
from service.activity.repository import Repository
from service.db import make_engine, migrate
from service.errors import (
    BelowMinimumOrder,
    CampaignConfigError,
    CouponCurrencyMismatch,
    OrderAmountRequired,
)
from service.metrics import Metrics
from service.offers.campaigns import Campaign, load_campaigns
from service.offers.coupons import Coupons
from service.offers.decisions import OfferEngine
from service.offers.reports import Reports
from service.offers.repository import OfferRepository
from service.offers.rules import in_holdout
from service.offers.stats import Z95
from service.tables import campaign_spend, coupon_ledger, coupons

from .test_api import F, M, campaigns_file, evaluate, make_client, sign_up, treated_users
from .test_concurrency import NOW

CAMPAIGN = "new_user_high_intent"
FIXED = {"fixed_discount": "10.00", "currency": "EUR", "holdout_percent": 0}


class Shop:
    """An offer engine, coupons and reports on one database, with a clock the test moves."""

    def __init__(self, url: str, campaign: Campaign, pool_size: int = 5) -> None:
        self.clock = Clock(NOW)
        self.campaign = campaign
        self.engine = make_engine(url, timeout_seconds=30, pool_size=pool_size)
        migrate(self.engine)
        self.base = Repository(self.engine, self.clock)
        repository = OfferRepository(self.base)
        self.offers = OfferEngine({campaign.campaign_id: campaign}, repository, self.clock)
        self.coupons = Coupons(repository, self.clock)
        self.metrics = Metrics()
        self.reports = Reports(
            {campaign.campaign_id: campaign}, repository, self.clock, metrics=self.metrics
        )

    def hesitating(self, user_id: str) -> None:
        """A user who signed up two hours ago and viewed 11 products since."""
        start = self.clock() - timedelta(hours=2)
        self.base.upsert_user(user_id, signed_up_at=start)
        self.base.add_events(
            [
                NewEvent(user_id, "view", start + timedelta(minutes=n + 1), item_id=f"i{n}")
                for n in range(11)
            ]
        )

    def issue(self, user_id: str) -> str:
        self.hesitating(user_id)
        decision = self.offers.evaluate(user_id, self.campaign.campaign_id)
        assert decision.coupon is not None, decision
        return decision.coupon.code

    def spent(self) -> dict[tuple[str, str], Decimal]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(campaign_spend)).all()
        return {(r.period, r.currency): r.spent for r in rows}

    def ledger_discount(self) -> Decimal:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(coupon_ledger.c.action, coupon_ledger.c.discount_amount)
            ).all()
        return sum((d if a == "redeem" else -d for a, d in rows if d is not None), Decimal(0))


@pytest.fixture
def fixed(database_url: str) -> Iterator[Shop]:
    shop = Shop(database_url, Campaign(**FIXED, min_order_amount=Decimal("20.00")))
    yield shop
    shop.engine.dispose()


# --- the campaign's money fields ----------------------------------------------------------


def test_money_fields_need_their_currency_and_are_never_floats() -> None:
    assert Campaign().discount_kind == "percent"  # a file of before means what it meant
    assert Campaign(discount_percent=15).fixed_discount is None
    fixed = Campaign(fixed_discount="5.00", currency="EUR")
    assert (fixed.discount_kind, fixed.fixed_discount) == ("fixed", Decimal("5.00"))
    assert fixed.public()["fixed_discount"] == "5.00"  # exact in the API too
    assert "discount_percent" not in fixed.public()  # its default is no second discount
    with pytest.raises(ValidationError, match="needs currency"):
        Campaign(fixed_discount=Decimal(5))
    with pytest.raises(ValidationError, match="needs currency"):
        Campaign(max_discount_total=Decimal(100))
    with pytest.raises(ValidationError, match="not both"):
        Campaign(discount_percent=10, fixed_discount=Decimal(5), currency="EUR")
    with pytest.raises(ValidationError, match="money is exact"):
        Campaign(fixed_discount=5.5, currency="EUR")
    with pytest.raises(ValidationError, match="decimal places"):
        Campaign(min_order_amount=Decimal("1.00001"), currency="EUR")


def test_the_campaigns_file_takes_money_as_strings(tmp_path: Path) -> None:
    path = campaigns_file(
        tmp_path,
        "[campaigns.five_off]\n"
        'fixed_discount = "5.00"\ncurrency = "EUR"\nmin_order_amount = 25\n'
        'max_discount_per_day = "200.00"\nmax_discount_total = "1000"\n',
    )
    five = load_campaigns(path)["five_off"]
    assert (five.fixed_discount, five.min_order_amount) == (Decimal("5.00"), Decimal(25))
    assert (five.max_discount_per_day, five.max_discount_total) == (Decimal(200), Decimal(1000))
    path.write_text('[campaigns.five_off]\nfixed_discount = 5.0\ncurrency = "EUR"\n')
    with pytest.raises(CampaignConfigError, match=r"five_off.*fixed_discount.*money is exact"):
        load_campaigns(path)


# --- terms at redemption -------------------------------------------------------------------


def test_a_fixed_discount_is_capped_at_the_order_and_the_minimum_holds(fixed: Shop) -> None:
    code = fixed.issue("u-fixed")
    coupon = fixed.offers.repository.coupons.coupon(code)
    assert coupon is not None
    assert (coupon.discount_kind, coupon.discount_fixed) == ("fixed", Decimal("10.0000"))
    assert (coupon.terms_currency, coupon.min_order_amount) == ("EUR", Decimal("20.0000"))
    # the restricted products' part is 4.00 of a 25.00 order: 10 off capped at 4
    status, _ = fixed.coupons.redeem(
        code, "u-fixed", "o1", Decimal("4.00"), "EUR", order_total=Decimal("25.00")
    )
    assert status.coupon.discount_amount == Decimal("4.0000")
    other = fixed.issue("u-fixed-2")
    status, _ = fixed.coupons.redeem(other, "u-fixed-2", "o2", Decimal("80.00"), "EUR")
    assert status.coupon.discount_amount == Decimal("10.0000")
    assert fixed.spent()[("total", "EUR")] == Decimal("14.0000") == fixed.ledger_discount()


def test_an_order_that_misses_the_terms_is_refused_and_nothing_is_written(fixed: Shop) -> None:
    code = fixed.issue("u-terms")
    refusals = [
        (BelowMinimumOrder, "order_amount", (Decimal("19.99"), "EUR"), {}),
        (BelowMinimumOrder, "order_total", (Decimal("5"), "EUR"), {"order_total": Decimal(19)}),
        (CouponCurrencyMismatch, "currency", (Decimal("50.00"), "GBP"), {}),
        (OrderAmountRequired, "order_amount", (None, None), {}),
    ]
    for error, field, (amount, currency), extra in refusals:
        with pytest.raises(error) as raised:
            fixed.coupons.redeem(
                code, "u-terms", "o1", amount, currency, order_total=extra.get("order_total")
            )
        assert raised.value.field == field
    stored = fixed.offers.repository.coupons.coupon(code)
    assert stored is not None
    assert stored.redeemed_at is None
    assert fixed.offers.repository.coupons.trail(code) == []
    assert fixed.spent() == {}
    # the same coupon then pays for an order that qualifies
    status, replayed = fixed.coupons.redeem(code, "u-terms", "o1", Decimal("20.00"), "EUR")
    assert (status.status, replayed, status.coupon.discount_amount) == (
        "redeemed",
        False,
        Decimal("10.0000"),
    )


def test_a_percent_coupon_without_money_terms_redeems_as_before(database_url: str) -> None:
    shop = Shop(database_url, Campaign(holdout_percent=0))
    try:
        code = shop.issue("u-old")
        status, _ = shop.coupons.redeem(code, "u-old", "o1")  # no amount, as before
        assert status.coupon.discount_amount is None
        assert status.coupon.terms_currency is None
        second = shop.issue("u-old-2")
        status, _ = shop.coupons.redeem(second, "u-old-2", "o2", Decimal("80.00"), "GBP")
        assert status.coupon.discount_amount == Decimal("8.0000")  # 10 % of any currency
        assert shop.spent()[("total", "GBP")] == Decimal("8.0000")
    finally:
        shop.engine.dispose()


# --- money budgets ---------------------------------------------------------------------------


def test_a_money_budget_stops_new_coupons_honours_those_out_and_a_release_gives_back(
    database_url: str,
) -> None:
    shop = Shop(database_url, Campaign(**FIXED, max_discount_total=Decimal(20)))
    try:
        codes = {u: shop.issue(u) for u in ("b1", "b2", "b3")}  # 30 promised, 20 allowed
        for n, (user, code) in enumerate(codes.items()):
            shop.coupons.redeem(code, user, f"o{n}", Decimal(50), "EUR")
        assert shop.spent()[("total", "EUR")] == Decimal(30)  # all three honoured
        shop.hesitating("b4")
        refused = shop.offers.evaluate("b4", CAMPAIGN)
        assert (refused.decision, refused.reasons) == ("budget_exhausted", ("budget_money_total",))
        # two orders cancelled: 10 spent, below the cap again; b4 may still get one
        shop.coupons.release(codes["b1"], "b1", "o0")
        shop.coupons.release(codes["b2"], "b2", "o1")
        assert shop.spent()[("total", "EUR")] == Decimal(10) == shop.ledger_discount()
        assert shop.offers.evaluate("b4", CAMPAIGN).decision == "issued"
        budget = shop.reports.stats(CAMPAIGN).budget_money
        assert budget is not None
        assert (budget.spent_total, budget.left_total) == (Decimal(10), Decimal(10))
    finally:
        shop.engine.dispose()


def test_a_daily_money_budget_opens_again_the_next_utc_day(database_url: str) -> None:
    shop = Shop(database_url, Campaign(**FIXED, max_discount_per_day=Decimal(10)))
    try:
        shop.coupons.redeem(shop.issue("d1"), "d1", "o1", Decimal(30), "EUR")
        shop.hesitating("d2")
        refused = shop.offers.evaluate("d2", CAMPAIGN)
        assert refused.reasons == ("budget_money_day",)
        shop.clock.advance(days=1)
        shop.hesitating("d3")  # d2's first day is over; a new user of the new day
        assert shop.offers.evaluate("d3", CAMPAIGN).decision == "issued"
        today = shop.reports.stats(CAMPAIGN).budget_money
        assert today is not None
        assert (today.spent_today, today.left_today, today.spent_total) == (
            Decimal(0),
            Decimal(10),
            Decimal(10),
        )
    finally:
        shop.engine.dispose()


def test_a_sweep_stops_at_the_money_budget(database_url: str) -> None:
    shop = Shop(database_url, Campaign(**FIXED, max_discount_total=Decimal(10)))
    try:
        shop.coupons.redeem(shop.issue("s0"), "s0", "o0", Decimal(30), "EUR")
        for n in range(1, 6):
            shop.hesitating(f"s{n}")
        result = shop.offers.sweep(CAMPAIGN)
        assert result.decisions == Counter({"budget_exhausted": 5})
        with shop.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(coupons)).scalar_one() == 1
    finally:
        shop.engine.dispose()


def test_parallel_redemptions_count_every_discount_exactly(database_url: str) -> None:
    shop = Shop(database_url, Campaign(**FIXED, max_discount_total=Decimal(50)), pool_size=25)
    try:
        users = [f"p{n}" for n in range(12)]
        codes = [shop.issue(u) for u in users]  # 120 promised while nothing was spent
        amounts = [Decimal(f"{7 + n}.25") for n in range(12)]  # 7.25 .. 18.25: some capped
        results = all_at_once(
            24,
            lambda i: shop.coupons.redeem(
                codes[i % 12], users[i % 12], f"o{i % 12}", amounts[i % 12], "EUR"
            ),
        )
        assert not [r for r in results if isinstance(r, BaseException)]  # 12 + 12 replays
        expected = sum((min(a, Decimal(10)) for a in amounts), Decimal(0))
        assert shop.spent()[("total", "EUR")] == expected == shop.ledger_discount()
        assert shop.spent()[(NOW.date().isoformat(), "EUR")] == expected
        all_at_once(
            8,
            lambda i: (
                shop.coupons.release(codes[i % 4], users[i % 4], f"o{i % 4}")
                if i < 4
                else shop.coupons.redeem(codes[i], users[i], f"o{i}", amounts[i], "EUR")
            ),
        )
        back = sum((min(a, Decimal(10)) for a in amounts[:4]), Decimal(0))
        assert shop.spent()[("total", "EUR")] == expected - back == shop.ledger_discount()
        late = [f"late{n}" for n in range(10)]
        for user in late:
            shop.hesitating(user)
        decided = all_at_once(10, lambda i: shop.offers.evaluate(late[i], CAMPAIGN))
        assert {d.decision for d in decided if not isinstance(d, BaseException)} == {
            "budget_exhausted"
        }
        assert len([d for d in decided if not isinstance(d, BaseException)]) == 10
    finally:
        shop.engine.dispose()


def test_racing_issues_and_redemptions_overspend_only_by_the_coupons_out(
    database_url: str,
) -> None:
    """Each thread issues a coupon and redeems it at once, so it holds at most one coupon
    out: once a redemption reaches the cap, at most the other threads' coupons are still to
    be honoured, and nothing issued after the cap was seen."""
    threads, cap, amount = 20, Decimal(50), Decimal(10)
    shop = Shop(database_url, Campaign(**FIXED, max_discount_total=cap), pool_size=25)
    try:
        users = [f"r{n}" for n in range(threads)]
        for user in users:
            shop.hesitating(user)

        def issue_and_redeem(i: int) -> str:
            decision = shop.offers.evaluate(users[i], CAMPAIGN)
            if decision.coupon is None:
                return decision.decision
            shop.coupons.redeem(decision.coupon.code, users[i], f"o{i}", Decimal(99), "EUR")
            return "redeemed"

        results = all_at_once(threads, issue_and_redeem)
        outcome = Counter(r if isinstance(r, str) else repr(r) for r in results)
        assert set(outcome) <= {"redeemed", "budget_exhausted"}, outcome
        spent = shop.spent()[("total", "EUR")]
        assert spent == amount * outcome["redeemed"] == shop.ledger_discount()
        assert cap <= spent <= cap + amount * (threads - 1)
        shop.hesitating("after")
        assert shop.offers.evaluate("after", CAMPAIGN).reasons == ("budget_money_total",)
    finally:
        shop.engine.dispose()


# --- revenue stats -----------------------------------------------------------------------------


def _welch(treated: list[Fraction], holdout: list[Fraction]) -> tuple[float, float, float]:
    """The difference of means and its Welch normal 95 % interval, computed independently."""

    def mean_var(xs: list[Fraction]) -> tuple[Fraction, Fraction]:
        m = sum(xs, Fraction(0)) / len(xs)
        return m, sum(((x - m) ** 2 for x in xs), Fraction(0)) / (len(xs) - 1)

    (mt, vt), (mh, vh) = mean_var(treated), mean_var(holdout)
    half = Z95 * math.sqrt(vt / len(treated) + vh / len(holdout))
    d = float(mt - mh)
    return d, d - half, d + half


def _close(value: Decimal | None, expected: float) -> bool:
    return value is not None and abs(float(value) - expected) <= 0.0001


def test_revenue_per_user_and_the_incremental_revenue_net_of_the_discount(
    database_url: str,
) -> None:
    shop = Shop(database_url, Campaign(holdout_percent=50))
    try:
        people = [f"rev{n}" for n in range(40)]
        treated = [u for u in people if not in_holdout(CAMPAIGN, u, 50)][:4]
        holdout = [u for u in people if in_holdout(CAMPAIGN, u, 50)][:3]
        codes = {u: shop.issue(u) for u in treated}
        for user in holdout:
            shop.hesitating(user)
            assert shop.offers.evaluate(user, CAMPAIGN).decision == "holdout"
        shop.clock.advance(hours=2)
        at = NOW + timedelta(hours=1)

        def buy(user: str, price: str, quantity: int, currency: str = "EUR", **kw: Any) -> None:
            event = NewEvent(
                user,
                "purchase",
                kw.get("ts", at),
                item_id="i1",
                order_id=f"{user}-o",
                quantity=quantity,
                price=Decimal(price),
                currency=currency,
            )
            shop.base.add_events([event])

        buy(treated[0], "15.00", 2)  # 30.00
        buy(treated[1], "12.50", 1)
        buy(treated[1], "3.00", 1, "GBP")  # another currency: its own figures
        buy(holdout[0], "10.00", 1)
        buy(holdout[1], "99.00", 1, ts=NOW + timedelta(hours=30))  # after the window
        shop.base.add_events([NewEvent(holdout[2], "purchase", at, item_id="i2")])  # no price
        shop.coupons.redeem(codes[treated[0]], treated[0], "o", Decimal("30.00"), "EUR")
        shop.clock.advance(days=2)

        stats = shop.reports.stats(CAMPAIGN)
        eur = stats.revenue["EUR"]
        t = [Fraction(30), Fraction(25, 2), Fraction(0), Fraction(0)]
        h = [Fraction(10), Fraction(0), Fraction(0)]
        d, low, high = _welch(t, h)
        assert (eur.treated_users, eur.holdout_users) == (4, 3)
        assert (eur.treated_revenue, eur.holdout_revenue) == (Decimal("42.5"), Decimal(10))
        assert eur.treated_per_user == Decimal("10.6250")
        assert eur.holdout_per_user == Decimal("3.3333")
        interval = eur.difference_per_user
        assert interval is not None
        assert _close(interval.estimate, d)
        assert _close(interval.low, low)
        assert _close(interval.high, high)
        assert eur.incremental is not None
        assert _close(eur.incremental.low, 4 * low)
        assert eur.discount_cost == Decimal(3)  # 10 % of the 30.00 redeemed
        net = eur.net_incremental
        assert net is not None
        assert _close(net.estimate, 4 * d - 3)
        assert _close(net.low, 4 * low - 3)
        assert _close(net.high, 4 * high - 3)
        gbp = stats.revenue["GBP"]
        assert (gbp.treated_revenue, gbp.holdout_revenue) == (Decimal(3), Decimal(0))
        assert gbp.discount_cost == Decimal(0)
        assert stats.unpriced_purchases == 1
        assert stats.discount_given["total"] == {"EUR": Decimal(3)}
        assert stats.uplift is not None  # the conversion uplift stays beside it
    finally:
        shop.engine.dispose()


def test_money_gauges_report_the_discount_given_and_the_budget_left(database_url: str) -> None:
    shop = Shop(database_url, Campaign(**FIXED, max_discount_total=Decimal(25)))
    try:
        shop.coupons.redeem(shop.issue("g1"), "g1", "o1", Decimal(30), "EUR")
        shop.reports.refresh_gauges()
        text = shop.metrics.render().decode()
        labels = f'campaign="{CAMPAIGN}",currency="EUR",period="total"'
        assert f"recoffer_campaign_discount_given{{{labels}}} 10.0" in text
        assert f"recoffer_campaign_budget_money_left{{{labels}}} 15.0" in text
    finally:
        shop.engine.dispose()


# --- over HTTP ---------------------------------------------------------------------------------


def test_the_api_refuses_orders_that_miss_the_terms_and_reports_the_money(
    small_model_root: Path, database_url: str, tmp_path: Path
) -> None:
    path = campaigns_file(
        tmp_path,
        f"[campaigns.{CAMPAIGN}]\n"
        'fixed_discount = "5.00"\ncurrency = "EUR"\nmin_order_amount = "20.00"\n'
        'max_discount_total = "100.00"\n',
    )
    with make_client(small_model_root, database_url, Clock(NOW), campaigns_file=path) as c:
        user = treated_users("api-money-", 1)[0]
        sign_up(c, user, ago=timedelta(hours=1), views=11)
        coupon = evaluate(c, user)["coupon"]
        assert (coupon["discount_kind"], coupon["fixed_discount"]) == ("fixed", "5.0000")
        assert (coupon["currency"], coupon["min_order_amount"]) == ("EUR", "20.0000")
        url = f"/v1/coupons/{coupon['code']}/redeem"
        order = {"user_id": user, "order_id": "o1"}
        for body, code, field in [
            ({"order_amount": "19.99", "currency": "EUR"}, "below_minimum_order", "order_amount"),
            ({"order_amount": "50.00", "currency": "USD"}, "coupon_currency_mismatch", "currency"),
            ({}, "order_amount_required", "order_amount"),
        ]:
            r = c.post(url, json={**order, **body}, headers=F)
            assert (r.status_code, r.json()["error"]) == (422, code), r.text
            assert r.json()["detail"][0]["field"] == field
        r = c.post(
            url,
            json={**order, "order_amount": "3.00", "currency": "EUR", "order_total": "21.00"},
            headers=F,
        )
        assert r.status_code == 200, r.text
        assert r.json()["discount_amount"] == "3.0000"  # the fixed 5.00, capped at 3.00
        stats = c.get(f"/v1/campaigns/{CAMPAIGN}/stats", headers=M).json()
        assert stats["budget_money"]["spent_total"] == "3.0000"
        assert stats["budget_money"]["left_total"] == "97.0000"
        assert stats["discount_given"]["total"] == {"EUR": "3.0000"}
        eur = stats["revenue"]["EUR"]  # no purchase yet: the cost alone, no interval
        assert (eur["treated_revenue"], eur["discount_cost"]) == ("0.0000", "3.0000")
        assert eur["net_incremental"] is None
        assert stats["conversion"]["treated"] is not None
