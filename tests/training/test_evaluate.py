"""Temporal split and ranking metrics, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from service.errors import SplitError
from training.data.formats import Purchases
from training.evaluate import build_truth, rank_metrics, temporal_split

SCORES = np.array(
    [[0.9, 0.8, 0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1]],
    dtype=np.float32,
)
# user 0 bought {1, 4} after the cut-off, user 1 {4}, user 2 nothing (left out)
TRUTH = sp.csr_matrix(np.array([[0, 1, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]]))
HISTORY = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 2], [0, 0, 1, 0, 0]]))


def test_metrics_at_2_match_a_hand_computation() -> None:
    m = rank_metrics(SCORES, TRUTH, HISTORY, "all", k=2)
    # user 0: list [0, 1], one hit at rank 2; user 1: list [4, 3], one hit at rank 1
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m["users"] == 2
    assert m["recall"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert m["precision"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["ndcg"] == pytest.approx((ndcg_user0 + 1.0) / 2)
    assert m["hit_rate"] == pytest.approx(1.0)
    assert m["coverage"] == pytest.approx(4 / 5)  # items 0, 1, 3, 4 were shown


def test_novel_removes_bought_items_from_ranking_and_truth() -> None:
    m = rank_metrics(SCORES, TRUTH, HISTORY, "novel", k=2)
    # user 0: item 0 masked, list [1, 4] = both truths; user 1's only truth was bought before
    assert m["users"] == 1
    assert m["recall"] == pytest.approx(1.0)
    assert m["ndcg"] == pytest.approx(1.0)
    assert m["precision"] == pytest.approx(1.0)


def test_recall_is_normalised_by_k_when_more_items_were_bought() -> None:
    scores = np.array([[5, 4, 3, 2, 1]], dtype=np.float32)
    truth = sp.csr_matrix(np.array([[1, 1, 1, 1, 0]]))
    m = rank_metrics(scores, truth, sp.csr_matrix((1, 5)), "all", k=2)
    assert m["recall"] == pytest.approx(1.0)
    assert m["ndcg"] == pytest.approx(1.0)


def test_no_user_with_truth_gives_zeros_not_nan() -> None:
    m = rank_metrics(SCORES, sp.csr_matrix((3, 5)), HISTORY, "all", k=2)
    assert m["users"] == 0
    assert m["recall"] == 0.0


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol"):
        rank_metrics(SCORES, TRUTH, HISTORY, "future", k=2)


def _frame(days: list[int]) -> pd.DataFrame:
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(days, unit="D")
    return pd.DataFrame(
        {"user_id": ["u"] * len(days), "item_id": ["i"] * len(days), "timestamp": ts}
    )


def test_split_puts_the_cutoff_in_train_and_everything_later_in_test() -> None:
    split = temporal_split(_frame([0, 1, 5, 8, 9, 10]), 2)
    assert split.end == pd.Timestamp("2024-01-11")
    assert split.cutoff == pd.Timestamp("2024-01-09")
    assert split.train["timestamp"].max() <= split.cutoff < split.test["timestamp"].min()
    assert len(split.train) == 4
    assert len(split.test) == 2


def test_split_that_leaves_nothing_to_train_on_is_an_error() -> None:
    with pytest.raises(SplitError, match="choose fewer test days"):
        temporal_split(_frame([0, 1, 2]), 30)
    with pytest.raises(SplitError, match="positive"):
        temporal_split(_frame([0, 1, 2]), 0)


def test_truth_keeps_only_users_and_items_known_at_the_cutoff() -> None:
    user_ids, item_ids = pd.Index(["a", "b", "c"]), pd.Index(["x", "y"])
    test = pd.DataFrame(
        {"user_id": ["a", "a", "b", "new", "c"], "item_id": ["x", "new", "y", "x", "y"]}
    )
    user_idx, truth = build_truth(user_ids, item_ids, test["user_id"], test["item_id"])
    assert list(user_idx) == [0, 1, 2]
    assert truth.toarray().tolist() == [[1, 0], [0, 1], [0, 1]]


def test_truth_samples_users_deterministically_when_asked() -> None:
    user_ids, item_ids = pd.Index([f"u{i}" for i in range(50)]), pd.Index(["x"])
    test = pd.DataFrame({"user_id": list(user_ids), "item_id": ["x"] * 50})
    a, _ = build_truth(user_ids, item_ids, test["user_id"], test["item_id"], max_users=10, seed=3)
    b, _ = build_truth(user_ids, item_ids, test["user_id"], test["item_id"], max_users=10, seed=3)
    assert len(a) == 10
    assert list(a) == list(b)


def test_evalset_scores_equal_the_scorer_for_any_recipe(tiny_purchases: Purchases) -> None:
    from service.scoring import Recipe
    from training.encode import encode
    from training.models import ModelParams, fit_stage

    coded, ids = encode(tiny_purchases.frame)
    split = temporal_split(coded, 30)
    stage = fit_stage(split.train, split.cutoff, ModelParams(factors=4, iterations=2), ids)
    ev = stage.evalset(split.test)
    recipe = Recipe(
        weights={"als": 0.5, "ease": 2.0, "repeat": 3.0, "trending": 0.3, "popularity": -0.1},
        repeat_half_life_days=30.0,
        repeat_bonus=0.7,
        input_half_life_days=90.0,
    )
    for _ in range(2):  # the second time from the cache
        expected = stage.scorer().score_users(ev.user_idx, recipe)
        assert ev.scores(recipe) == pytest.approx(expected, abs=1e-4)
