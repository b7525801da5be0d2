"""Impressions and clicks through POST /v1/events, and the carts and purchases credited to
their lists (issue 14, items 1 and 2), on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from service.tables import events, rec_attributions, rec_clicks, rec_impressions

from .shop import A, Shop, at, click, impression, make_shop, purchase


def test_impressions_are_stored_with_each_positions_source_and_repeats_are_duplicates(
    shop: Shop,
) -> None:
    lid = shop.list_id("u1", ("model", "session", "popular"), experiment_id="e1", arm="control")
    shown = [impression("u1", f"i{p}", lid, p) for p in range(3)]
    r = shop.post(*shown)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 3, "duplicates": 0}
    rows = shop.rows(rec_impressions)
    assert [(x["item_id"], x["position"], x["source"]) for x in rows] == [
        ("i0", 0, "model"),
        ("i1", 1, "session"),
        ("i2", 2, "popular"),
    ]
    first = rows[0]
    assert first["request_id"] == lid.split(".")[0]
    assert (first["model_version"], first["recipe"], first["placement"]) == ("v1", "all", "home")
    assert (first["experiment_id"], first["arm"]) == ("e1", "control")
    # the same (list, item) again, another client_event_id: a duplicate, never an error
    again = shop.post(*shown, impression("u1", "i0", lid, 0, client_event_id="c-1"))
    assert again.status_code == 200, again.text
    assert again.json() == {"accepted": 0, "duplicates": 4}
    # a repeated client_event_id is a duplicate too, whatever it says
    other = shop.list_id("u1")
    shop.post(impression("u1", "i9", other, 1, client_event_id="c-2"))
    repeat = shop.post(impression("u1", "i8", other, 0, client_event_id="c-2"))
    assert repeat.json() == {"accepted": 0, "duplicates": 1}
    assert len(shop.rows(rec_impressions)) == 4
    assert shop.rows(events) == []  # feedback is not in the events table


def test_a_bad_list_id_refuses_the_whole_batch_naming_the_field(shop: Shop) -> None:
    lid = shop.list_id("u1")
    view = {"type": "view", "user_id": "u1", "item_id": "i1"}
    cases = {
        "not a list id": "just-a-request-id",
        "another user's": shop.list_id("u2"),
        "altered": lid[:-2] + ("AA" if not lid.endswith("AA") else "BB"),
    }
    for name, bad in cases.items():
        r = shop.post(view, impression("u1", "i1", lid, 0), click("u1", "i1", bad))
        assert r.status_code == 422, (name, r.text)
        assert r.json()["detail"][0]["field"] == "events.2.request_id", name
    one = shop.post(impression("u1", "i1", "x.y.z", 0))
    assert one.status_code == 422
    assert one.json()["detail"][0]["field"] == "request_id"
    past_the_end = shop.post(view, impression("u1", "i1", lid, 4))  # a list of four
    assert past_the_end.status_code == 422
    assert past_the_end.json()["detail"][0]["field"] == "events.1.position"
    assert shop.rows(events) == []
    assert shop.rows(rec_impressions) == []


def test_the_schema_names_each_missing_or_misplaced_field(shop: Shop) -> None:
    lid = shop.list_id("u1")
    bad = {
        "events.0.position": {**impression("u1", "i1", lid, 0), "position": None},
        "events.0.placement": impression("u1", "i1", lid, 0, placement="Home Page"),
        "events.0.request_id": {"type": "click", "user_id": "u1", "item_id": "i1"},
    }
    for field, event in bad.items():
        event = {k: v for k, v in event.items() if v is not None}
        r = shop.post(event, {"type": "view", "user_id": "u1", "item_id": "i1"})
        assert r.status_code == 422, (field, r.text)
        assert field in [d["field"] for d in r.json()["detail"]], (field, r.json())
    misplaced = shop.post(
        {"type": "view", "user_id": "u1", "item_id": "i1"},
        {"type": "view", "user_id": "u1", "item_id": "i1", "request_id": lid},
        {"type": "purchase", "user_id": "u1", "item_id": "i1", "position": 2},
    )
    fields = [d["field"] for d in misplaced.json()["detail"]]
    assert "events.1.request_id" in fields
    assert "events.2.position" in fields


def test_a_click_takes_its_impressions_position_source_and_placement(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model", "session"))
    shop.post(impression("u1", "i0", lid, 0), impression("u1", "i1", lid, 1, placement="cart"))
    r = shop.post(click("u1", "i1", lid), click("u1", "i1", lid), click("u1", "i7", lid))
    assert r.json() == {"accepted": 2, "duplicates": 1}
    rows = {x["item_id"]: x for x in shop.rows(rec_clicks)}
    assert (rows["i1"]["position"], rows["i1"]["source"], rows["i1"]["placement"]) == (
        1,
        "session",
        "cart",
    )
    # never reported shown: no position; the list has two sources, so unknown; placement sent
    assert (rows["i7"]["position"], rows["i7"]["source"], rows["i7"]["placement"]) == (
        None,
        "unknown",
        "unknown",
    )
    single = shop.list_id("u1", ("popular", "popular"))
    shop.post(click("u1", "i3", single, placement="product"))
    row = next(x for x in shop.rows(rec_clicks) if x["item_id"] == "i3")
    assert (row["source"], row["placement"]) == ("popular", "product")


def test_purchases_are_credited_to_the_last_click_else_the_last_impression(shop: Shop) -> None:
    t0 = shop.clock()
    home = shop.list_id("u1", ("model", "model"))
    cart = shop.list_id("u1", ("session", "session"))
    shop.post(impression("u1", "a", home, 0), impression("u1", "b", home, 1))
    shop.post(click("u1", "a", home))
    shop.later(minutes=10)
    shop.post(impression("u1", "a", cart, 0, placement="cart"), click("u1", "a", cart))
    shop.later(minutes=30)
    # a: two clicks, the cart's came last; b: shown only, 40 minutes ago (within 1 h)
    r = shop.post(
        purchase("u1", "a", quantity=3, price="2.55", currency="GBP", client_event_id="p1"),
        {"type": "add_to_cart", "user_id": "u1", "item_id": "b"},
        purchase("u1", "c", price="1.00", currency="GBP"),  # never shown: not credited
    )
    assert r.json() == {"accepted": 3, "duplicates": 0}
    credited = {x["item_id"]: x for x in shop.rows(rec_attributions)}
    assert set(credited) == {"a", "b"}
    a = credited["a"]
    assert (a["kind"], a["via"], a["request_id"], a["placement"]) == (
        "purchase",
        "click",
        cart.split(".")[0],
        "cart",
    )
    assert (a["source"], a["quantity"], a["revenue"], a["currency"]) == (
        "session",
        3,
        Decimal("7.6500"),
        "GBP",
    )
    b = credited["b"]
    assert (b["kind"], b["via"], b["request_id"], b["revenue"]) == (
        "add_to_cart",
        "impression",
        home.split(".")[0],
        None,
    )
    # exactly once: the retried purchase is a duplicate and credits nothing more
    again = shop.post(
        purchase("u1", "a", quantity=3, price="2.55", currency="GBP", client_event_id="p1")
    )
    assert again.json() == {"accepted": 0, "duplicates": 1}
    assert len(shop.rows(rec_attributions)) == 2
    # past the windows: the impression after 1 h, the click after 24 h
    shop.later(hours=1)
    shop.post({"type": "add_to_cart", "user_id": "u1", "item_id": "b"})
    shop.later(hours=24)
    shop.post(purchase("u1", "a"))
    assert len(shop.rows(rec_attributions)) == 2
    assert t0 < shop.clock()


def test_a_mixed_batch_is_stored_whole_and_credited_within_itself(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model",))
    t = shop.clock()
    r = shop.post(
        {"type": "view", "user_id": "u1", "item_id": "a", "timestamp": at(t)},
        impression("u1", "a", lid, 0, timestamp=at(t)),
        click("u1", "a", lid, timestamp=at(t)),
        {"type": "add_to_cart", "user_id": "u1", "item_id": "a", "timestamp": at(t)},
        purchase("u1", "a", price="5", currency="EUR", timestamp=at(t)),
    )
    assert r.json() == {"accepted": 5, "duplicates": 0}, r.text
    assert [e["type"] for e in shop.rows(events)] == ["view", "add_to_cart", "purchase"]
    kinds = sorted((x["kind"], x["via"]) for x in shop.rows(rec_attributions))
    assert kinds == [("add_to_cart", "click"), ("purchase", "click")]
    # a click later than the purchase credits nothing to it
    lid2 = shop.list_id("u1", ("model",))
    shop.post(
        purchase("u1", "z", timestamp=at(t)),
        impression("u1", "z", lid2, 0, timestamp=at(shop.later(minutes=1))),
    )
    assert {x["item_id"] for x in shop.rows(rec_attributions)} == {"a"}


def test_an_erased_users_feedback_is_dropped_and_erasure_removes_it(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model",))
    shop.post(impression("u1", "a", lid, 0), click("u1", "a", lid))
    shop.post(purchase("u1", "a", price="2", currency="EUR"))
    keep = shop.list_id("u2", ("model",))
    shop.post(impression("u2", "a", keep, 0))
    exported = shop.client.get("/v1/users/u1/export", headers=A).json()["tables"]
    assert [len(exported[t]) for t in ("rec_impressions", "rec_clicks", "rec_attributions")] == [
        1,
        1,
        1,
    ]
    erased = shop.client.delete("/v1/users/u1", headers=A).json()["removed"]
    assert (erased["rec_impressions"], erased["rec_clicks"], erased["rec_attributions"]) == (
        1,
        1,
        1,
    )
    assert [x["user_id"] for x in shop.rows(rec_impressions)] == ["u2"]
    assert shop.rows(rec_clicks) == []
    assert shop.rows(rec_attributions) == []
    again = shop.post(impression("u1", "b", lid, 0), click("u1", "b", lid))
    assert again.json() == {"accepted": 0, "duplicates": 0}
    assert [x["user_id"] for x in shop.rows(rec_impressions)] == ["u2"]


def test_parallel_repeats_store_each_impression_once(shop: Shop) -> None:
    lists = [shop.list_id(f"u{n % 3}", ("model",) * 5) for n in range(6)]
    batch = [
        impression(f"u{n % 3}", f"i{p}", lid, p, client_event_id=f"c{n}-{p}")
        for n, lid in enumerate(lists)
        for p in range(5)
    ]
    rounds = 12

    def send(k: int) -> Any:
        order = batch[k % len(batch) :] + batch[: k % len(batch)]  # other orders, same keys
        return shop.post(*order)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(rounds)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["accepted"] for a in answers) == len(batch)
    assert sum(a.json()["duplicates"] for a in answers) == len(batch) * (rounds - 1)
    assert len(shop.rows(rec_impressions)) == len(batch)


def test_parallel_retries_of_a_purchase_credit_it_once(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model",))
    shop.post(impression("u1", "a", lid, 0), click("u1", "a", lid))
    buy = purchase("u1", "a", price="3", currency="EUR", client_event_id="buy-1")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: shop.post(buy, click("u1", "a", lid)), range(10)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["accepted"] for a in answers) == 1
    assert [(x["kind"], x["via"]) for x in shop.rows(rec_attributions)] == [("purchase", "click")]


def test_the_windows_are_settings(database_url: str, tmp_path: Path) -> None:
    for shop in make_shop(
        database_url,
        tmp_path,
        attribution_click_hours=2,
        attribution_impression_hours=0,
    ):
        lid = shop.list_id("u1", ("model", "model"))
        shop.post(impression("u1", "a", lid, 0), impression("u1", "b", lid, 1))
        shop.post(click("u1", "b", lid))
        shop.later(minutes=5)
        shop.post(purchase("u1", "a"))  # shown only: impressions are off
        shop.later(hours=3)
        shop.post(purchase("u1", "b"))  # clicked 3 h ago: past the 2 h
        assert shop.rows(rec_attributions) == []
        shop.post(click("u1", "a", lid))
        shop.later(hours=1, minutes=59)
        shop.post(purchase("u1", "a"))
        assert [x["via"] for x in shop.rows(rec_attributions)] == ["click"]
