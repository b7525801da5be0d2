"""Impressions (one event per list shown) and clicks through POST /v1/events, and the carts and
purchases credited to their lists (issue 14, items 1 and 2), on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

from service.tables import events, rec_attributions, rec_clicks, rec_impressions

from .shop import A, Shop, at, click, impression, make_shop, purchase


def test_a_list_shown_is_one_row_with_each_items_source_and_repeats_are_duplicates(
    shop: Shop,
) -> None:
    lid = shop.list_id("u1", ("model", "session", "popular"), experiment_id="e1", arm="control")
    r = shop.post(impression("u1", ["i0", "i1", "i2"], lid))
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}
    [row] = shop.rows(rec_impressions)
    assert (row["items"], row["positions"], row["sources"], row["n_items"]) == (
        ["i0", "i1", "i2"],
        [0, 1, 2],
        "msp",
        3,
    )
    assert row["request_id"] == lid.split(".")[0]
    assert (row["model_version"], row["recipe"], row["placement"]) == ("v1", "all", "home")
    assert (row["experiment_id"], row["arm"]) == ("e1", "control")
    assert row["served_at"].tzinfo is not None
    assert row["ts"] == shop.clock()
    # the same list again, whatever it says and whatever client_event_id: a duplicate
    again = shop.post(
        impression("u1", ["i0", "i1", "i2"], lid),
        impression("u1", ["i2"], lid, positions=[2], client_event_id="c-1"),
    )
    assert again.status_code == 200, again.text
    assert again.json() == {"accepted": 0, "duplicates": 2}
    # a repeated client_event_id is a duplicate too, whatever list it names
    shop.post(impression("u1", ["i9"], shop.list_id("u1"), client_event_id="c-2"))
    repeat = shop.post(impression("u1", ["i8"], shop.list_id("u1"), client_event_id="c-2"))
    assert repeat.json() == {"accepted": 0, "duplicates": 1}
    assert len(shop.rows(rec_impressions)) == 2
    assert shop.rows(events) == []  # feedback is not in the events table


def test_positions_say_where_the_shown_items_were_in_the_served_list(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model", "session", "popular", "new_arrivals"))
    r = shop.post(impression("u1", ["d", "b"], lid, positions=[3, 1], placement="cart"))
    assert r.json() == {"accepted": 1, "duplicates": 0}, r.text
    [row] = shop.rows(rec_impressions)
    assert (row["items"], row["positions"], row["sources"], row["placement"]) == (
        ["d", "b"],
        [3, 1],
        "ns",
        "cart",
    )


def test_a_bad_list_id_refuses_the_whole_batch_naming_the_field(shop: Shop) -> None:
    lid = shop.list_id("u1")  # four items
    view = {"type": "view", "user_id": "u1", "item_id": "i1"}
    cases = {
        "not a list id": "just-a-request-id",
        "another user's": shop.list_id("u2"),
        "altered": lid[:-2] + ("AA" if not lid.endswith("AA") else "BB"),
    }
    for name, bad in cases.items():
        r = shop.post(view, impression("u1", ["i1"], lid), impression("u1", ["i1"], bad))
        assert r.status_code == 422, (name, r.text)
        assert r.json()["detail"][0]["field"] == "events.2.request_id", name
        r = shop.post(view, impression("u1", ["i1"], lid), click("u1", "i1", bad))
        assert r.json()["detail"][0]["field"] == "events.2.request_id", name
    one = shop.post(impression("u1", ["i1"], "x.y.z"))
    assert one.status_code == 422
    assert one.json()["detail"][0]["field"] == "request_id"
    too_many = shop.post(view, impression("u1", ["a", "b", "c", "d", "e"], lid))
    assert too_many.status_code == 422
    assert too_many.json()["detail"][0]["field"] == "events.1.items"
    past_the_end = shop.post(view, impression("u1", ["a"], lid, positions=[4]))
    assert past_the_end.status_code == 422
    assert past_the_end.json()["detail"][0]["field"] == "events.1.positions"
    assert "4 items" in past_the_end.json()["detail"][0]["message"]
    assert shop.rows(events) == []
    assert shop.rows(rec_impressions) == []


def test_the_schema_names_each_missing_or_misplaced_field(shop: Shop) -> None:
    lid = shop.list_id("u1")
    shown = impression("u1", ["i1", "i2"], lid)
    bad: dict[str, dict[str, Any]] = {
        "events.0.items": {k: v for k, v in shown.items() if k != "items"},
        "events.0.placement": {**shown, "placement": "Home Page"},
        "events.0.request_id": {"type": "click", "user_id": "u1", "item_id": "i1"},
        "events.0.item_id": {**shown, "item_id": "i1"},
        "events.0.position": {**shown, "position": 0},
        "events.0.positions": {**shown, "positions": [0]},  # two items, one position
    }
    for field, event in bad.items():
        r = shop.post(event, {"type": "view", "user_id": "u1", "item_id": "i1"})
        assert r.status_code == 422, (field, r.text)
        fields = [d["field"] for d in r.json()["detail"]]
        assert field in fields, (field, r.json())
        if field in ("events.0.item_id", "events.0.position"):
            message = next(d["message"] for d in r.json()["detail"] if d["field"] == field)
            assert "send items" in message, message
    for field, value, says in (
        ("items", [], "at least 1"),
        ("items", ["ok", "not ok"], "items.1: character ' '"),
        ("positions.0", [-1, 1], "greater than or equal to 0"),
    ):
        name = field.split(".")[0]
        event = {**shown, name: value}
        r = shop.post(event)  # one event, not a batch: the field alone
        assert r.status_code == 422, (field, r.text)
        [detail] = r.json()["detail"]
        assert detail["field"] == field, (field, detail)
        assert says in detail["message"], detail
    repeated = shop.post({**shown, "items": ["a", "a"]})
    assert repeated.json()["detail"][0]["field"] == "items"
    same_place = shop.post({**shown, "positions": [1, 1]})
    assert same_place.json()["detail"][0]["field"] == "positions"
    hundred_and_one = shop.post({**shown, "items": [f"i{n}" for n in range(101)]})
    assert hundred_and_one.json()["detail"][0]["field"] == "items"
    misplaced = shop.post(
        {"type": "view", "user_id": "u1", "item_id": "i1"},
        {"type": "view", "user_id": "u1", "item_id": "i1", "request_id": lid},
        {"type": "purchase", "user_id": "u1", "item_id": "i1", "position": 2},
        {"type": "click", "user_id": "u1", "item_id": "i1", "request_id": lid, "items": ["a"]},
    )
    fields = [d["field"] for d in misplaced.json()["detail"]]
    assert "events.1.request_id" in fields
    assert "events.2.position" in fields
    assert "events.3.items" in fields
    assert shop.rows(rec_impressions) == []


def test_a_click_takes_its_position_source_and_placement_from_its_lists_row(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model", "session"))
    shop.post(impression("u1", ["i0", "i1"], lid, placement="cart"))
    r = shop.post(click("u1", "i1", lid), click("u1", "i1", lid), click("u1", "i7", lid))
    assert r.json() == {"accepted": 2, "duplicates": 1}
    rows = {x["item_id"]: x for x in shop.rows(rec_clicks)}
    assert (rows["i1"]["position"], rows["i1"]["source"], rows["i1"]["placement"]) == (
        1,
        "session",
        "cart",
    )
    # not in the list reported shown: no position; the list has two sources, so unknown
    assert (rows["i7"]["position"], rows["i7"]["source"], rows["i7"]["placement"]) == (
        None,
        "unknown",
        "cart",
    )
    single = shop.list_id("u1", ("popular", "popular"))
    shop.post(click("u1", "i3", single, placement="product"))
    row = next(x for x in shop.rows(rec_clicks) if x["item_id"] == "i3")
    assert (row["position"], row["source"], row["placement"]) == (None, "popular", "product")


def test_a_click_sent_before_its_list_is_placed_when_the_list_comes(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model", "session", "popular"))
    shop.post(click("u1", "b", lid))
    shop.post(purchase("u1", "b", price="2", currency="EUR"))
    [early] = shop.rows(rec_clicks)
    assert (early["position"], early["source"], early["placement"]) == (None, "unknown", "unknown")
    [credit] = shop.rows(rec_attributions)
    assert (credit["via"], credit["position"]) == ("click", None)
    shop.post(impression("u1", ["a", "b"], lid, positions=[0, 2], placement="product"))
    [placed] = shop.rows(rec_clicks)
    assert (placed["position"], placed["source"], placed["placement"]) == (2, "popular", "product")
    [credit] = shop.rows(rec_attributions)
    assert (credit["position"], credit["source"], credit["placement"]) == (2, "popular", "product")


def test_a_list_reported_twice_in_one_batch_is_stored_once_as_first_reported(
    shop: Shop,
) -> None:
    """The first report counts, the second is a duplicate; clicks sent before the list are
    placed by the stored row, so the figures never count more clicks than items shown."""
    lid = shop.list_id("u1", ("model", "model", "model", "model"))
    for item in ("b", "c", "d"):
        shop.post(click("u1", item, lid))
    r = shop.post(
        impression("u1", ["a"], lid),
        impression("u1", ["b", "c", "d"], lid, positions=[1, 2, 3]),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 1}
    [stored] = shop.rows(rec_impressions)
    assert stored["items"] == ["a"]
    assert all(c["position"] is None for c in shop.rows(rec_clicks))  # b, c, d were not shown
    answer = shop.client.get("/v1/analytics/recommendations", headers=A)
    assert answer.status_code == 200, answer.text


def test_purchases_are_credited_to_the_last_click_else_the_last_list_holding_the_item(
    shop: Shop,
) -> None:
    home = shop.list_id("u1", ("model", "model"))
    cart = shop.list_id("u1", ("session", "session"))
    shop.post(impression("u1", ["a", "b"], home))
    shop.post(click("u1", "a", home))
    shop.later(minutes=10)
    shop.post(impression("u1", ["a"], cart, placement="cart"), click("u1", "a", cart))
    shop.later(minutes=5)
    other = shop.list_id("u1", ("popular",))
    shop.post(impression("u1", ["x"], other))  # a later list without b: not b's
    shop.later(minutes=25)
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
    assert (a["kind"], a["via"], a["request_id"], a["placement"], a["position"]) == (
        "purchase",
        "click",
        cart.split(".")[0],
        "cart",
        0,
    )
    assert (a["source"], a["quantity"], a["revenue"], a["currency"]) == (
        "session",
        3,
        Decimal("7.6500"),
        "GBP",
    )
    b = credited["b"]
    assert (b["kind"], b["via"], b["request_id"], b["revenue"], b["position"]) == (
        "add_to_cart",
        "impression",
        home.split(".")[0],
        None,
        1,
    )
    assert b["source"] == "model"
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


def test_another_users_list_never_credits_a_purchase(shop: Shop) -> None:
    shop.post(impression("u2", ["a"], shop.list_id("u2", ("model",))))
    shop.post(purchase("u1", "a"))
    assert shop.rows(rec_attributions) == []


def test_a_mixed_batch_is_stored_whole_and_credited_within_itself(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model",))
    t = shop.clock()
    r = shop.post(
        {"type": "view", "user_id": "u1", "item_id": "a", "timestamp": at(t)},
        impression("u1", ["a"], lid, timestamp=at(t)),
        click("u1", "a", lid, timestamp=at(t)),
        {"type": "add_to_cart", "user_id": "u1", "item_id": "a", "timestamp": at(t)},
        purchase("u1", "a", price="5", currency="EUR", timestamp=at(t)),
    )
    assert r.json() == {"accepted": 5, "duplicates": 0}, r.text
    assert [e["type"] for e in shop.rows(events)] == ["view", "add_to_cart", "purchase"]
    kinds = sorted((x["kind"], x["via"], x["position"]) for x in shop.rows(rec_attributions))
    assert kinds == [("add_to_cart", "click", 0), ("purchase", "click", 0)]
    # a list shown later than the purchase credits nothing to it
    lid2 = shop.list_id("u1", ("model",))
    shop.post(
        purchase("u1", "z", timestamp=at(t)),
        impression("u1", ["z"], lid2, timestamp=at(shop.later(minutes=1))),
    )
    assert {x["item_id"] for x in shop.rows(rec_attributions)} == {"a"}


def test_an_erased_users_feedback_is_dropped_and_erasure_removes_it(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model", "model"))
    shop.post(impression("u1", ["a", "b"], lid), click("u1", "a", lid))
    shop.post(purchase("u1", "a", price="2", currency="EUR"))
    keep = shop.list_id("u2", ("model",))
    shop.post(impression("u2", ["a"], keep))
    exported = shop.client.get("/v1/users/u1/export", headers=A).json()["tables"]
    assert [len(exported[t]) for t in ("rec_impressions", "rec_clicks", "rec_attributions")] == [
        1,
        1,
        1,
    ]
    assert exported["rec_impressions"][0]["items"] == ["a", "b"]
    erased = shop.client.delete("/v1/users/u1", headers=A).json()["removed"]
    assert (erased["rec_impressions"], erased["rec_clicks"], erased["rec_attributions"]) == (
        1,
        1,
        1,
    )
    assert [x["user_id"] for x in shop.rows(rec_impressions)] == ["u2"]
    assert shop.rows(rec_clicks) == []
    assert shop.rows(rec_attributions) == []
    again = shop.post(impression("u1", ["b"], shop.list_id("u1")), click("u1", "b", lid))
    assert again.json() == {"accepted": 0, "duplicates": 0}
    assert [x["user_id"] for x in shop.rows(rec_impressions)] == ["u2"]


def test_many_parallel_posts_of_the_same_lists_store_each_once(shop: Shop) -> None:
    lists = [shop.list_id(f"u{n % 3}", ("model",) * 5) for n in range(6)]
    batch = [
        impression(f"u{n % 3}", [f"i{p}" for p in range(5)], lid, client_event_id=f"c{n}")
        for n, lid in enumerate(lists)
    ]
    rounds = 16

    def send(k: int) -> Any:
        order = batch[k % len(batch) :] + batch[: k % len(batch)]  # other orders, same keys
        if k % 2:  # every other one without its client_event_id: the list alone is the key
            order = [{x: v for x, v in e.items() if x != "client_event_id"} for e in order]
        return shop.post(*order)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, range(rounds)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["accepted"] for a in answers) == len(batch)
    assert sum(a.json()["duplicates"] for a in answers) == len(batch) * (rounds - 1)
    assert len(shop.rows(rec_impressions)) == len(batch)
    text = shop.client.get("/metrics").text
    assert f'recoffer_rec_impressions_total{{source="model"}} {len(batch) * 5}.0' in text


def test_many_parallel_posts_of_one_list_store_it_once(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model", "session"))
    one = impression("u1", ["a", "b"], lid)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: shop.post(one), range(24)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert sum(a.json()["accepted"] for a in answers) == 1
    assert len(shop.rows(rec_impressions)) == 1


def test_parallel_retries_of_a_purchase_credit_it_once(shop: Shop) -> None:
    lid = shop.list_id("u1", ("model",))
    shop.post(impression("u1", ["a"], lid), click("u1", "a", lid))
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
        shop.post(impression("u1", ["a", "b"], lid))
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
