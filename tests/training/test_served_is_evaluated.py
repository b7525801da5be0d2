"""The model served is the model evaluated, with every visitor (issue 14, review of item 4).

A served every-visitor model lists the purchase items, then many items only viewed; every
figure (test metrics, tuning, the gate) scores the purchase items alone. These tests hold the
two to the same scores on the purchase items, keep EASE (fitted on purchases) independent of the
view-only items, refit the current model with its own signals in the gate, and keep "similar
items" honest about products nobody bought.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from service.artifact import Artifact, load_artifact
from service.recommend.recommender import Recommender
from service.recommend.serving import prepare
from service.scoring import Recipe, Scorer
from training import gate, models
from training.data.formats import Purchases
from training.encode import encode
from training.evaluate import temporal_split, user_ndcg
from training.models import ModelParams, Stage, fit_stage
from training.pipeline import TrainConfig, TrainResult, run
from training.publish import artifact_arrays
from training.signals import encode_signals

PARAMS = ModelParams(factors=8, iterations=4, threads=1)
EVERYTHING = Recipe(
    weights={
        "als": 1.0,
        "als_signals": 0.7,
        "ease": 0.5,
        "popularity": 0.3,
        "trending": 0.2,
        "repeat": 0.4,
    }
)
VIEW_ONLY = 1_500


def _browsing(purchases: Purchases, n_new: int = VIEW_ONLY) -> pd.DataFrame:
    """Views of the items bought, plus views of ``n_new`` items nobody bought (by buyers and by
    visitors who never buy), all before the last purchase."""
    frame = purchases.frame
    rng = np.random.default_rng(3)
    end = frame["timestamp"].max()
    users = frame["user_id"].astype(str).unique()
    bought = frame["item_id"].astype(str).unique()
    n = 6 * n_new
    visitors = [f"visitor-{k % 200}" for k in range(n // 2)]
    viewers = np.concatenate([rng.choice(users, n // 2), visitors])
    items = np.where(
        rng.random(n) < 0.5,
        rng.choice(bought, n),
        np.array([f"new-{k}" for k in rng.integers(0, n_new, n)], dtype=object),
    )
    when = end - pd.to_timedelta(rng.integers(1, 200, n), unit="D")
    return pd.DataFrame({"user_id": viewers, "item_id": items, "timestamp": when, "type": "view"})


@pytest.fixture(scope="module")
def wide(tiny_purchases: Purchases) -> tuple[Stage, dict[str, Any]]:
    """A stage fitted with every visitor and ``VIEW_ONLY`` view-only items, and its artifact's
    arrays."""
    frame, ids = encode(tiny_purchases.frame)
    signals = encode_signals(_browsing(tiny_purchases), ids.users, ids.items)
    end = frame["timestamp"].max()
    stage = fit_stage(frame, end, PARAMS, ids, with_ease=True, signals=signals, signals_until=end)
    assert len(stage.served_item_codes) - len(stage.item_codes) > VIEW_ONLY // 2
    return stage, artifact_arrays(stage, tiny_purchases)


def _top(scores: np.ndarray[Any, Any], k: int = 10) -> list[list[int]]:
    top: list[list[int]] = np.argsort(-scores, axis=1, kind="stable")[:, :k].tolist()
    return top


def test_served_scores_of_the_purchase_items_are_the_evaluated_ones(
    wide: tuple[Stage, dict[str, Any]],
) -> None:
    stage, arrays = wide
    n_items = len(stage.item_codes)
    users = np.arange(len(stage.user_codes))
    evaluated = stage.scorer().score_users(users, EVERYTHING)
    for served in (stage.served_scorer(), Scorer.from_arrays(arrays)):
        assert served.n_items > n_items + VIEW_ONLY // 2
        got = served.score_users(users, EVERYTHING)[:, :n_items]
        np.testing.assert_allclose(got, evaluated, rtol=1e-4, atol=1e-4)
        assert _top(got) == _top(evaluated)  # every user's top 10 among the purchase items
    # the request path (one user in plain numpy) too
    served = Scorer.from_arrays(arrays)
    hist, ages = served.history_counts, served.history_age_days
    signal_vectors = served.signal_user_factors
    assert signal_vectors is not None
    for u in range(0, len(users), 7):
        start, end = hist.indptr[u], hist.indptr[u + 1]
        row = served.score_row(
            hist.indices[start:end],
            hist.data[start:end],
            ages.data[start:end],
            served.user_factors[u],
            EVERYTHING,
            signal_vector=signal_vectors[u],
        )
        np.testing.assert_allclose(row[:n_items], evaluated[u], rtol=1e-4, atol=1e-4)


def test_a_view_only_item_is_scored_within_the_range_of_the_items_bought(
    wide: tuple[Stage, dict[str, Any]],
) -> None:
    """Popularity 0 is far below any bought item's; it is held at the least bought one's."""
    stage, arrays = wide
    n_items = len(stage.item_codes)
    served = Scorer.from_arrays(arrays)
    assert np.all(served.popularity_z[n_items:] == served.popularity_z[:n_items].min())
    assert np.all(np.isfinite(served.score_users(np.arange(5), EVERYTHING)))


def test_an_artifact_without_scored_items_standardises_over_all_items(
    wide: tuple[Stage, dict[str, Any]],
) -> None:
    _, arrays = wide
    old = {k: v for k, v in arrays.items() if k != "scored_items"}
    scorer = Scorer.from_arrays(old)
    assert scorer.n_scored == scorer.n_items
    assert abs(float(scorer.popularity_z.mean())) < 1e-4


def test_the_gate_scores_the_current_model_as_it_was_evaluated(
    wide: tuple[Stage, dict[str, Any]], tiny_purchases: Purchases
) -> None:
    """``direct``: the current model's scores of the new run's items, through its padded
    artifact, are those its own evaluation gave (like with like)."""
    stage, arrays = wide
    frame, _ = encode(tiny_purchases.frame)
    test = temporal_split(frame, 30).test
    evalset = stage.evalset(test)
    assert evalset.n_users > 10
    current = cast(
        Artifact,
        SimpleNamespace(arrays=arrays, manifest=SimpleNamespace(recipes={"all": EVERYTHING})),
    )
    user_ids = stage.user_ids[evalset.user_idx]
    direct = gate._artifact_scores(current, user_ids, stage.item_ids, "all")
    np.testing.assert_allclose(direct, evalset.scores(EVERYTHING), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(
        user_ndcg(direct, evalset.truth, evalset.counts, "all"),
        evalset.user_ndcg(EVERYTHING, "all"),
    )


# --- EASE is sized on the items bought ----------------------------------------------------------


def test_ease_is_stored_at_the_purchase_items_size(wide: tuple[Stage, dict[str, Any]]) -> None:
    stage, arrays = wide
    n_items = len(stage.item_codes)
    assert arrays["ease_b"].shape == (n_items, n_items)
    scorer = Scorer.from_arrays(arrays)
    users = np.arange(len(stage.user_codes))
    got = scorer.score_users(users, Recipe(weights={"ease": 1.0}))
    # the items nobody bought score as an EASE weight of 0 would: one value per user
    assert got.shape == (len(users), scorer.n_items)
    assert np.allclose(got[:, n_items:], got[:, [n_items]])
    assert not np.allclose(got[:, :n_items], got[:, [n_items]])


def test_a_history_naming_an_item_outside_ease_weighs_nothing(
    wide: tuple[Stage, dict[str, Any]],
) -> None:
    stage, arrays = wide
    scorer = Scorer.from_arrays(arrays)
    n_items = len(stage.item_codes)
    only_ease = Recipe(weights={"ease": 1.0})
    one = np.array([3]), np.array([1.0]), np.array([5.0])
    with_new = np.array([3, n_items + 2]), np.array([1.0, 1.0]), np.array([5.0, 2.0])
    np.testing.assert_allclose(
        scorer.score_row(*one, None, only_ease), scorer.score_row(*with_new, None, only_ease)
    )


def test_every_visitor_keeps_ease_when_the_items_bought_fit_under_the_limit(
    tiny_purchases: Purchases, tmp_path: Path
) -> None:
    """View-only items beyond ``ease_max_items`` leave EASE in the candidates: it is fitted on
    the items bought alone."""
    n_bought = tiny_purchases.frame["item_id"].nunique()
    params = dataclasses.replace(PARAMS, ease_max_items=n_bought + 10)
    events = _browsing(tiny_purchases, n_new=200)
    config = TrainConfig(model_dir=tmp_path, params=params, tune_seconds=0, force=True)
    result = run(config, tiny_purchases, signal_events=events)
    arrays = load_artifact(result.path).arrays
    assert "ease_b" in arrays, "EASE was dropped"
    assert arrays["item_ids"].shape[0] > params.ease_max_items
    assert arrays["ease_b"].shape == (n_bought, n_bought)


# --- the gate refits the current model with its own signals -------------------------------------


def test_a_purchasers_only_run_refits_an_every_visitor_model_with_every_visitor(
    tiny_purchases: Purchases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _browsing(tiny_purchases, n_new=100)
    first = _train(tiny_purchases, tmp_path, PARAMS, events)
    assert first.manifest.signals is not None
    assert first.manifest.signals.every_visitor
    fits: list[Stage] = []
    real = models.fit_stage

    def spy(*args: Any, **kwargs: Any) -> Stage:
        stage = real(*args, **kwargs)
        fits.append(stage)
        return stage

    monkeypatch.setattr(gate, "fit_stage", spy)
    second = _train(
        tiny_purchases, tmp_path, dataclasses.replace(PARAMS, every_visitor=False), events
    )
    assert second.gate.method == "refit"
    assert len(fits) == 2
    # the refit of the current model learnt from the visitors and the items nobody bought
    for stage in fits:
        assert len(stage.extra_item_ids) > 0
        assert len(stage.extra_user_ids) > 0
    served = load_artifact(second.path).arrays["item_ids"].tolist()
    assert not any(i.startswith("new-") for i in served)


def _train(
    purchases: Purchases, root: Path, params: ModelParams, events: pd.DataFrame
) -> TrainResult:
    config = TrainConfig(model_dir=root, params=params, tune_seconds=0, force=True)
    return run(config, purchases, signal_events=events)


# --- similar items for products nobody bought ---------------------------------------------------


def test_similar_items_of_a_product_nobody_bought_come_from_the_views(
    tiny_purchases: Purchases, tmp_path: Path
) -> None:
    events = _browsing(tiny_purchases, n_new=50)
    result = _train(tiny_purchases, tmp_path, PARAMS, events)
    recommender = Recommender(prepare(load_artifact(result.path)))
    model = recommender.model
    n_bought = tiny_purchases.frame["item_id"].nunique()
    new = [str(i) for i in model.item_ids[n_bought:]]
    assert new
    assert all(i.startswith("new-") for i in new)
    got = recommender.similar(new[0], 5)
    assert len(got) == 5
    assert all(r.reason == f"viewed with {model.name_of(model.item_index[new[0]])}" for r in got)
    assert len({r.score for r in got}) > 1
    assert all(r.score != 0.0 for r in got)
    # a bought item's list holds bought items only, "bought with"
    bought = str(model.item_ids[0])
    listed = recommender.similar(bought, len(model.item_ids))
    assert listed
    assert all(r.reason.startswith("bought with ") for r in listed)
    assert not any(r.item_id.startswith("new-") for r in listed)
    assert len(listed) == n_bought - 1
