"""Products the model does not know (issue 14, item 4): recommendable before their first sale,
from their category and attributes, then from the users who viewed them (an item fold-in);
and nothing hidden or out of stock is ever served, whatever the model says."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.artifact import ModelStore, load_artifact
from service.recommend.arrivals import ArrivalIndex, _standardised, _unknown_rank
from service.recommend.recommender import Query, Recommendation, _place
from service.settings import Settings
from service.state import AppState
from training.synthetic.shop import SyntheticShop

FRONTEND = "frontend-key-0123456789"
MARKETING = "marketing-key-0123456789"
F = {"X-API-Key": FRONTEND}
M = {"X-API-Key": MARKETING}
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def make_client(model_dir: Path, database_url: str, **overrides: Any) -> TestClient:
    """An app on ``model_dir``; the periodic refresh is off unless asked (tests call it)."""
    settings = Settings(
        model_dir=model_dir,
        database_url=database_url,
        frontend_keys=[FRONTEND],
        marketing_keys=[MARKETING],
        access_log=False,
        **({"event_poll_seconds": 0.05, "new_items_refresh_seconds": 0} | overrides),
    )
    return TestClient(create_app(settings))


def state(client: TestClient) -> AppState:
    recoffer: AppState = client.app.state.recoffer  # type: ignore[attr-defined]
    return recoffer


@pytest.fixture
def client(small_model_root: Path, database_url: str) -> Iterator[TestClient]:
    with make_client(small_model_root, database_url) as c:
        yield c


@pytest.fixture(scope="module")
def taste(small_model_root: Path, small_shop: SyntheticShop) -> tuple[str, str, str]:
    """(a known user, the category they buy most, a category they never bought)."""
    artifact = load_artifact(ModelStore(small_model_root).current_path())  # type: ignore[arg-type]
    known = {str(u) for u in artifact.arrays["user_ids"].tolist()}
    bought = small_shop.purchases.merge(small_shop.items[["item_id", "category"]], on="item_id")
    by_user = bought.groupby("user_id")["category"].agg(lambda c: Counter(c))
    for user, counts in by_user.items():
        top, n = counts.most_common(1)[0]
        if str(user) in known and n >= 8 and n / sum(counts.values()) > 0.6:
            never = next(c for c in sorted(set(bought["category"])) if c not in counts)
            return str(user), str(top), str(never)
    raise AssertionError("the small shop has no user with one clear taste")


def _items(client: TestClient, user: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get(f"/v1/users/{user}/recommendations", params=params, headers=F)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def _ids(client: TestClient, user: str, **params: Any) -> list[str]:
    return [i["item_id"] for i in _items(client, user, **params)]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- the new_arrivals source -------------------------------------------------------------


def test_a_new_product_of_the_users_category_is_listed_at_once_without_a_retrain(
    client: TestClient, taste: tuple[str, str, str]
) -> None:
    user, liked, other = taste
    version = state(client).recommendations.models.version
    ops = [
        {"op": "upsert", "item_id": "new-far", "category": other, "in_stock": True},
        {"op": "upsert", "item_id": "new-near", "category": liked, "in_stock": True},
    ]
    assert client.post("/v1/items:batch", json={"items": ops}, headers=M).status_code == 200
    items = _items(client, user)
    arrivals = [(p, i) for p, i in enumerate(items) if i["source"] == "new_arrivals"]
    assert len(items) == 10
    # two slots of ten, spread (positions 3 and 6), the one of the user's taste first
    assert [p for p, _ in arrivals] == [3, 6]
    assert [i["item_id"] for _, i in arrivals] == ["new-near", "new-far"]
    assert arrivals[0][1]["reason"] == f"new in {liked}"
    assert {i["source"] for i in items[:3]} == {"model"}
    assert state(client).recommendations.models.version == version  # no model was trained
    # every filter of the query applies to them too
    assert "new-far" not in _ids(client, user, category=liked)
    assert "new-near" in _ids(client, user, category=liked)
    assert "new-near" not in _ids(client, user, exclude=["new-near"])
    assert _ids(client, user, limit=1)[0] != "new-near"  # the first position is never theirs


def test_with_one_slot_a_known_user_gets_the_new_product_of_their_taste(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    user, liked, other = taste
    with make_client(
        small_model_root, f"sqlite:///{tmp_path / 'db.sqlite'}", new_arrivals_slots=1
    ) as client:
        for item, category in (("a-far", other), ("b-near", liked), ("c-far", other)):
            assert client.put(
                f"/v1/items/{item}", json={"category": category}, headers=F
            ).is_success
        items = _items(client, user)
        assert [i["item_id"] for i in items if i["source"] == "new_arrivals"] == ["b-near"]
        # a visitor nobody knows: the newest first (no popularity yet)
        newcomer = _items(client, "someone-new")
        assert [i["item_id"] for i in newcomer if i["source"] == "new_arrivals"] == ["c-far"]


def test_zero_slots_turn_the_source_off(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    user, liked, _ = taste
    with make_client(
        small_model_root, f"sqlite:///{tmp_path / 'db.sqlite'}", new_arrivals_slots=0
    ) as client:
        assert client.put("/v1/items/new-near", json={"category": liked}, headers=F).is_success
        assert all(i["source"] != "new_arrivals" for i in _items(client, user))


def test_a_product_added_longer_ago_than_the_window_is_not_a_new_arrival(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    user, liked, _ = taste
    with make_client(
        small_model_root, f"sqlite:///{tmp_path / 'db.sqlite'}", new_arrivals_days=1
    ) as client:
        assert client.put("/v1/items/new-near", json={"category": liked}, headers=F).is_success
        assert "new-near" in _ids(client, user)
        arrivals = state(client).arrivals
        assert arrivals is not None
        assert arrivals.index is not None
        arrivals.index.created[:] -= 2 * 86_400  # as if it had arrived two days ago
        assert "new-near" not in _ids(client, user)


def test_a_session_gets_new_products_of_what_it_viewed(
    client: TestClient, small_shop: SyntheticShop, taste: tuple[str, str, str]
) -> None:
    _, liked, other = taste
    in_liked = small_shop.items.loc[small_shop.items["category"] == liked, "item_id"].tolist()
    ops = [
        {"op": "upsert", "item_id": "new-far", "category": other},
        {"op": "upsert", "item_id": "new-near", "category": liked},
    ]
    assert client.post("/v1/items:batch", json={"items": ops}, headers=M).status_code == 200
    views = [{"user_id": "visitor", "type": "view", "item_id": i} for i in in_liked[:6]]
    assert client.post("/v1/events", json={"events": views}, headers=F).status_code == 200
    r = client.get("/v1/users/visitor/recommendations", headers=F).json()
    assert r["source"] == "session"
    arrivals = [i["item_id"] for i in r["items"] if i["source"] == "new_arrivals"]
    assert arrivals == ["new-near", "new-far"]


def test_attributes_sharpen_the_content_vector(
    client: TestClient, small_shop: SyntheticShop, taste: tuple[str, str, str]
) -> None:
    _, liked, _ = taste
    s = state(client)
    model = s.recommendations.models.current
    assert model is not None
    assert s.arrivals is not None
    m = model.model
    rows = [m.item_index[i] for i in small_shop.items["item_id"] if i in m.item_index]
    in_liked = [r for r in rows if m.category_of(r) == liked][:3]
    marked = [
        {"op": "upsert", "item_id": m.item_labels[r], "attributes": {"brand": "acme"}}
        for r in in_liked
    ]
    plain = {"op": "upsert", "item_id": "new-plain", "category": liked}
    branded = {
        "op": "upsert",
        "item_id": "new-acme",
        "category": liked,
        "attributes": {"brand": "acme"},
    }
    body = {"items": [*marked, plain, branded]}
    assert client.post("/v1/items:batch", json=body, headers=M).status_code == 200
    s.arrivals.refresh()  # a model item's attributes changed: the means are rebuilt
    index = s.arrivals.index
    assert index is not None
    target = m.scorer.item_factors[in_liked].mean(axis=0)
    acme, plain_vector = index.vector_of("new-acme"), index.vector_of("new-plain")
    assert acme is not None
    assert plain_vector is not None
    assert _cosine(acme, target) > _cosine(plain_vector, target)


# --- the item fold-in --------------------------------------------------------------------


def test_views_by_known_users_fold_the_new_product_in_toward_them(
    client: TestClient, taste: tuple[str, str, str]
) -> None:
    _, liked, other = taste
    s = state(client)
    assert s.arrivals is not None
    model = s.recommendations.models.current
    assert model is not None
    m = model.model
    assert client.put("/v1/items/new-x", json={"category": other}, headers=F).is_success
    index = s.arrivals.index
    assert index is not None
    content = index.vector_of("new-x")
    assert content is not None
    assert not index.folded.any()
    # users of the other taste (their most bought category is `liked`) view and buy it
    viewers = [u for u in list(m.user_index)[:400] if _top_category(m, u) == liked][:12]
    assert len(viewers) >= 6
    events = [{"user_id": u, "type": "view", "item_id": "new-x"} for u in viewers]
    events += [{"user_id": u, "type": "purchase", "item_id": "new-x"} for u in viewers[:3]]
    events.append({"user_id": "not-in-the-model", "type": "view", "item_id": "new-x"})
    assert client.post("/v1/events", json={"events": events}, headers=F).status_code == 200
    s.arrivals.refresh()
    index = s.arrivals.index
    assert index is not None
    folded = index.vector_of("new-x")
    assert folded is not None
    assert bool(index.folded[index.item_ids.index("new-x")])
    them = m.scorer.user_factors[[m.user_index[u] for u in viewers]].mean(axis=0)
    assert _cosine(folded, them) > _cosine(content, them) + 0.2
    assert index.popularity[index.item_ids.index("new-x")] == len(viewers) + 1
    # and so it is now the new arrival the viewers' likes get first
    assert client.put("/v1/items/new-y", json={"category": other}, headers=F).is_success
    assert [i for i in _ids(client, viewers[-1]) if i.startswith("new-")][:1] == ["new-x"]


def _top_category(model: Any, user: str) -> str | None:
    hist = model.scorer.history_counts
    row = model.user_index[user]
    items = hist.indices[hist.indptr[row] : hist.indptr[row + 1]]
    counts = Counter(model.category_of(int(i)) for i in items)
    return counts.most_common(1)[0][0] if counts else None


def test_a_new_model_version_rebuilds_the_vectors(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    import shutil

    user, liked, _ = taste
    root = tmp_path / "models"
    shutil.copytree(small_model_root, root)
    store = ModelStore(root)
    first, second = store.versions()
    store.promote(first)
    with make_client(
        root, f"sqlite:///{tmp_path / 'db.sqlite'}", reload_interval_seconds=0.05
    ) as client:
        s = state(client)
        assert s.arrivals is not None
        assert client.put("/v1/items/new-near", json={"category": liked}, headers=F).is_success
        index = s.arrivals.index
        assert index is not None
        assert (index.version, index.item_ids) == (first, ["new-near"])
        store.promote(second)
        deadline = time.monotonic() + 10
        while s.recommendations.models.version != second or s.arrivals.index is index:
            assert time.monotonic() < deadline, "the new version's vectors were never built"
            time.sleep(0.05)
        rebuilt = s.arrivals.index
        assert rebuilt is not None
        assert (rebuilt.version, rebuilt.item_ids) == (second, ["new-near"])
        assert s.arrivals.for_version(first) is None  # the old version's index is gone
        assert "new-near" in _ids(client, user)


# --- never served: hidden, deleted, out of stock -----------------------------------------


def test_hidden_and_out_of_stock_items_are_in_no_list_of_any_path(
    client: TestClient, taste: tuple[str, str, str]
) -> None:
    user, liked, _ = taste
    s = state(client).recommendations
    views = [{"user_id": "visitor", "type": "view", "item_id": i} for i in _ids(client, user)[:5]]
    assert client.post("/v1/events", json={"events": views}, headers=F).status_code == 200
    paths: dict[str, Callable[[], list[str]]] = {
        "model": lambda: _ids(client, user),
        "novel": lambda: _ids(client, user, exclude_purchased=True),
        "category": lambda: _ids(client, user, category=liked),
        "session": lambda: _ids(client, "visitor"),
        "popular": lambda: _ids(client, "someone-new"),
        "replenishment": lambda: _ids(client, user, purchased_within_days=3650),
        "similar": lambda: [
            i["item_id"]
            for i in client.get(f"/v1/items/{views[0]['item_id']}/similar", headers=F).json()[
                "items"
            ]
        ],
        "top_items": lambda: s.top_items(user, 10),
        "rank": lambda: s.rank(user, everything),
    }
    new = [
        {"op": "upsert", "item_id": "new-gone", "category": liked, "in_stock": False},
        {"op": "upsert", "item_id": "new-hidden", "category": liked},
        {"op": "hide", "item_id": "new-hidden"},
    ]
    assert client.post("/v1/items:batch", json={"items": new}, headers=M).status_code == 200
    everything: list[str] = []
    before = {name: path() for name, path in paths.items()}
    everything = sorted({i for listed in before.values() for i in listed})
    before["rank"] = paths["rank"]()
    assert all(before.values()), before
    # the first two of every path: half out of stock, half hidden (the model still likes them)
    banned = sorted({i for listed in before.values() for i in listed[:2]} - {views[0]["item_id"]})
    ops = [{"op": "upsert", "item_id": i, "in_stock": False} for i in banned[::2]]
    ops += [{"op": "upsert", "item_id": i} for i in banned[1::2]]
    ops += [{"op": "hide", "item_id": i} for i in banned[1::2]]
    assert client.post("/v1/items:batch", json={"items": ops}, headers=M).status_code == 200
    for name, path in paths.items():
        listed = path()
        assert not set(listed) & {*banned, "new-gone", "new-hidden"}, name
    arrivals = state(client).arrivals
    assert arrivals is not None
    assert arrivals.index is not None
    assert not {"new-gone", "new-hidden"} & set(arrivals.index.item_ids)


def test_an_item_out_of_stock_leaves_this_worker_at_once_and_another_within_the_tail(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    user = taste[0]
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    with make_client(small_model_root, url) as one, make_client(small_model_root, url) as two:
        top = _ids(one, user)[0]
        assert top == _ids(two, user)[0]
        assert one.put(f"/v1/items/{top}", json={"in_stock": False}, headers=F).is_success
        assert top not in _ids(one, user)  # this worker: at once
        deadline = time.monotonic() + 10
        while top in _ids(two, user):
            assert time.monotonic() < deadline, "the other worker still lists it"
            time.sleep(0.05)
        # back in stock: back in both
        assert one.put(f"/v1/items/{top}", json={"in_stock": True}, headers=F).is_success
        assert _ids(one, user)[0] == top
        deadline = time.monotonic() + 10
        while _ids(two, user)[0] != top:
            assert time.monotonic() < deadline, "the other worker does not list it again"
            time.sleep(0.05)


def test_a_new_product_added_on_one_worker_reaches_another_through_the_tail(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    user, liked, _ = taste
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    with make_client(small_model_root, url) as one, make_client(small_model_root, url) as two:
        assert one.put("/v1/items/new-near", json={"category": liked}, headers=F).is_success
        deadline = time.monotonic() + 10
        while "new-near" not in _ids(two, user):
            assert time.monotonic() < deadline, "the other worker never lists it"
            time.sleep(0.05)
        assert one.put("/v1/items/new-near", json={"in_stock": False}, headers=F).is_success
        deadline = time.monotonic() + 10
        while "new-near" in _ids(two, user):
            assert time.monotonic() < deadline, "the other worker still lists it"
            time.sleep(0.05)


# --- where they go -----------------------------------------------------------------------


def _r(item: str, source: str) -> Recommendation:
    return Recommendation(item, 0.0, "", source)


@pytest.mark.parametrize(
    ("base", "picks", "positions"),
    [(8, 2, [3, 6]), (9, 1, [5]), (1, 1, [1]), (0, 2, [0, 1]), (3, 2, [1, 3]), (18, 2, [6, 13])],
)
def test_new_arrivals_are_spread_through_the_list_and_never_first_of_a_list(
    base: int, picks: int, positions: list[int]
) -> None:
    placed = _place(
        [_r(f"m{i}", "model") for i in range(base)], [_r(f"n{i}", "new") for i in range(picks)]
    )
    assert [p for p, r in enumerate(placed) if r.source == "new"] == positions
    assert [r.item_id for r in placed if r.source == "model"] == [f"m{i}" for i in range(base)]


# --- the ranking of one index --------------------------------------------------------------


def _index(vectors: np.ndarray, popularity: list[float]) -> ArrivalIndex:
    n = len(vectors)
    created = np.full(n, NOW.timestamp())
    pop = np.asarray(popularity, dtype=np.float64)
    return ArrivalIndex(
        version="v",
        item_ids=[f"n{i}" for i in range(n)],
        vectors=vectors.astype(np.float32),
        folded=np.zeros(n, dtype=bool),
        categories=np.array(["c"] * n, dtype=object),
        created=created,
        confirmed=np.ones(n, dtype=bool),
        popularity=pop,
        days=30,
        slots=2,
        reasons=["new in c"] * n,
        unknown_rank=_unknown_rank(pop, created),
        popularity_z=_standardised(np.log1p(pop)),
    )


def test_among_alike_new_products_the_more_visited_comes_first() -> None:
    vectors = np.tile(np.array([1.0, 0.5]), (4, 1))  # one category: the same content vector
    index = _index(vectors, [0, 7, 2, 0])
    picked = index.pick(Query(user_id="u"), np.array([1.0, 1.0], np.float32), (), NOW, (), 2)
    assert [r.item_id for r in picked] == ["n1", "n2"]
    assert all(r.source == "new_arrivals" and r.reason == "new in c" for r in picked)


def test_the_pick_looks_past_the_best_few_when_the_catalogue_hid_them() -> None:
    vectors = np.linspace(1.0, 0.0, 50)[:, None] * np.ones((1, 2))
    index = _index(vectors, [0] * 50)
    gone = frozenset(f"n{i}" for i in range(20))  # the 20 best: hidden since the index was built
    picked = index.pick(Query(user_id="u"), np.ones(2, np.float32), (), NOW, gone, 2)
    assert [r.item_id for r in picked] == ["n20", "n21"]
    later = NOW + timedelta(days=31)  # and none once they are older than the window
    assert index.pick(Query(user_id="u"), np.ones(2, np.float32), (), later, (), 2) == []


def test_the_periodic_refresh_folds_new_products_in_on_its_own(
    small_model_root: Path, tmp_path: Path, taste: tuple[str, str, str]
) -> None:
    user, liked, _ = taste
    with make_client(
        small_model_root, f"sqlite:///{tmp_path / 'db.sqlite'}", new_items_refresh_seconds=0.05
    ) as client:
        assert client.put("/v1/items/new-near", json={"category": liked}, headers=F).is_success
        view = {"user_id": user, "type": "view", "item_id": "new-near"}
        assert client.post("/v1/events", json=view, headers=F).status_code == 200
        arrivals = state(client).arrivals
        assert arrivals is not None
        deadline = time.monotonic() + 10
        while True:
            index = arrivals.index
            if index is not None and index.folded.any():
                break
            assert time.monotonic() < deadline, "the refresh never folded the product in"
            time.sleep(0.05)
        assert index.popularity.tolist() == [1.0]


def test_without_the_database_the_refresh_keeps_the_content_vectors(
    client: TestClient, taste: tuple[str, str, str]
) -> None:
    arrivals = state(client).arrivals
    assert arrivals is not None

    class Down:
        def item_event_counts(self, item_ids: Any, since: Any) -> list[tuple[str, str, str, int]]:
            raise ConnectionError("database unavailable")

    assert client.put("/v1/items/new-near", json={"category": taste[1]}, headers=F).is_success
    arrivals.events = Down()
    with pytest.raises(ConnectionError):
        arrivals.rebuild()  # a new model version while the database is down
    index = arrivals.index
    assert index is not None
    assert index.item_ids == ["new-near"]
    assert "new-near" in _ids(client, taste[0])
