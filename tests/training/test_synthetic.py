"""The synthetic shop: deterministic, well-formed, and carrying the signals the models need."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from training.synthetic.shop import SyntheticShop, generate_shop, write_shop
from training.synthetic.spec import PRESETS, ShopSpec, spec_for

PURCHASE_COLUMNS = ["user_id", "item_id", "timestamp", "quantity", "price", "order_id"]
ITEM_COLUMNS = ["item_id", "category", "price", "name"]
USER_COLUMNS = ["user_id", "signed_up_at"]
EVENT_COLUMNS = ["user_id", "item_id", "type", "timestamp"]


@pytest.fixture(scope="module")
def tiny() -> SyntheticShop:
    return generate_shop(spec_for("tiny"))


@pytest.fixture(scope="module")
def small() -> SyntheticShop:
    return generate_shop(spec_for("small"))


@pytest.fixture(scope="module")
def many_new_users() -> SyntheticShop:
    """Enough new users for their view statistics to be stable."""
    return generate_shop(dataclasses.replace(spec_for("small"), new_users=1_500))


def _user_index(shop: SyntheticShop, ids: pd.Series) -> np.ndarray:
    index: np.ndarray = ids.str[1:].astype(np.int64).to_numpy()
    return index


def _day_one_distinct_views(shop: SyntheticShop) -> pd.Series:
    """Distinct products each new user viewed within 24 h of sign-up (0 if none)."""
    new_ids = shop.users["user_id"].iloc[-shop.spec.new_users :]
    views = shop.events[shop.events["type"] == "view"].merge(shop.users, on="user_id")
    views = views[views["timestamp"] - views["signed_up_at"] <= pd.Timedelta(hours=24)]
    return views.groupby("user_id")["item_id"].nunique().reindex(new_ids, fill_value=0)


# --- presets and spec -----------------------------------------------------------------------


def test_presets_have_the_documented_sizes() -> None:
    sizes = {
        name: (spec.n_users, spec.n_items, spec.n_interactions) for name, spec in PRESETS.items()
    }
    assert sizes == {
        "tiny": (200, 100, 3_000),
        "small": (2_000, 1_000, 40_000),
        "demo": (5_000, 2_000, 150_000),
        "100k": (10_000, 4_000, 100_000),
        "1m": (50_000, 15_000, 1_000_000),
        "2m": (100_000, 20_000, 2_000_000),
        "10m": (500_000, 50_000, 10_000_000),
    }


def test_the_default_spec_is_the_small_preset() -> None:
    assert ShopSpec() == spec_for("small")


def test_unknown_preset_is_a_value_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown shop preset 'huge'.*'tiny'"):
        spec_for("huge")


@pytest.mark.parametrize(
    "changes",
    [
        {"new_users": 200, "n_users": 200},
        {"n_categories": 2, "n_taste_clusters": 4},
        {"n_items": 5, "n_categories": 8},
        {"high_intent_share": 1.5},
        {"taste_share": 0.8, "second_taste_share": 0.3},
        {"days": 1},
        {"end": "2025-06-30T00:00:00+02:00"},
    ],
)
def test_impossible_specs_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="invalid ShopSpec"):
        dataclasses.replace(spec_for("tiny"), **changes)


def test_tiny_generates_fast_enough_for_unit_tests() -> None:
    spec = spec_for("tiny")
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        generate_shop(spec)
        best = min(best, time.perf_counter() - started)
    assert best < 0.2


# --- determinism ----------------------------------------------------------------------------


def test_same_spec_gives_the_same_shop(tiny: SyntheticShop) -> None:
    again = generate_shop(spec_for("tiny"))
    for name in ("purchases", "items", "users", "events"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(tiny, name))
    np.testing.assert_array_equal(again.user_cluster, tiny.user_cluster)
    np.testing.assert_array_equal(again.item_cluster, tiny.item_cluster)
    assert again.now == tiny.now


def test_another_seed_gives_another_shop(tiny: SyntheticShop) -> None:
    other = generate_shop(dataclasses.replace(spec_for("tiny"), seed=7))
    assert not other.purchases.equals(tiny.purchases)
    assert not other.events.equals(tiny.events)


# --- schema ---------------------------------------------------------------------------------


def test_purchases_have_the_training_schema(tiny: SyntheticShop) -> None:
    purchases = tiny.purchases
    assert list(purchases.columns) == PURCHASE_COLUMNS
    assert len(purchases) == tiny.spec.n_interactions
    for column in ("user_id", "item_id", "order_id"):
        assert pd.api.types.is_string_dtype(purchases[column]), column
    assert purchases["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert purchases["quantity"].dtype == np.dtype("int64")
    assert purchases["price"].dtype == np.dtype("float64")
    assert (purchases["quantity"] >= 1).all()
    assert (purchases["price"] > 0).all()
    assert purchases["timestamp"].is_monotonic_increasing
    assert purchases["timestamp"].max() <= tiny.now
    assert purchases["timestamp"].min() >= tiny.now - pd.Timedelta(days=tiny.spec.days)
    assert not purchases.isna().any().any()


def test_items_users_and_events_have_their_schemas(tiny: SyntheticShop) -> None:
    assert list(tiny.items.columns) == ITEM_COLUMNS
    assert list(tiny.users.columns) == USER_COLUMNS
    assert list(tiny.events.columns) == EVENT_COLUMNS
    assert tiny.items["price"].dtype == np.dtype("float64")
    assert (tiny.items["price"] > 0).all()
    assert tiny.users["signed_up_at"].dtype == np.dtype("datetime64[ns]")
    assert tiny.events["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert set(tiny.events["type"]) == {"view", "add_to_cart", "purchase"}
    assert len(tiny.user_cluster) == len(tiny.users) == tiny.spec.n_users
    assert len(tiny.item_cluster) == len(tiny.items) == tiny.spec.n_items
    assert set(tiny.item_cluster) == set(range(tiny.spec.n_taste_clusters))


def test_ids_are_zero_padded_strings_that_resolve(tiny: SyntheticShop) -> None:
    purchases = tiny.purchases
    assert purchases["user_id"].str.fullmatch(r"u\d{6}").all()
    assert purchases["item_id"].str.fullmatch(r"i\d{5}").all()
    assert purchases["order_id"].str.fullmatch(r"o\d{7}").all()
    assert tiny.items["category"].str.fullmatch(r"c\d{2}").all()
    assert tiny.users["user_id"].tolist() == [f"u{k:06d}" for k in range(tiny.spec.n_users)]
    assert tiny.items["item_id"].tolist() == [f"i{k:05d}" for k in range(tiny.spec.n_items)]
    assert purchases["user_id"].isin(tiny.users["user_id"]).all()
    assert purchases["item_id"].isin(tiny.items["item_id"]).all()
    assert tiny.events["item_id"].isin(tiny.items["item_id"]).all()


def test_line_prices_are_the_catalogue_prices(tiny: SyntheticShop) -> None:
    catalogue = tiny.items.set_index("item_id")["price"]
    expected = catalogue.loc[tiny.purchases["item_id"]].to_numpy()
    np.testing.assert_array_equal(tiny.purchases["price"].to_numpy(), expected)


def test_orders_group_lines_of_one_user_at_one_time(small: SyntheticShop) -> None:
    orders = small.purchases.groupby("order_id")
    assert (orders["user_id"].nunique() == 1).all()
    assert (orders["timestamp"].nunique() == 1).all()
    assert orders.size().mean() > 1.5
    assert not small.purchases.duplicated(["user_id", "item_id", "order_id"]).any()


# --- the signals ----------------------------------------------------------------------------


def test_item_popularity_is_power_law(small: SyntheticShop) -> None:
    counts = small.purchases["item_id"].value_counts().to_numpy()
    top_tenth = counts[: small.spec.n_items // 10].sum() / counts.sum()
    assert top_tenth > 0.4


def test_some_users_buy_a_lot(small: SyntheticShop) -> None:
    rows_per_user = small.purchases["user_id"].value_counts()
    assert rows_per_user.max() > 10 * rows_per_user.median()


def test_users_buy_again_what_they_bought_before(small: SyntheticShop) -> None:
    purchases = small.purchases
    first_order = purchases.groupby(["user_id", "item_id"])["order_id"].transform("min")
    rebought = purchases["order_id"] != first_order
    assert rebought.mean() > 0.2
    buyers_again = purchases[rebought]["user_id"].nunique() / purchases["user_id"].nunique()
    assert buyers_again > 0.5


def test_users_buy_mostly_from_their_taste_cluster(small: SyntheticShop) -> None:
    users = _user_index(small, small.purchases["user_id"])
    items = _user_index(small, small.purchases["item_id"])
    own = small.user_cluster[users] == small.item_cluster[items]
    cluster_item_share = np.bincount(small.item_cluster) / small.spec.n_items
    chance = cluster_item_share[small.user_cluster[users]].mean()
    assert own.mean() > 0.6
    assert own.mean() > 3 * chance


def test_collaborative_filtering_beats_popularity_on_a_temporal_split(
    small: SyntheticShop,
) -> None:
    """Item-kNN on co-purchases finds novel items far better than "most popular"."""
    purchases = small.purchases
    cut_off = purchases["timestamp"].max() - pd.Timedelta(days=30)
    train = purchases[purchases["timestamp"] <= cut_off]
    test = purchases[purchases["timestamp"] > cut_off]
    user_codes, user_ids = pd.factorize(train["user_id"])
    item_codes, item_ids = pd.factorize(train["item_id"])
    seen = sp.csr_matrix(
        (np.ones(len(train)), (user_codes, item_codes)), shape=(len(user_ids), len(item_ids))
    )
    seen.data[:] = 1.0
    test = test[test["user_id"].isin(user_ids) & test["item_id"].isin(item_ids)]
    truth = sp.csr_matrix(
        (
            np.ones(len(test)),
            (user_ids.get_indexer(test["user_id"]), item_ids.get_indexer(test["item_id"])),
        ),
        shape=seen.shape,
    )
    truth.data[:] = 1.0
    novel = (truth - truth.multiply(seen)).toarray()
    evaluated = np.flatnonzero(novel.sum(axis=1) > 0)
    assert len(evaluated) > 100

    def recall_at_10(scores: np.ndarray) -> float:
        scores = np.where(seen[evaluated].toarray() > 0, -np.inf, scores)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        hits = np.take_along_axis(novel[evaluated], top, axis=1).sum(axis=1)
        return float(np.mean(hits / np.minimum(10, novel[evaluated].sum(axis=1))))

    popularity = np.asarray(seen.sum(axis=0)).ravel()
    co_bought = (seen.T @ seen).toarray()
    norms = np.sqrt(np.diag(co_bought)) + 1e-9
    np.fill_diagonal(co_bought, 0.0)
    similarity = co_bought / norms[:, None] / norms[None, :]
    item_knn = seen[evaluated] @ similarity
    popular = np.broadcast_to(popularity, (len(evaluated), len(popularity)))
    assert recall_at_10(item_knn) > 1.5 * recall_at_10(popular)


# --- new users ------------------------------------------------------------------------------


def test_new_users_signed_up_recently_and_have_no_purchase_history(tiny: SyntheticShop) -> None:
    new_users = tiny.users.iloc[-tiny.spec.new_users :]
    assert (new_users["signed_up_at"] >= tiny.now - pd.Timedelta(days=2)).all()
    assert (new_users["signed_up_at"] < tiny.now).all()
    assert not tiny.purchases["user_id"].isin(new_users["user_id"]).any()
    assert set(tiny.events["user_id"]) <= set(new_users["user_id"])


def test_nobody_acts_before_signing_up(tiny: SyntheticShop) -> None:
    signed_up = tiny.users.set_index("user_id")["signed_up_at"]
    for frame in (tiny.purchases, tiny.events):
        joined = signed_up.loc[frame["user_id"]].to_numpy()
        assert (frame["timestamp"].to_numpy() >= joined).all()
    assert (tiny.events["timestamp"] <= tiny.now).all()


def test_a_quarter_of_new_users_view_more_than_ten_products_on_day_one(
    many_new_users: SyntheticShop,
) -> None:
    distinct = _day_one_distinct_views(many_new_users)
    assert (distinct > 10).mean() == pytest.approx(many_new_users.spec.high_intent_share, abs=0.03)
    # Like the Taobao log: median 5, 90th percentile 24, a long tail.
    assert 3 <= distinct.median() <= 6
    assert 15 <= distinct.quantile(0.9) <= 35
    assert distinct.min() >= 1
    assert distinct.max() <= 136


def test_new_users_view_products_of_their_taste(many_new_users: SyntheticShop) -> None:
    views = many_new_users.events[many_new_users.events["type"] == "view"]
    users = _user_index(many_new_users, views["user_id"])
    items = _user_index(many_new_users, views["item_id"])
    own = many_new_users.user_cluster[users] == many_new_users.item_cluster[items]
    assert own.mean() > 0.7


def test_a_minority_of_new_users_buy_what_they_put_in_the_cart(
    many_new_users: SyntheticShop,
) -> None:
    events = many_new_users.events
    purchases = events[events["type"] == "purchase"]
    buyers = purchases["user_id"].nunique() / many_new_users.spec.new_users
    assert 0.05 < buyers < 0.5
    carts = events[events["type"] == "add_to_cart"]
    bought = purchases.merge(carts, on=["user_id", "item_id"], suffixes=("", "_cart"))
    assert len(bought.drop_duplicates(["user_id", "item_id"])) == len(purchases)
    assert (bought["timestamp"] >= bought["timestamp_cart"]).all()


def test_a_shop_without_new_users_has_an_empty_event_stream() -> None:
    shop = generate_shop(dataclasses.replace(spec_for("tiny"), new_users=0))
    assert shop.events.empty
    assert list(shop.events.columns) == EVENT_COLUMNS
    assert len(shop.purchases) == shop.spec.n_interactions


# --- files ----------------------------------------------------------------------------------


def _read(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(path)
    frame = pd.read_csv(path)
    for column in ("timestamp", "signed_up_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column]).astype("datetime64[ns]")
    return frame


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_shop_round_trips(tiny: SyntheticShop, tmp_path: Path, fmt: str) -> None:
    directory = tmp_path / "nested" / "shop"
    write_shop(generate_shop(spec_for("tiny")), directory, fmt)  # type: ignore[arg-type]
    paths = write_shop(tiny, directory, fmt)  # type: ignore[arg-type]  # replaces the files
    assert set(paths) == {"purchases", "items", "users", "events"}
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"{n}.{fmt}" for n in paths)
    for name, path in paths.items():
        expected = getattr(tiny, name)
        pd.testing.assert_frame_equal(_read(path, fmt), expected, check_dtype=fmt == "parquet")


def test_write_shop_refuses_an_unknown_format(tiny: SyntheticShop, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        write_shop(tiny, tmp_path, "json")  # type: ignore[arg-type]
