"""Recommender.rank: the model's order over a given list (coupon products among those viewed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.activity.records import Activity
from service.artifact import ModelStore, load_artifact
from service.recommend.recommender import Recommender
from service.recommend.serving import prepare
from training.synthetic.shop import SyntheticShop


@pytest.fixture(scope="module")
def recommender(small_model_root: Path) -> Recommender:
    artifact = load_artifact(ModelStore(small_model_root).current_path())  # type: ignore[arg-type]
    return Recommender(prepare(artifact))


def _by_cluster(shop: SyntheticShop) -> dict[str, int]:
    return dict(zip(shop.items["item_id"], shop.item_cluster, strict=True))


def test_a_session_ranks_items_of_its_taste_first(
    recommender: Recommender, small_shop: SyntheticShop
) -> None:
    cluster_of = _by_cluster(small_shop)
    popular = list(small_shop.purchases["item_id"].value_counts().index)
    taste = [i for i in popular if cluster_of[i] == 3]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    viewed = [Activity(i, "view", now - timedelta(minutes=n)) for n, i in enumerate(taste[:8])]
    # candidates: five more of the taste, each beside an item of another taste that sells as
    # better (the next one up the popularity list), the other one first
    rank_of = {item: r for r, item in enumerate(popular)}
    mixed = []
    for item in taste[8:13]:
        twin = next(i for i in reversed(popular[: rank_of[item]]) if cluster_of[i] != 3)
        mixed += [twin, item]
    ranked = recommender.rank("a-new-visitor", mixed, viewed, now)
    assert sorted(ranked) == sorted(mixed)
    assert sum(cluster_of[i] == 3 for i in ranked[:5]) >= 4


def test_items_the_model_does_not_know_keep_their_order_at_the_end(
    recommender: Recommender, small_shop: SyntheticShop
) -> None:
    known = list(small_shop.purchases["item_id"].value_counts().index[:4])
    items = ["new-sku-b", known[0], "new-sku-a", known[1]]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    viewed = [Activity(known[2], "view", now), Activity(known[3], "view", now)]
    ranked = recommender.rank("visitor", items, viewed, now)
    assert ranked[2:] == ["new-sku-b", "new-sku-a"]
    assert set(ranked[:2]) == {known[0], known[1]}


def test_a_user_with_no_history_keeps_the_given_order(recommender: Recommender) -> None:
    assert recommender.rank("nobody", ["c", "a", "b"]) == ["c", "a", "b"]


def test_a_known_user_is_ranked_by_their_own_purchases(
    recommender: Recommender, small_shop: SyntheticShop
) -> None:
    model = recommender.model
    user = str(model.artifact.arrays["user_ids"][0])
    own = small_shop.purchases.loc[small_shop.purchases["user_id"] == user, "item_id"]
    bought = own.value_counts().index[0]
    never = next(
        i for i in small_shop.purchases["item_id"].value_counts().index[::-1] if i not in set(own)
    )
    # "buy again" is part of the served recipe: the user's most bought item outranks a rarely
    # bought one they never touched
    assert recommender.rank(user, [never, bought])[0] == bought
