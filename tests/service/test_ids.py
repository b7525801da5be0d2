"""One id alphabet everywhere: what POST /v1/events accepts can be asked for, the rest is a 422."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.ids import ID_MAX_LENGTH, ID_PATTERN, id_problem, is_id
from service.settings import Settings
from training.synthetic.shop import SyntheticShop

KEY = "admin-key-0123456789abcd"
H = {"X-API-Key": KEY}
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-"
ids = st.text(alphabet=ALPHABET, min_size=1, max_size=ID_MAX_LENGTH).filter(is_id)


@pytest.fixture(scope="module")
def client(
    small_model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    database = tmp_path_factory.mktemp("ids") / "db.sqlite"
    options = Settings(
        model_dir=small_model_root,
        database_url=f"sqlite:///{database}",
        admin_keys=[KEY],
        event_poll_seconds=0.05,
        access_log=False,
    )
    with TestClient(create_app(options)) as c:
        yield c


@pytest.fixture(scope="module")
def popular_item(small_shop: SyntheticShop) -> str:
    return str(small_shop.purchases["item_id"].value_counts().index[0])


@pytest.mark.parametrize(
    "value",
    ["17850", "85123A", "u-0000042", "shop:42", "jane.doe@example.com", "a_b", "...", ".a"],
)
def test_the_ids_of_real_data_fit_the_alphabet(value: str) -> None:
    assert is_id(value)


@pytest.mark.parametrize(
    ("value", "named"),
    [("a/b", "'/'"), ("a b", "' '"), ("a?b", "'?'"), ("a%2Fb", "'%'"), ("jane+x@y.z", "'+'")],
)
def test_a_character_outside_the_alphabet_is_named(value: str, named: str) -> None:
    problem = id_problem(value)
    assert problem is not None
    assert named in problem


def test_dot_segments_and_lengths_are_refused() -> None:
    assert not is_id(".")
    assert not is_id("..")
    assert not is_id("")
    assert not is_id("x" * (ID_MAX_LENGTH + 1))
    assert is_id("x" * ID_MAX_LENGTH)


def test_an_event_with_a_slash_in_its_user_id_is_a_422_naming_field_and_character(
    client: TestClient,
) -> None:
    r = client.post(
        "/v1/events", json={"user_id": "a/b", "type": "view", "item_id": "i"}, headers=H
    )
    assert r.status_code == 422, r.text
    [entry] = r.json()["detail"]
    assert entry["field"] == "user_id"
    assert "'/'" in entry["message"]


@pytest.mark.parametrize(
    ("method", "url", "body", "field", "named"),
    [
        ("post", "/v1/events", {"user_id": "u", "type": "view", "item_id": "a#b"}, "item_id", "#"),
        (
            "post",
            "/v1/events",
            {"events": [{"user_id": "u", "type": "view", "item_id": "i", "order_id": "o 1"}]},
            "events.0.order_id",
            "' '",
        ),
        ("put", "/v1/items/a%20b", {"in_stock": True}, "item_id", "' '"),
        ("put", "/v1/users/a%3Fb", {}, "user_id", "'?'"),
        ("get", "/v1/users/a%3Fb/recommendations", None, "user_id", "'?'"),
        ("get", "/v1/users/u/recommendations?exclude=a%26b", None, "exclude.0", "'&'"),
        ("post", "/v1/offers/evaluate", {"user_id": "a+b"}, "user_id", "'+'"),
        ("get", "/v1/coupons/ABCD-EFGH?user_id=a%2Bb", None, "user_id", "'+'"),
    ],
)
def test_every_id_in_bodies_paths_and_queries_obeys_the_alphabet(
    client: TestClient, method: str, url: str, body: object, field: str, named: str
) -> None:
    kwargs = {} if body is None else {"json": body}
    r = getattr(client, method)(url, headers=H, **kwargs)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(e["field"] == field and named in e["message"] for e in detail), detail


def test_the_openapi_document_shows_the_pattern(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    event = spec["components"]["schemas"]["EventIn"]["properties"]
    assert event["user_id"]["pattern"] == ID_PATTERN
    assert event["item_id"]["anyOf"][0]["pattern"] == ID_PATTERN
    operation = spec["paths"]["/v1/users/{user_id}/recommendations"]["get"]
    [user] = [p for p in operation["parameters"] if p["name"] == "user_id"]
    assert user["schema"]["pattern"] == ID_PATTERN
    put = spec["paths"]["/v1/items/{item_id}"]["put"]
    [item] = [p for p in put["parameters"] if p["name"] == "item_id"]
    assert item["schema"]["pattern"] == ID_PATTERN


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(user_id=st.one_of(ids, st.text(min_size=1, max_size=ID_MAX_LENGTH + 2)))
def test_any_accepted_user_id_round_trips_through_events_and_recommendations(
    client: TestClient, popular_item: str, user_id: str
) -> None:
    event = {"user_id": user_id, "type": "view", "item_id": popular_item}
    posted = client.post("/v1/events", json=event, headers=H)
    if not is_id(user_id):
        assert posted.status_code == 422, posted.text
        assert posted.json()["detail"][0]["field"] == "user_id"
        return
    assert posted.status_code == 200, posted.text
    for path in (user_id, quote(user_id, safe="")):  # as it is, and escaped
        r = client.get(f"/v1/users/{path}/recommendations", headers=H)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == user_id
        assert body["source"] in ("model", "session")  # the view was found under this id


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(item_id=ids)
def test_any_accepted_item_id_round_trips_through_the_catalogue_and_filters(
    client: TestClient, item_id: str
) -> None:
    put = client.put(f"/v1/items/{item_id}", json={"in_stock": True}, headers=H)
    assert put.status_code == 200, put.text
    assert put.json()["item_id"] == item_id
    r = client.get("/v1/users/u/recommendations", params={"exclude": item_id}, headers=H)
    assert r.status_code == 200, r.text
