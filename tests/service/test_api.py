"""The HTTP API against a real trained model, on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.settings import Settings
from training.synthetic.shop import SyntheticShop

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
ADMIN = "admin-key-0123456789abcd"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}  # the catalogue is marketing's
A = {"X-API-Key": ADMIN}


def make_client(model_dir: Path, database_url: str, **overrides: Any) -> TestClient:
    options: dict[str, Any] = {
        "model_dir": model_dir,
        "database_url": database_url,
        "frontend_keys": [FRONTEND],
        "marketing_keys": [MARKETING],
        "admin_keys": [ADMIN],
        "reload_interval_seconds": 0.1,
        "event_poll_seconds": 0.05,
        "access_log": False,
    }
    settings = Settings(**{**options, **overrides})
    return TestClient(create_app(settings))


@pytest.fixture
def client(small_model_root: Path, database_url: str) -> Iterator[TestClient]:
    with make_client(small_model_root, database_url) as c:
        yield c


@pytest.fixture(scope="module")
def known_user(small_model_root: Path) -> str:
    store = ModelStore(small_model_root)
    artifact = load_artifact(store.current_path())  # type: ignore[arg-type]
    indptr = artifact.arrays["history_indptr"]
    # a user with a real history (several distinct items)
    counts = indptr[1:] - indptr[:-1]
    return str(artifact.arrays["user_ids"][int(counts.argmax())])


def _bought(client: TestClient, user_id: str) -> set[str]:
    store = ModelStore(Path(client.app.state.recoffer.settings.model_dir))  # type: ignore[attr-defined]
    artifact = load_artifact(store.current_path())  # type: ignore[arg-type]
    row = list(artifact.arrays["user_ids"]).index(user_id)
    indptr, indices = artifact.arrays["history_indptr"], artifact.arrays["history_indices"]
    items = artifact.arrays["item_ids"]
    return {str(items[i]) for i in indices[indptr[row] : indptr[row + 1]]}


# --- recommendations -------------------------------------------------------------------


def test_known_user_gets_model_recommendations_with_reasons(
    client: TestClient, known_user: str
) -> None:
    r = client.get(f"/v1/users/{known_user}/recommendations", headers=F)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "model"
    assert len(body["items"]) == 10
    assert (
        body["model_version"]
        == ModelStore(
            client.app.state.recoffer.settings.model_dir  # type: ignore[attr-defined]
        ).current()
    )
    # the list id starts with the request id the logs carry (service/feedback/token.py)
    list_part = body["request_id"].split(".")[0]
    assert list_part.startswith(r.headers["x-request-id"])
    assert len(list_part) == 24  # 96 random bits
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    reasons = " ".join(i["reason"] for i in body["items"])
    assert "you bought" in reasons or "because you bought" in reasons
    assert len({i["item_id"] for i in body["items"]}) == 10


def test_exclude_purchased_and_exclude_ids_are_honoured(
    client: TestClient, known_user: str
) -> None:
    bought = _bought(client, known_user)
    r = client.get(
        f"/v1/users/{known_user}/recommendations",
        params={"exclude_purchased": "true", "limit": 20},
        headers=F,
    )
    ids = [i["item_id"] for i in r.json()["items"]]
    assert len(ids) == 20
    assert not set(ids) & bought
    first_two = ids[:2]
    r2 = client.get(
        f"/v1/users/{known_user}/recommendations",
        params=[
            ("exclude_purchased", "true"),
            ("exclude", first_two[0]),
            ("exclude", first_two[1]),
        ],
        headers=F,
    )
    ids2 = [i["item_id"] for i in r2.json()["items"]]
    assert not set(ids2) & set(first_two)


def test_category_filter_returns_only_that_category(
    client: TestClient, known_user: str, small_shop: SyntheticShop
) -> None:
    category_of = dict(zip(small_shop.items["item_id"], small_shop.items["category"], strict=True))
    category = small_shop.items["category"].iloc[0]
    r = client.get(
        f"/v1/users/{known_user}/recommendations", params={"category": category}, headers=F
    )
    assert r.status_code == 200
    items = r.json()["items"]
    assert items
    assert all(category_of[i["item_id"]] == category for i in items)


def test_out_of_stock_items_are_never_listed_and_in_stock_asks_for_confirmed_ones(
    client: TestClient, known_user: str
) -> None:
    url = f"/v1/users/{known_user}/recommendations"
    top, second, third = [i["item_id"] for i in client.get(url, headers=F).json()["items"][:3]]
    put = client.put(f"/v1/items/{top}", json={"in_stock": False}, headers=M)
    assert put.status_code == 200, put.text
    assert put.json()["in_stock"] is False
    for params in ({}, {"in_stock": "true"}, {"exclude_purchased": "true"}):
        ids = [i["item_id"] for i in client.get(url, params=params, headers=F).json()["items"]]
        assert top not in ids, params
    assert client.put(f"/v1/items/{third}", json={"in_stock": True}, headers=M).is_success
    everything = [i["item_id"] for i in client.get(url, headers=F).json()["items"]]
    assert second in everything  # stock unknown: listed
    confirmed = client.get(url, params={"in_stock": "true"}, headers=F).json()["items"]
    assert [i["item_id"] for i in confirmed] == [third]  # only what the catalogue confirms
    assert client.put(f"/v1/items/{top}", json={"in_stock": True}, headers=M).is_success
    assert top in [i["item_id"] for i in client.get(url, headers=F).json()["items"]]


def test_replenishment_lists_only_recent_purchases(client: TestClient, known_user: str) -> None:
    bought = _bought(client, known_user)
    r = client.get(
        f"/v1/users/{known_user}/recommendations",
        params={"purchased_within_days": 3650},
        headers=F,
    )
    ids = [i["item_id"] for i in r.json()["items"]]
    assert ids
    assert set(ids) <= bought


def test_unknown_user_without_events_gets_popular_items(client: TestClient) -> None:
    r = client.get("/v1/users/nobody-at-all/recommendations", headers=F)
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "popular"
    assert len(body["items"]) == 10
    assert all(i["source"] == "popular" for i in body["items"])


def test_new_user_who_viewed_one_taste_gets_that_taste(
    client: TestClient, small_shop: SyntheticShop
) -> None:
    cluster_of = dict(zip(small_shop.items["item_id"], small_shop.item_cluster, strict=True))
    target = 3
    counts = small_shop.purchases["item_id"].value_counts()
    taste = [i for i in counts.index if cluster_of[i] == target][:8]
    now = datetime.now(UTC)
    events = [
        {
            "user_id": "fresh-visitor",
            "type": "view",
            "item_id": item,
            "timestamp": (now - timedelta(minutes=10 - n)).isoformat(),
        }
        for n, item in enumerate(taste)
    ]
    assert client.post("/v1/events", json={"events": events}, headers=F).status_code == 200
    r = client.get("/v1/users/fresh-visitor/recommendations", params={"limit": 10}, headers=F)
    body = r.json()
    assert body["source"] == "session"
    share = sum(cluster_of[i["item_id"]] == target for i in body["items"]) / len(body["items"])
    popular = client.get("/v1/users/nobody/recommendations", headers=F).json()["items"]
    popular_share = sum(cluster_of[i["item_id"]] == target for i in popular) / len(popular)
    assert share >= 0.7
    assert share > popular_share + 0.3
    assert any("because you viewed" in i["reason"] for i in body["items"])


def test_similar_items_and_unknown_item(client: TestClient, small_shop: SyntheticShop) -> None:
    item = small_shop.purchases["item_id"].value_counts().index[0]
    r = client.get(f"/v1/items/{item}/similar", params={"limit": 5}, headers=F)
    assert r.status_code == 200
    items = [i["item_id"] for i in r.json()["items"]]
    assert len(items) == 5
    assert item not in items
    missing = client.get("/v1/items/no-such-item/similar", headers=F)
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_item"


# --- events and users ------------------------------------------------------------------


def test_events_single_and_batch_are_stored(client: TestClient) -> None:
    one = client.post(
        "/v1/events", json={"user_id": "u1", "type": "view", "item_id": "i1"}, headers=F
    )
    assert one.status_code == 200, one.text
    assert one.json() == {"accepted": 1, "duplicates": 0}
    batch = {
        "events": [
            {"user_id": "u1", "type": "add_to_cart", "item_id": "i1"},
            {"user_id": "u1", "type": "purchase", "item_id": "i1", "order_id": "o1"},
        ]
    }
    assert client.post("/v1/events", json=batch, headers=F).json() == {
        "accepted": 2,
        "duplicates": 0,
    }


def test_retried_events_are_not_double_counted(client: TestClient) -> None:
    event = {"user_id": "u2", "type": "purchase", "item_id": "i9", "client_event_id": "evt-1"}
    first = client.post("/v1/events", json=event, headers=F).json()
    again = client.post("/v1/events", json=event, headers=F).json()
    assert first == {"accepted": 1, "duplicates": 0}
    assert again == {"accepted": 0, "duplicates": 1}
    mixed = {
        "events": [
            event,
            {**event, "client_event_id": "evt-2"},
            {**event, "client_event_id": "evt-2"},
        ]
    }
    assert client.post("/v1/events", json=mixed, headers=F).json() == {
        "accepted": 1,
        "duplicates": 2,
    }


def test_parallel_retries_store_an_event_once(client: TestClient) -> None:
    event = {"user_id": "u3", "type": "view", "item_id": "i3", "client_event_id": "evt-par"}
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: client.post("/v1/events", json=event, headers=F), range(16))
        )
    assert all(r.status_code == 200 for r in results)
    assert sum(r.json()["accepted"] for r in results) == 1


def test_user_registration_and_update(client: TestClient) -> None:
    r = client.put(
        "/v1/users/new-1",
        json={"signed_up_at": "2026-11-23T09:30:00Z", "attributes": {"country": "UK"}},
        headers=F,
    )
    assert r.status_code == 200, r.text
    assert r.json()["signed_up_at"].startswith("2026-11-23T09:30:00")
    r2 = client.put("/v1/users/new-1", json={"attributes": {"country": "FR"}}, headers=F)
    assert r2.json()["attributes"] == {"country": "FR"}
    assert r2.json()["signed_up_at"].startswith("2026-11-23T09:30:00")


# --- bad input: 4xx naming the field, never 500 ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("get", "/v1/users/u/recommendations?limit=0", None, "limit"),
        ("get", "/v1/users/u/recommendations?limit=101", None, "limit"),
        ("get", "/v1/users/u/recommendations?limit=ten", None, "limit"),
        (
            "get",
            "/v1/users/u/recommendations?purchased_within_days=-1",
            None,
            "purchased_within_days",
        ),
        ("post", "/v1/events", {"user_id": "u", "type": "teleport", "item_id": "i"}, "type"),
        ("post", "/v1/events", {"user_id": "u", "type": "view"}, "item_id"),
        ("post", "/v1/events", {"user_id": "", "type": "view", "item_id": "i"}, "user_id"),
        (
            "post",
            "/v1/events",
            {"user_id": "u", "type": "view", "item_id": "i", "extra": 1},
            "extra",
        ),
        (
            "post",
            "/v1/events",
            {"user_id": "u", "type": "view", "item_id": "i", "timestamp": "2026-01-01T10:00:00"},
            "timestamp",
        ),
        (
            "post",
            "/v1/events",
            {"user_id": "u", "type": "view", "item_id": "i", "timestamp": "3026-01-01T10:00:00Z"},
            "timestamp",
        ),
        ("post", "/v1/events", {"events": []}, "events"),
        ("put", "/v1/users/u", {"signed_up_at": "yesterday"}, "signed_up_at"),
        ("put", "/v1/items/i", {"price": -3}, "price"),
        ("put", "/v1/users/u", {"signed_up_at": "9999-12-31T23:30:00-01:00"}, "signed_up_at"),
        (
            "post",
            "/v1/events",
            {
                "user_id": "u",
                "type": "view",
                "item_id": "i",
                "timestamp": "0001-01-01T00:00:00+01:00",
            },
            "timestamp",
        ),
        ("put", "/v1/items/i", {"name": "a\u0000b"}, "name"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(
    client: TestClient, method: str, url: str, body: Any, field: str
) -> None:
    key = M if url.startswith("/v1/items/") and method == "put" else F  # the catalogue's role
    r = getattr(client, method)(url, headers=key, **({"json": body} if body is not None else {}))
    assert 400 <= r.status_code < 500, r.text
    assert field in r.text


def test_batches_over_the_limit_and_huge_bodies_are_refused(client: TestClient) -> None:
    events = [{"user_id": "u", "type": "view", "item_id": f"i{n}"} for n in range(1001)]
    assert client.post("/v1/events", json={"events": events}, headers=F).status_code == 422
    huge = b'{"user_id": "' + b"x" * 2_000_000 + b'"}'
    r = client.post("/v1/events", content=huge, headers={**F, "content-type": "application/json"})
    assert r.status_code == 413
    assert (
        client.post(
            "/v1/events", content=b"{not json", headers={**F, "content-type": "application/json"}
        ).status_code
        == 422
    )


# --- auth ------------------------------------------------------------------------------


def test_keys_and_roles(client: TestClient, known_user: str) -> None:
    url = f"/v1/users/{known_user}/recommendations"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"X-API-Key": "wrong-key-wrong-key"}).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {FRONTEND}"}).status_code == 200
    assert client.get(url, headers=A).status_code == 200
    assert client.get(url, headers={"X-API-Key": MARKETING}).status_code == 403
    assert client.post("/v1/model/reload", headers=F).status_code == 403
    assert client.post("/v1/model/reload", headers=A).status_code == 200
    assert client.get("/v1/model", headers={"X-API-Key": MARKETING}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_settings_refuse_a_server_without_keys_and_dev_mode_off_loopback(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no API keys configured"):
        Settings(model_dir=tmp_path)
    with pytest.raises(ValidationError, match="loopback"):
        Settings(model_dir=tmp_path, auth_disabled=True, host="0.0.0.0")
    with pytest.raises(ValidationError, match="16 characters"):
        Settings(model_dir=tmp_path, frontend_keys="short")
    assert Settings(model_dir=tmp_path, auth_disabled=True).auth_disabled


# --- model: info, reload, hot swap -----------------------------------------------------


def test_model_endpoint_describes_the_served_version(client: TestClient) -> None:
    body = client.get("/v1/model", headers=F).json()
    store = ModelStore(client.app.state.recoffer.settings.model_dir)  # type: ignore[attr-defined]
    assert body["version"] == store.current()
    assert set(body["metrics"]) == {"all", "novel"}
    assert body["candidates_precomputed"] is True


@pytest.fixture
def two_versions(small_model_root: Path, tmp_path: Path) -> tuple[Path, ModelStore, str, str]:
    """A private copy of the model root with its older version promoted."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    store = ModelStore(root)
    first, second = store.versions()
    store.promote(first)
    return root, store, first, second


def test_new_current_version_is_picked_up_under_load_without_errors(
    two_versions: tuple[Path, ModelStore, str, str], database_url: str, known_user: str
) -> None:
    root, store, first, second = two_versions
    seen: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    with make_client(root, database_url, reload_interval_seconds=0.05) as c:
        url = f"/v1/users/{known_user}/recommendations"
        deadline = time.monotonic() + 3.0

        def hammer(_: int) -> None:
            while time.monotonic() < deadline:
                r = c.get(url, headers=F)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    seen[r.json()["model_version"]] += 1

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(hammer, n) for n in range(4)]
            for target in (second, first, second):
                time.sleep(0.6)
                store.promote(target)
            for f in futures:
                f.result()
        time.sleep(0.3)
        assert c.get("/v1/model", headers=F).json()["version"] == second
    assert set(statuses) == {200}
    assert set(seen) == {first, second}


def test_corrupt_new_version_is_refused_and_the_old_one_keeps_serving(
    two_versions: tuple[Path, ModelStore, str, str], database_url: str, known_user: str
) -> None:
    root, store, first, second = two_versions
    factors = store.version_path(second) / "item_factors.npy"
    factors.chmod(0o644)  # published read-only: undone, as a careless operator would
    factors.write_bytes(factors.read_bytes()[:-100])
    with make_client(root, database_url) as c:
        store.promote(second)
        r = c.post("/v1/model/reload", headers=A)
        assert r.status_code == 409
        assert "item_factors.npy" in r.json()["detail"]
        assert c.get("/v1/model", headers=F).json()["version"] == first
        assert c.get(f"/v1/users/{known_user}/recommendations", headers=F).status_code == 200
        metrics = c.get("/metrics").text
        assert 'recoffer_model_loads_total{outcome="failed"}' in metrics


def test_without_a_model_events_are_accepted_and_popularity_comes_from_them(
    database_url: str, tmp_path: Path
) -> None:
    with make_client(tmp_path / "empty-models", database_url) as c:
        r = c.get("/v1/users/u/recommendations", headers=F)
        assert r.status_code == 503
        assert r.json()["error"] == "model_unavailable"
        assert c.get("/readyz").status_code == 200  # no model yet, but events can be stored
        for user in ("a", "b", "c"):
            c.post(
                "/v1/events",
                json={"user_id": user, "type": "purchase", "item_id": "hit"},
                headers=F,
            )
        c.post(
            "/v1/events", json={"user_id": "a", "type": "purchase", "item_id": "other"}, headers=F
        )
        body = c.get("/v1/users/u/recommendations", headers=F).json()
        assert body["source"] == "popular"
        assert [i["item_id"] for i in body["items"]] == ["hit", "other"]


# --- observability ---------------------------------------------------------------------


def test_metrics_expose_latency_sources_events_and_model(
    client: TestClient, known_user: str
) -> None:
    client.get(f"/v1/users/{known_user}/recommendations", headers=F)
    client.get("/v1/users/stranger/recommendations", headers=F)
    client.post("/v1/events", json={"user_id": "m", "type": "view", "item_id": "i"}, headers=F)
    text = client.get("/metrics").text
    assert 'recoffer_recommendations_total{source="model"} 1.0' in text
    assert 'recoffer_recommendations_total{source="popular"} 1.0' in text
    assert 'recoffer_events_ingested_total{type="view"} 1.0' in text
    assert 'route="/v1/users/{user_id}/recommendations"' in text
    assert "recoffer_model_info{version=" in text
    assert "recoffer_model_age_seconds" in text
    ready = client.get("/readyz").json()
    assert ready["ready"] is True
    assert ready["database"] is True


def test_openapi_documents_the_endpoints_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/events",
        "/v1/users/{user_id}",
        "/v1/users/{user_id}/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/model",
        "/v1/model/reload",
    ):
        assert path in paths
    assert "examples" in str(paths["/v1/events"]["post"])
    assert client.get("/docs").status_code == 200


def test_nan_and_chunked_oversized_bodies_are_refused(client: TestClient) -> None:
    nan = b'{"attributes": {"score": NaN}}'
    r = client.put("/v1/users/u", content=nan, headers={**F, "content-type": "application/json"})
    assert r.status_code == 422
    assert "attributes" in r.text

    def chunks() -> Iterator[bytes]:
        yield b'{"user_id": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    big = client.post(
        "/v1/events", content=chunks(), headers={**F, "content-type": "application/json"}
    )
    assert big.status_code == 413


def test_development_mode_answers_loopback_clients_only(
    small_model_root: Path, tmp_path: Path, known_user: str
) -> None:
    settings = Settings(
        model_dir=small_model_root,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        auth_disabled=True,
        access_log=False,
    )
    url = f"/v1/users/{known_user}/recommendations"
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as local:
        assert local.get(url).status_code == 200
        assert local.post("/v1/model/reload").status_code == 200  # everyone is admin
    with TestClient(create_app(settings), client=("203.0.113.9", 50000)) as remote:
        r = remote.get(url)
        assert r.status_code == 403
        assert "loopback" in r.json()["detail"]
