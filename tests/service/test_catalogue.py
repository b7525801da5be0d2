"""What a shop really sends (issue 11, item 10): purchase lines with quantity and exact money,
catalogue prices with their currency, attributes, and the bulk catalogue endpoint; on SQLite and
on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.db import alembic_config, make_engine, migrate
from service.settings import Settings
from service.tables import events, items

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}


def make_client(model_dir: Path, database_url: str, **overrides: Any) -> TestClient:
    settings = Settings(
        model_dir=model_dir,
        database_url=database_url,
        frontend_keys=[FRONTEND],
        marketing_keys=[MARKETING],
        admin_keys=[ADMIN],
        event_poll_seconds=0.05,
        access_log=False,
        **overrides,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(small_model_root: Path, database_url: str) -> Iterator[TestClient]:
    with make_client(small_model_root, database_url) as c:
        yield c


def _rows(database_url: str, table: Any) -> list[dict[str, Any]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(table))]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def known_user(small_model_root: Path) -> str:
    artifact = load_artifact(ModelStore(small_model_root).current_path())  # type: ignore[arg-type]
    indptr = artifact.arrays["history_indptr"]
    return str(artifact.arrays["user_ids"][int((indptr[1:] - indptr[:-1]).argmax())])


# --- purchase lines ----------------------------------------------------------------------


def test_purchase_lines_keep_quantity_exact_price_currency_and_order(
    client: TestClient, database_url: str
) -> None:
    body = {
        "events": [
            {
                "user_id": "u1",
                "type": "purchase",
                "item_id": "i1",
                "order_id": "o-1",
                "quantity": 12,
                "price": "0.1",
                "currency": "EUR",
            },
            {"user_id": "u1", "type": "purchase", "item_id": "i2", "order_id": "o-1"},
            {"user_id": "u1", "type": "view", "item_id": "i3"},
        ]
    }
    r = client.post("/v1/events", json=body, headers=F)
    assert r.status_code == 200, r.text
    stored = {row["item_id"]: row for row in _rows(database_url, events)}
    assert stored["i1"]["quantity"] == 12
    assert stored["i1"]["price"] == Decimal("0.1")  # exact: 0.1 is not a float here
    assert stored["i1"]["currency"] == "EUR"
    assert stored["i1"]["order_id"] == "o-1"
    assert (stored["i2"]["quantity"], stored["i2"]["price"], stored["i2"]["currency"]) == (
        1,
        None,
        None,
    )
    assert stored["i3"]["quantity"] is None  # a view has no quantity


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "purchase", "price": "2.50"}, "currency"),
        ({"type": "purchase", "quantity": 0}, "quantity"),
        ({"type": "purchase", "quantity": 1.5}, "quantity"),
        ({"type": "purchase", "quantity": True}, "quantity"),
        ({"type": "purchase", "quantity": "3"}, "quantity"),
        ({"type": "purchase", "price": "1.00001", "currency": "EUR"}, "price"),
        ({"type": "purchase", "price": "-1", "currency": "EUR"}, "price"),
        ({"type": "purchase", "price": "1", "currency": "euro"}, "currency"),
        ({"type": "view", "quantity": 2}, "quantity"),
        ({"type": "add_to_cart", "price": "1", "currency": "EUR"}, "price"),
    ],
)
def test_bad_purchase_fields_are_a_422_naming_the_field(
    small_model_root: Path, tmp_path: Path, event: dict[str, Any], field: str
) -> None:
    with make_client(small_model_root, f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        one = client.post("/v1/events", json={"user_id": "u", "item_id": "i", **event}, headers=F)
        batch = client.post(
            "/v1/events", json={"events": [{"user_id": "u", "item_id": "i", **event}]}, headers=F
        )
    assert one.status_code == 422, one.text
    assert [d["field"] for d in one.json()["detail"]] == [field]
    assert batch.status_code == 422, batch.text
    assert [d["field"] for d in batch.json()["detail"]] == [f"events.0.{field}"]


# --- one item ----------------------------------------------------------------------------


def test_item_price_is_exact_with_its_currency_and_attributes_are_stored(
    client: TestClient, database_url: str
) -> None:
    r = client.put(
        "/v1/items/i1",
        json={"price": "19.99", "currency": "GBP", "attributes": {"colour": "red", "size": 3}},
        headers=M,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert Decimal(body["price"]) == Decimal("19.99")
    assert isinstance(body["price"], str)
    assert (body["currency"], body["attributes"], body["status"]) == (
        "GBP",
        {"colour": "red", "size": 3},
        "active",
    )
    # a later update without a price keeps it
    assert client.put("/v1/items/i1", json={"in_stock": False}, headers=M).json()["price"]
    [row] = _rows(database_url, items)
    assert (row["price"], row["currency"], row["in_stock"]) == (Decimal("19.99"), "GBP", False)
    assert row["attributes"] == {"colour": "red", "size": 3}
    # a category is a label: words with spaces are fine
    r = client.put("/v1/items/i1", json={"category": "Home decor"}, headers=M)
    assert (r.status_code, r.json()["category"]) == (200, "Home decor"), r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"price": "2.50"}, "currency"),
        ({"price": False, "currency": "EUR"}, "price"),
        ({"price": "2.123456", "currency": "EUR"}, "price"),
        ({"attributes": {"k": {"nested": 1}}}, "attributes"),
        ({"category": " Home decor"}, "category"),
        ({"category": "Home\ndecor"}, "category"),
    ],
)
def test_bad_item_fields_are_a_422_naming_the_field(
    small_model_root: Path, tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    with make_client(small_model_root, f"sqlite:///{tmp_path / 'db.sqlite'}") as client:
        r = client.put("/v1/items/i", json=body, headers=M)
    assert r.status_code == 422, r.text
    assert all(d["field"].startswith(field) for d in r.json()["detail"])


# --- the bulk catalogue endpoint ---------------------------------------------------------


def _top(client: TestClient, user: str, **params: Any) -> list[str]:
    r = client.get(f"/v1/users/{user}/recommendations", params={"limit": 20, **params}, headers=F)
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def test_hidden_and_deleted_items_are_never_recommended_and_show_brings_one_back(
    client: TestClient, known_user: str, database_url: str
) -> None:
    first = _top(client, known_user)
    hidden, deleted = first[0], first[1]
    similar_before = client.get(f"/v1/items/{first[2]}/similar", params={"limit": 50}, headers=F)
    ops = [
        {"op": "upsert", "item_id": hidden, "name": "kept", "price": "3.5", "currency": "EUR"},
        {"op": "hide", "item_id": hidden},
        {"op": "delete", "item_id": deleted},
        {"op": "delete", "item_id": "never-existed"},
    ]
    r = client.post("/v1/items:batch", json={"items": ops}, headers=M)
    assert r.status_code == 200, r.text
    assert [x["result"] for x in r.json()["results"]] == [
        "created",
        "hidden",
        "not_found",  # `deleted` has no catalogue row yet: nothing to delete
        "not_found",
    ]
    # now create it so that it can be deleted
    i = deleted
    r = client.post(
        "/v1/items:batch",
        json={"items": [{"op": "upsert", "item_id": i}, {"op": "delete", "item_id": i}]},
        headers=M,
    )
    assert [x["result"] for x in r.json()["results"]] == ["created", "deleted"]
    for params in ({}, {"exclude_purchased": True}, {"in_stock": True}):
        listed = _top(client, known_user, **params)
        assert hidden not in listed, params
        assert deleted not in listed, params
    assert hidden not in _top(client, "someone-new")  # the popular fallback too
    similar = client.get(f"/v1/items/{first[2]}/similar", params={"limit": 50}, headers=F).json()
    assert {hidden, deleted} & {i["item_id"] for i in similar_before.json()["items"]}
    assert not {hidden, deleted} & {i["item_id"] for i in similar["items"]}
    stored = {row["item_id"]: row for row in _rows(database_url, items)}
    assert (stored[hidden]["status"], stored[hidden]["name"]) == ("hidden", "kept")
    assert stored[deleted]["status"] == "deleted"
    show = {"items": [{"op": "show", "item_id": hidden}]}
    r = client.post("/v1/items:batch", json=show, headers=M)
    assert r.json()["results"] == [{"item_id": hidden, "op": "show", "result": "shown"}]
    assert hidden in _top(client, known_user)


def test_a_batch_is_all_or_nothing_bounded_and_for_marketing(
    small_model_root: Path, database_url: str
) -> None:
    with make_client(small_model_root, database_url, max_batch_items=3) as client:
        good = {"op": "upsert", "item_id": "a", "attributes": {"brand": "acme"}}
        bad = {"op": "upsert", "item_id": "b", "price": "1.00"}  # no currency
        r = client.post("/v1/items:batch", json={"items": [good, bad]}, headers=M)
        assert r.status_code == 422, r.text
        assert [d["field"] for d in r.json()["detail"]] == ["items.1.upsert.currency"]
        unknown = client.post(
            "/v1/items:batch", json={"items": [good, {"op": "rename", "item_id": "x"}]}, headers=M
        )
        assert unknown.status_code == 422
        assert _rows(database_url, items) == []  # nothing of a refused batch is written
        many = client.post("/v1/items:batch", json={"items": [good] * 4}, headers=M)
        assert many.status_code == 413, many.text
        assert client.post("/v1/items:batch", json={"items": [good]}, headers=F).status_code == 403
        admin = client.post("/v1/items:batch", json={"items": [good]}, headers={"X-API-Key": ADMIN})
        assert admin.json()["results"] == [{"item_id": "a", "op": "upsert", "result": "created"}]
        again = client.post("/v1/items:batch", json={"items": [good]}, headers=M)
        assert again.json()["results"][0]["result"] == "updated"
    [row] = _rows(database_url, items)
    assert row["attributes"] == {"brand": "acme"}


# --- the migration -----------------------------------------------------------------------


def test_migration_0005_turns_float_prices_into_exact_amounts(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, "0004")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO items (item_id, price, updated_at) "
                    "VALUES ('old', 2.55, '2026-11-01 00:00:00')"
                )
            )
        migrate(engine)
        with engine.connect() as conn:
            row = conn.execute(select(items)).one()
            assert (row.price, row.currency, row.status) == (Decimal("2.55"), None, "active")
        columns = {c["name"] for c in inspect(engine).get_columns("events")}
        assert {"quantity", "price", "currency", "order_id"} <= columns
        # and back: the downgrade gives the float price again
        config = alembic_config()
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            conn.commit()
            assert conn.execute(text("SELECT price FROM items")).scalar_one() == 2.55
        assert "quantity" not in {c["name"] for c in inspect(engine).get_columns("events")}
    finally:
        engine.dispose()


def test_the_tables_match_the_migrations(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from service.tables import metadata

    engine = make_engine(database_url)
    try:
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        ours = [d for d in diff if "items" in repr(d) or "events" in repr(d)]
        assert ours == []
    finally:
        engine.dispose()


def test_each_worker_keeps_the_hidden_items_as_one_set_replaced_whole() -> None:
    from datetime import UTC, datetime

    from service.activity.records import ItemRecord
    from service.activity.store import ActivityStore

    store = ActivityStore()
    moment = datetime(2026, 1, 1, tzinfo=UTC)

    def record(item: str, status: Any) -> ItemRecord:
        return ItemRecord(item, None, None, None, moment, status=status)

    store.update_catalogue([record("a", "hidden"), record("b", "deleted"), record("c", "active")])
    before = store.hidden
    assert before == {"a", "b"}
    assert store.catalogue["b"].hidden
    assert not store.catalogue["c"].hidden
    store.update_catalogue([record("a", "active")])
    assert store.hidden == {"b"}
    assert before == {"a", "b"}  # a reader holding the old set is not disturbed


def test_the_frontend_key_cannot_write_the_catalogue(client: TestClient) -> None:
    """The frontend's key is in the shop's pages: a product it could write would be listed to
    every visitor (a new arrival), a price or a stock flag it could change would be served."""
    r = client.put("/v1/items/spam-1", json={"name": "Visit evil.example"}, headers=F)
    assert r.status_code == 403, r.text
    assert client.put("/v1/items/spam-1", json={"name": "Lamp"}, headers=M).status_code == 200
