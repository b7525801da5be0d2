"""tally(), the online figures and GET /v1/analytics/recommendations (issue 14, item 2)."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal

import pytest

from service.feedback.figures import tally
from service.feedback.online import revenue_rate
from service.offers.stats import wilson

from .shop import A, F, M, Shop, click, impression, purchase


def seed(shop: Shop) -> None:
    """Two versions; v1: 4 impressions (2 model, 2 popular) on home, 2 clicked, one bought
    twice in two currencies, one carted; v2: 2 impressions on cart, none clicked."""
    a = shop.list_id("u1", ("model", "model", "popular", "popular"), version="v1")
    shop.post(*[impression("u1", f"i{p}", a, p) for p in range(4)])
    shop.post(click("u1", "i0", a), click("u1", "i2", a), click("u1", "i9", a))  # i9: not shown
    shop.post(
        purchase("u1", "i0", quantity=2, price="10.00", currency="EUR"),
        purchase("u1", "i0", price="3.0000", currency="GBP", order_id="o2"),
        {"type": "add_to_cart", "user_id": "u1", "item_id": "i2"},
    )
    b = shop.list_id("u2", ("model", "model"), version="v2", recipe="novel")
    shop.post(*[impression("u2", f"i{p}", b, p, placement="cart") for p in range(2)])


def test_tally_counts_per_impression_and_each_conversion_once(shop: Shop) -> None:
    seed(shop)
    with shop.engine.connect() as conn:
        groups = {t.key: t for t in tally(conn, ("model_version", "source"))}
        everything = tally(conn)
        by_placement = {t.key: t for t in tally(conn, ("placement",))}
    assert set(groups) == {("v1", "model"), ("v1", "popular"), ("v2", "model")}
    model = groups[("v1", "model")]
    assert (model.impressions, model.users, model.clicks, model.carts, model.purchases) == (
        2,
        1,
        1,
        0,
        1,  # one impression bought, in two currencies: one purchase
    )
    assert model.revenue == {"EUR": Decimal("20.0000"), "GBP": Decimal("3.0000")}
    assert model.revenue_squares == pytest.approx({"EUR": 400.0, "GBP": 9.0})
    popular = groups[("v1", "popular")]
    assert (popular.impressions, popular.clicks, popular.carts, popular.purchases) == (2, 1, 1, 0)
    assert popular.revenue == {}
    assert (groups[("v2", "model")].impressions, groups[("v2", "model")].clicks) == (2, 0)
    [total] = everything
    assert (total.key, total.impressions, total.users, total.clicks) == ((), 6, 2, 2)
    assert by_placement[("cart",)].impressions == 2
    assert by_placement[("home",)].impressions == 4
    with shop.engine.connect() as conn, pytest.raises(ValueError, match="cannot group by"):
        tally(conn, ("user_id",))


def test_tally_filters_by_time_and_experiment(shop: Shop) -> None:
    early = shop.list_id("u1", ("model",), experiment_id="e1", arm="candidate")
    shop.post(impression("u1", "a", early, 0))
    middle = shop.later(hours=2)
    late = shop.list_id("u1", ("model",))
    shop.post(impression("u1", "b", late, 0))
    with shop.engine.connect() as conn:
        assert [t.impressions for t in tally(conn, since=middle)] == [1]
        assert [t.impressions for t in tally(conn, until=middle)] == [1]
        arms = tally(conn, ("arm",), experiment_id="e1")
    assert [(t.key, t.impressions) for t in arms] == [(("candidate",), 1)]


def test_revenue_per_thousand_is_exact_with_a_normal_interval() -> None:
    per_impression = [Decimal("10.00"), Decimal(0), Decimal(0), Decimal("2.50")] + [Decimal(0)] * 6
    total = sum(per_impression, Decimal(0))
    squares = sum(float(x) ** 2 for x in per_impression)
    rate = revenue_rate("EUR", total, squares, len(per_impression))
    assert rate.per_thousand == Decimal("1250.0000")
    sd = statistics.stdev(float(x) for x in per_impression)
    half = 1.959963984540054 * sd / math.sqrt(10) * 1000
    assert float(rate.high) == pytest.approx(1250 + half, abs=1e-3)
    assert rate.low == Decimal(0)  # 1250 - 2430 clipped: revenue is never negative
    third = revenue_rate("EUR", Decimal("1"), 1.0, 3)
    assert third.per_thousand == Decimal("333.3333")


def test_the_api_gives_rates_with_intervals_for_marketing_and_admin(shop: Shop) -> None:
    seed(shop)
    url = "/v1/analytics/recommendations"
    r = shop.client.get(url, params={"by": "model_version,source"}, headers=M)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["by"] == ["model_version", "source"]
    rows = {(g["group"]["model_version"], g["group"]["source"]): g for g in body["groups"]}
    model = rows[("v1", "model")]
    expected = wilson(1, 2)
    assert expected is not None
    assert model["ctr"] == pytest.approx(
        {"estimate": 0.5, "low": expected.low, "high": expected.high}
    )
    assert model["conversion"]["estimate"] == 0.5
    assert model["add_to_cart_rate"]["estimate"] == 0
    eur = {x["currency"]: x for x in model["revenue"]}["EUR"]
    assert eur["revenue"] == "20.0000"
    assert eur["per_1000_impressions"]["estimate"] == "10000.0000"
    default = shop.client.get(url, headers=A).json()
    assert default["by"] == ["model_version", "recipe", "source", "placement"]
    assert {g["group"]["recipe"] for g in default["groups"]} == {"all", "novel"}
    assert shop.client.get(url, headers=F).status_code == 403
    assert shop.client.get(url).status_code == 401
    for params, field in (
        ({"by": "model_version,user_id"}, "by"),
        ({"by": "arm,arm"}, "by"),
        ({"since": "2026-11-03T00:00:00Z", "until": "2026-11-02T00:00:00Z"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"until": "0001-01-01T00:00:00+05:00"}, "until"),  # before year 1 once in UTC
    ):
        bad = shop.client.get(url, params=params, headers=M)
        assert bad.status_code == 422, (params, bad.text)
        assert bad.json()["detail"][0]["field"] == field
    window = shop.client.get(
        url, params={"by": "", "since": "2026-12-01T00:00:00"}, headers=M
    ).json()
    assert window["since"].startswith("2026-12-01T00:00:00")
    assert [g["impressions"] for g in window["groups"]] == [0]


def test_ingest_counts_on_metrics(shop: Shop) -> None:
    seed(shop)
    text = shop.client.get("/metrics").text
    assert 'recoffer_rec_impressions_total{source="model"} 4.0' in text
    assert 'recoffer_rec_impressions_total{source="popular"} 2.0' in text
    assert 'recoffer_rec_clicks_total{source="unknown"} 1.0' in text  # i9, never shown
    assert 'recoffer_rec_attributed_total{kind="purchase",via="click"} 2.0' in text
    assert 'recoffer_rec_attributed_total{kind="add_to_cart",via="click"} 1.0' in text
