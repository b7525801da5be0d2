"""Before the first model: the event log's best sellers, under every filter a model list has."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from service.activity.records import Activity, CatalogueEntry
from service.app import create_app
from service.recommend.recommender import Query
from service.recommend.service import popular_from_events
from service.settings import Settings

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
SOLD = Counter({"hit": 9, "second": 7, "third": 5, "fourth": 3, "fifth": 1})
CATALOGUE = {
    "second": CatalogueEntry(category="mugs", in_stock=False),
    "third": CatalogueEntry(category="mugs", in_stock=True),
    "fourth": CatalogueEntry(category="cards"),
}
BOUGHT = (
    Activity("hit", "purchase", NOW - timedelta(days=40)),
    Activity("fourth", "purchase", NOW - timedelta(days=2)),
    Activity("fifth", "view", NOW - timedelta(hours=1)),
)


def _ranked(**filters: object) -> list[str]:
    query = Query(user_id="u", **filters)  # type: ignore[arg-type]
    return popular_from_events(query, BOUGHT, CATALOGUE, SOLD, NOW)


def test_without_filters_the_best_sellers_come_first_and_out_of_stock_never() -> None:
    assert _ranked(limit=3) == ["hit", "third", "fourth"]  # "second" is out of stock


def test_every_filter_applies_as_on_a_model_list() -> None:
    assert _ranked(exclude=frozenset({"hit", "third"})) == ["fourth", "fifth"]
    assert _ranked(exclude_purchased=True) == ["third", "fifth"]
    assert _ranked(in_stock=True) == ["third"]  # only what the catalogue says is in stock
    assert _ranked(category="mugs") == ["third"]
    assert _ranked(category="cards", in_stock=True) == []  # "fourth": stock unknown
    assert _ranked(purchased_within_days=7) == ["fourth"]  # bought 2 days ago; views don't count
    assert _ranked(purchased_within_days=60) == ["hit", "fourth"]


def test_the_api_without_a_model_honours_exclude_purchased_and_in_stock(tmp_path: Path) -> None:
    settings = Settings(
        model_dir=tmp_path / "no-models",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        frontend_keys=["frontend-key-0123456789"],
        access_log=False,
    )
    headers = {"X-API-Key": "frontend-key-0123456789"}
    with TestClient(create_app(settings)) as client:
        buys = [
            {"user_id": buyer, "type": "purchase", "item_id": item}
            for buyer, items in {"a": ["hit", "gone"], "b": ["hit", "gone"], "c": ["mine"]}.items()
            for item in items
        ]
        assert client.post("/v1/events", json={"events": buys}, headers=headers).status_code == 200
        assert client.put("/v1/items/gone", json={"in_stock": False}, headers=headers).is_success
        url = "/v1/users/c/recommendations"
        everything = client.get(url, headers=headers).json()
        assert [i["item_id"] for i in everything["items"]] == ["hit", "mine"]  # "gone": no stock
        assert client.put("/v1/items/hit", json={"in_stock": True}, headers=headers).is_success
        filtered = client.get(
            url, params={"exclude_purchased": "true", "in_stock": "true"}, headers=headers
        ).json()
        assert filtered["source"] == "popular"
        assert [i["item_id"] for i in filtered["items"]] == ["hit"]
        confirmed = client.get(url, params={"in_stock": "true"}, headers=headers).json()
        assert [i["item_id"] for i in confirmed["items"]] == ["hit"]  # "mine": stock unknown
        # filters that leave nothing: an empty list, as a model's list would be (not a 503)
        nothing = client.get(url, params={"category": "none-such"}, headers=headers)
        assert nothing.status_code == 200
        assert nothing.json()["items"] == []
