"""Scoring recipes: the arithmetic the trainer evaluates and the service serves."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from service.scoring import Recipe, Scorer


def _scorer(ease: bool = True, signals: bool = True) -> Scorer:
    rng = np.random.default_rng(0)
    n_users, n_items = 3, 6
    counts = sp.csr_matrix(
        np.array([[3, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=np.float32)
    )
    ages = counts.copy()
    ages.data = np.array([10, 400, 5, 1, 2, 3, 4], dtype=np.float32)
    return Scorer(
        item_factors=rng.random((n_items, 4), dtype=np.float32),
        user_factors=rng.random((n_users, 4), dtype=np.float32),
        history_counts=counts,
        history_age_days=ages,
        popularity=np.array([5, 4, 3, 2, 1, 0], dtype=np.float32),
        trending=np.array([0, 1, 2, 3, 4, 5], dtype=np.float32),
        ease_b=rng.random((n_items, n_items), dtype=np.float32) if ease else None,
        signal_item_factors=rng.random((n_items, 4), dtype=np.float32) if signals else None,
        signal_user_factors=rng.random((n_users, 4), dtype=np.float32) if signals else None,
    )


def test_repeat_ranks_frequent_recent_purchases_first_and_nothing_else() -> None:
    scores = _scorer().score_users(np.array([0]), Recipe(weights={"repeat": 1.0}))[0]
    # item 0: bought 3 times, 10 days ago; item 2: once, 400 days ago; others never
    assert scores[0] == pytest.approx(1.0)
    assert 0 < scores[2] < scores[0]
    assert np.all(scores[[1, 3, 4, 5]] == 0)


def test_repeat_bonus_lifts_every_bought_item() -> None:
    base = _scorer().score_users(np.array([0]), Recipe(weights={"repeat": 1.0}))[0]
    bonus = _scorer().score_users(np.array([0]), Recipe(weights={"repeat": 1.0}, repeat_bonus=0.5))[
        0
    ]
    assert bonus[[0, 2]] == pytest.approx(base[[0, 2]] + 0.5)
    assert np.all(bonus[[1, 3, 4, 5]] == 0)


def test_popularity_and_trending_order_the_catalogue() -> None:
    scorer = _scorer()
    pop = scorer.score_users(np.array([1]), Recipe(weights={"popularity": 1.0}))[0]
    trend = scorer.score_users(np.array([1]), Recipe(weights={"trending": 1.0}))[0]
    assert list(np.argsort(-pop)) == [0, 1, 2, 3, 4, 5]
    assert list(np.argsort(-trend)) == [5, 4, 3, 2, 1, 0]


def test_als_component_is_the_standardised_dot_product() -> None:
    scorer = _scorer()
    scores = scorer.score_users(np.array([2]), Recipe(weights={"als": 1.0}))[0]
    raw = scorer.user_factors[2] @ scorer.item_factors.T
    expected = (raw - raw.mean()) / raw.std()
    assert scores == pytest.approx(expected, abs=1e-5)


def test_a_recipe_is_the_weighted_sum_of_its_components() -> None:
    scorer = _scorer()
    users = np.array([0, 1, 2])
    recipe = Recipe(
        weights={
            "als": 0.7,
            "als_signals": 0.9,
            "ease": 1.3,
            "repeat": 2.0,
            "trending": 0.4,
            "popularity": 0.1,
        },
        repeat_half_life_days=30.0,
        repeat_bonus=0.25,
        input_half_life_days=90.0,
    )
    total = scorer.score_users(users, recipe)
    parts = sum(
        w
        * scorer.score_users(
            users,
            Recipe(
                weights={name: 1.0},
                repeat_half_life_days=30.0,
                repeat_bonus=0.25,
                input_half_life_days=90.0,
            ),
        )
        for name, w in recipe.weights.items()
    )
    assert total == pytest.approx(parts, abs=1e-4)


def test_als_signals_scores_with_the_second_factor_set() -> None:
    scorer = _scorer()
    scores = scorer.score_users(np.array([1]), Recipe(weights={"als_signals": 1.0}))[0]
    raw = scorer.signal_user_factors[1] @ scorer.signal_item_factors.T  # type: ignore[index,union-attr]
    assert scores == pytest.approx((raw - raw.mean()) / raw.std(), abs=1e-5)
    plain = scorer.score_users(np.array([1]), Recipe(weights={"als": 1.0}))[0]
    assert not np.allclose(scores, plain)


def test_a_recipe_needing_signals_is_refused_by_a_model_without_them() -> None:
    scorer = _scorer(signals=False)
    recipe = Recipe(weights={"als_signals": 1.0, "trending": 0.5})
    assert not scorer.can_use(recipe)
    assert scorer.can_use(Recipe(weights={"als": 1.0}))
    with pytest.raises(ValueError, match="als_signals"):
        scorer.score_users(np.array([0]), recipe)


def test_a_recipe_needing_ease_is_refused_by_a_model_without_it() -> None:
    scorer = _scorer(ease=False)
    recipe = Recipe(weights={"ease": 1.0})
    assert not scorer.can_use(recipe)
    with pytest.raises(ValueError, match="no EASE matrix"):
        scorer.score_users(np.array([0]), recipe)


def test_recipe_round_trips_and_rejects_unknown_components() -> None:
    recipe = Recipe(weights={"als": 1.0, "repeat": 3.0}, repeat_bonus=0.5)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    with pytest.raises(ValueError, match="unknown recipe components"):
        Recipe(weights={"magic": 1.0})
    with pytest.raises(ValueError, match="half-lives"):
        Recipe(weights={"als": 1.0}, repeat_half_life_days=0)


def test_score_row_is_score_histories_for_one_user() -> None:
    scorer = _scorer()
    recipe = Recipe(
        weights={
            "als": 0.7,
            "als_signals": 0.9,
            "ease": 1.3,
            "repeat": 2.0,
            "trending": 0.4,
            "popularity": 0.1,
        },
        repeat_half_life_days=30.0,
        repeat_bonus=0.25,
        input_half_life_days=90.0,
    )
    for user in range(3):
        start, end = scorer.history_counts.indptr[user : user + 2]
        row = scorer.score_row(
            scorer.history_counts.indices[start:end],
            scorer.history_counts.data[start:end],
            scorer.history_age_days.data[start:end],
            scorer.user_factors[user],
            recipe,
            signal_vector=scorer.signal_user_factors[user],  # type: ignore[index]
        )
        assert row == pytest.approx(scorer.score_users(np.array([user]), recipe)[0], abs=1e-5)
