"""Model components: history matrices, ALS (cold and warm), EASE, default candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data.formats import Purchases
from training.encode import encode
from training.evaluate import temporal_split
from training.models import (
    ModelParams,
    build_history,
    default_candidates,
    fit_ease,
    fit_stage,
    reindex_factors,
)


def test_history_counts_distinct_orders_and_days_since_last_purchase() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b"],
            "item_id": ["x", "x", "x", "y"],
            "order_id": ["o1", "o1", "o2", "o3"],  # two lines of x in o1 count once
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-01-05", "2024-01-09"]),
        }
    )
    coded, ids = encode(frame)
    user_codes, item_codes, counts, ages = build_history(coded, pd.Timestamp("2024-01-10"))
    assert list(ids.users[user_codes]) == ["a", "b"]
    assert list(ids.items[item_codes]) == ["x", "y"]
    assert counts.toarray().tolist() == [[2, 0], [0, 1]]
    assert ages[0, 0] == pytest.approx(5.0)
    assert ages[1, 1] == pytest.approx(1.0)
    assert np.array_equal(counts.indices, ages.indices)


def test_ease_reconstructs_co_purchases_with_zero_diagonal(tiny_purchases: Purchases) -> None:
    coded, _ = encode(tiny_purchases.frame)
    _, _, counts, _ = build_history(coded, coded["timestamp"].max())
    weights = fit_ease(counts, 50.0)
    assert weights.shape == (counts.shape[1], counts.shape[1])
    assert np.all(np.diag(weights) == 0)
    assert np.isfinite(weights).all()


def test_als_fit_is_deterministic_for_a_seed(tiny_purchases: Purchases) -> None:
    params = ModelParams(factors=8, iterations=3, threads=1)
    coded, ids = encode(tiny_purchases.frame)
    end = coded["timestamp"].max()
    a = fit_stage(coded, end, params, ids, with_ease=False)
    b = fit_stage(coded, end, params, ids, with_ease=False)
    assert np.array_equal(a.user_factors, b.user_factors)
    assert a.ease_b is None


def test_warm_start_reuses_known_factors_and_starts_new_ids_small() -> None:
    old_codes = np.array([10, 20])
    old = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    new = reindex_factors(old_codes, old, np.array([20, 30, 10]), seed=0)
    assert new[0].tolist() == [3.0, 4.0]
    assert new[2].tolist() == [1.0, 2.0]
    assert np.all(np.abs(new[1]) < 0.01)


def test_warm_started_stage_is_as_good_as_a_cold_one(small_purchases: Purchases) -> None:
    params = ModelParams(
        factors=16, iterations=15, warm_iterations=2, regularization=0.1, threads=1
    )
    coded, ids = encode(small_purchases.frame)
    outer = temporal_split(coded, 30)
    inner = temporal_split(outer.train, 30)
    earlier = fit_stage(inner.train, inner.cutoff, params, ids, with_ease=False)
    warm = fit_stage(outer.train, outer.cutoff, params, ids, warm_from=earlier, with_ease=False)
    cold = fit_stage(outer.train, outer.cutoff, params, ids, with_ease=False)
    als = default_candidates(with_ease=False)["als"]["novel"]
    score = {
        name: s.evalset(outer.test).evaluate(als, "novel")["ndcg"]
        for name, s in {"warm": warm, "cold": cold}.items()
    }
    assert score["warm"] >= 0.9 * score["cold"]


def test_components_carry_signal_on_the_synthetic_shop(small_purchases: Purchases) -> None:
    coded, ids = encode(small_purchases.frame)
    split = temporal_split(coded, 30)
    stage = fit_stage(split.train, split.cutoff, ModelParams(factors=16, regularization=0.1), ids)
    ev = stage.evalset(split.test)
    cands = default_candidates(with_ease=True)
    ndcg = {n: ev.evaluate(r["novel"], "novel")["ndcg"] for n, r in cands.items() if "novel" in r}
    assert ndcg["als"] > 1.5 * ndcg["popularity"]
    assert ndcg["ease"] > 1.5 * ndcg["popularity"]
    repeat = ev.evaluate(cands["repeat"]["all"], "all")["ndcg"]
    assert repeat > ev.evaluate(cands["popularity"]["all"], "all")["ndcg"]


def test_params_refuse_nonsense_and_round_trip() -> None:
    with pytest.raises(ValueError, match="weighting"):
        ModelParams(weighting="magic")
    with pytest.raises(ValueError, match=">= 1"):
        ModelParams(factors=0)
    params = ModelParams(factors=12, ease_lambda=10.0)
    assert ModelParams.from_dict({**params.to_dict(), "unknown_future_key": 1}) == params


def test_repeat_is_no_candidate_for_novel() -> None:
    cands = default_candidates(with_ease=False)
    assert "novel" not in cands["repeat"]
    assert "ease" not in cands
    assert not cands["blend"]["all"].uses("ease")
