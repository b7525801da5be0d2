"""tally(), the online figures and GET /v1/analytics/recommendations (issue 14, item 2)."""

from __future__ import annotations

import math
import random
import statistics
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, insert

from service.feedback.figures import tally
from service.feedback.online import revenue_rate
from service.feedback.repository import impression_row
from service.feedback.token import LETTER_SOURCES, SOURCE_LETTERS
from service.offers.stats import wilson
from service.tables import rec_attributions, rec_clicks, rec_impressions

from .shop import START, A, F, M, Shop, click, impression, purchase


def seed(shop: Shop) -> None:
    """Two versions; v1: 4 impressions (2 model, 2 popular) on home, 2 clicked, one bought
    twice in two currencies, one carted; v2: 2 impressions on cart, none clicked."""
    a = shop.list_id("u1", ("model", "model", "popular", "popular"), version="v1")
    shop.post(impression("u1", [f"i{p}" for p in range(4)], a))
    shop.post(click("u1", "i0", a), click("u1", "i2", a), click("u1", "i9", a))  # i9: not shown
    shop.post(
        purchase("u1", "i0", quantity=2, price="10.00", currency="EUR"),
        purchase("u1", "i0", price="3.0000", currency="GBP", order_id="o2"),
        {"type": "add_to_cart", "user_id": "u1", "item_id": "i2"},
    )
    b = shop.list_id("u2", ("model", "model"), version="v2", recipe="novel")
    shop.post(impression("u2", ["i0", "i1"], b, placement="cart"))


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
    shop.post(impression("u1", ["a"], early))
    middle = shop.later(hours=2)
    late = shop.list_id("u1", ("model",))
    shop.post(impression("u1", ["b"], late))
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


def test_the_day_series_counts_shown_items_and_their_clicks(shop: Shop) -> None:
    seed(shop)
    feedback = shop.state.feedback
    assert feedback is not None
    assert feedback.daily(None, None) == [("2026-11-02", 6, 2)]  # i9 was never shown


def _random_feedback(rng: random.Random) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
    """Lists shown, clicks and attributions as the tables hold them, at random."""
    lists = []
    for n in range(rng.randint(0, 12)):
        served = rng.randint(1, 6)
        shown = rng.randint(1, served)
        positions = rng.sample(range(served), shown)
        lists.append(
            impression_row(
                f"r{n}",
                f"u{rng.randint(0, 3)}",
                rng.sample(ITEMS, shown),
                [rng.choice(SOURCES) for _ in positions],
                positions=positions,
                ts=START + timedelta(hours=rng.randint(0, 5)),
                placement=rng.choice(("home", "cart")),
                model_version=rng.choice(("v1", "v2", None)),
                experiment_id=rng.choice(("e1", None)),
                arm=rng.choice(("control", "candidate")),
            )
        )
    clicks = []
    attributions = []
    event_id = 0
    for row in lists:
        for item in ITEMS:
            place = row["items"].index(item) if item in row["items"] else None
            source = LETTER_SOURCES[row["sources"][place]] if place is not None else "unknown"
            position = row["positions"][place] if place is not None else None
            common = {
                "request_id": row["request_id"],
                "user_id": row["user_id"],
                "item_id": item,
                "position": position,
                "placement": row["placement"],
                "model_version": row["model_version"],
                "recipe": row["recipe"],
                "source": source,
                "experiment_id": row["experiment_id"],
                "arm": row["arm"],
                "ts": row["ts"],
            }
            if rng.random() < 0.3:
                clicks.append({**common, "served_at": row["ts"], "client_event_id": None})
            for _ in range(rng.choice((0, 0, 1, 2))):
                event_id += 1
                kind = rng.choice(("add_to_cart", "purchase"))
                currency = rng.choice(("EUR", "GBP")) if kind == "purchase" else None
                revenue = Decimal(rng.randint(1, 5000)) / 100 if currency else None
                attributions.append(
                    {
                        **common,
                        "event_id": event_id,
                        "kind": kind,
                        "via": "click",
                        "quantity": 1,
                        "revenue": revenue,
                        "currency": currency,
                    }
                )
    return lists, clicks, attributions


def _expected(
    lists: list[dict[str, Any]],
    clicks: list[dict[str, Any]],
    attributions: list[dict[str, Any]],
    by: tuple[str, ...],
    since: datetime | None,
) -> dict[tuple[str | None, ...], tuple[Any, ...]]:
    """tally() counted in plain Python, per (list, item) shown."""
    inside = {r["request_id"]: r for r in lists if since is None or r["ts"] >= since}

    def key(row: dict[str, Any], source: str) -> tuple[str | None, ...]:
        return tuple(source if d == "source" else row[d] for d in by)

    shown: dict[tuple[str | None, ...], int] = {}
    users: dict[tuple[str | None, ...], set[str]] = {}
    place: dict[tuple[str, str], tuple[str | None, ...]] = {}
    for r in inside.values():
        for item, letter in zip(r["items"], r["sources"], strict=True):
            k = key(r, LETTER_SOURCES[letter])
            shown[k] = shown.get(k, 0) + 1
            users.setdefault(k, set()).add(r["user_id"])
            place[(r["request_id"], item)] = k
    clicked: dict[tuple[str | None, ...], int] = {}
    clickers: dict[tuple[str | None, ...], set[str]] = {}
    for c in clicks:
        k2 = place.get((c["request_id"], c["item_id"]))
        if k2 is not None:
            clicked[k2] = clicked.get(k2, 0) + 1
            clickers.setdefault(k2, set()).add(c["user_id"])
    converted: dict[tuple[tuple[str | None, ...], str], set[tuple[str, str]]] = {}
    revenue: dict[tuple[str | None, ...], dict[str, Decimal]] = {}
    per_pair: dict[tuple[tuple[str | None, ...], str, str, str], Decimal] = {}
    buyers: dict[tuple[str | None, ...], set[str]] = {}
    for a in attributions:
        pair = (a["request_id"], a["item_id"])
        k3 = place.get(pair)
        if k3 is None:
            continue
        converted.setdefault((k3, a["kind"]), set()).add(pair)
        if a["kind"] == "purchase":
            buyers.setdefault(k3, set()).add(a["user_id"])
            cur = revenue.setdefault(k3, {})
            cur[a["currency"]] = cur.get(a["currency"], Decimal(0)) + a["revenue"]
            pk = (k3, *pair, a["currency"])
            per_pair[pk] = per_pair.get(pk, Decimal(0)) + a["revenue"]
    squares: dict[tuple[str | None, ...], dict[str, float]] = {}
    for (k4, _, _, currency), total in per_pair.items():
        sq = squares.setdefault(k4, {})
        sq[currency] = sq.get(currency, 0.0) + float(total) ** 2
    return {
        k: (
            n,
            len(users[k]),
            clicked.get(k, 0),
            len(converted.get((k, "add_to_cart"), ())),
            len(converted.get((k, "purchase"), ())),
            revenue.get(k, {}),
            squares.get(k, {}),
            len(clickers.get(k, ())),
            len(buyers.get(k, ())),
        )
        for k, n in shown.items()
    }


ITEMS = ["a", "b", "c", "d", "e", "f"]
SOURCES = list(SOURCE_LETTERS)
GROUPINGS: list[tuple[str, ...]] = [
    ("source",),
    ("model_version", "source"),
    ("placement", "arm"),
    ("source", "experiment_id", "placement"),
    ("model_version", "recipe", "source", "placement", "experiment_id", "arm"),
]


def test_tally_agrees_with_a_plain_count_over_random_lists(shop: Shop) -> None:
    for seed_ in range(12):
        rng = random.Random(seed_)
        lists, clicks, attributions = _random_feedback(rng)
        with shop.engine.begin() as conn:
            for table in (rec_attributions, rec_clicks, rec_impressions):
                conn.execute(delete(table))
            for table, rows in (
                (rec_impressions, lists),
                (rec_clicks, clicks),
                (rec_attributions, attributions),
            ):
                if rows:
                    conn.execute(insert(table), rows)
        since = rng.choice((None, START + timedelta(hours=2)))
        for by in GROUPINGS:
            with shop.engine.connect() as conn:
                got = tally(conn, by, since=since)
            want = _expected(lists, clicks, attributions, by, since)
            assert {t.key for t in got} == set(want), (seed_, by)
            for t in got:
                n, u, c, carts, bought, revenue, squares, clicked_by, bought_by = want[t.key]
                assert (t.clickers, t.buyers) == (clicked_by, bought_by), (seed_, by, t.key)
                assert (t.impressions, t.users, t.clicks, t.carts, t.purchases) == (
                    n,
                    u,
                    c,
                    carts,
                    bought,
                ), (seed_, by, t.key)
                assert t.revenue == revenue, (seed_, by, t.key)
                assert t.revenue_squares == pytest.approx(squares), (seed_, by, t.key)
        with shop.engine.connect() as conn:
            [total] = tally(conn, (), since=since)
        assert total.impressions == sum(
            r["n_items"] for r in lists if since is None or r["ts"] >= since
        )
