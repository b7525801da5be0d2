"""Evaluation at scale (issue 15, item 2): a seeded sample of test users, scored in chunks,
with exactly the figures of one unchunked pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import training.evaluate as evaluate
import training.gate as gate
from service.artifact import ModelStore, load_artifact
from service.scoring import PROTOCOLS, Recipe, Scorer
from training.data.formats import purchases_from_frame
from training.evaluate import (
    DEFAULT_EVAL_USERS,
    EvalSet,
    RankTally,
    build_truth,
    chunks,
    rank_metrics,
    sample_truth,
    unbought_figures,
    user_ndcg,
)
from training.gate import UserScores, _artifact_scores, artifact_tally
from training.models import ModelParams
from training.pipeline import TrainConfig, run

RECIPES = [
    Recipe(weights={"als": 1.0}),
    Recipe(weights={"popularity": 1.0}),
    Recipe(
        weights={"als": 0.5, "ease": 2.0, "repeat": 3.0, "trending": 0.3, "popularity": -0.1},
        repeat_half_life_days=30.0,
        repeat_bonus=0.7,
        input_half_life_days=90.0,
    ),
    Recipe(weights={"als": 1.0, "als_signals": 0.5, "ease": 0.5}, input_half_life_days=30.0),
]


def _sparse(
    rng: np.random.Generator, rows: int, cols: int, density: float, values: np.ndarray | None
) -> sp.csr_matrix:
    mask = rng.random((rows, cols)) < density
    r, c = np.nonzero(mask)
    data = np.ones(len(r), dtype=np.float32) if values is None else values[: len(r)]
    return sp.csr_matrix((data, (r, c)), shape=(rows, cols))


def _evalset(n_users: int = 41, n_items: int = 60, seed: int = 0) -> EvalSet:
    """A random model (every component) and random truth: what the chunks must not change."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < 0.15
    r, c = np.nonzero(mask)
    counts = sp.csr_matrix(
        (rng.integers(1, 5, len(r)).astype(np.float32), (r, c)), shape=(n_users, n_items)
    )
    ages = sp.csr_matrix(
        (rng.uniform(0, 400, len(r)).astype(np.float32), (r, c)), shape=(n_users, n_items)
    )
    scorer = Scorer(
        item_factors=rng.standard_normal((n_items, 5)).astype(np.float32),
        user_factors=rng.standard_normal((n_users, 5)).astype(np.float32),
        history_counts=counts,
        history_age_days=ages,
        popularity=rng.integers(0, 50, n_items),
        trending=rng.integers(0, 10, n_items),
        ease_b=rng.standard_normal((n_items, n_items)).astype(np.float32),
        signal_item_factors=rng.standard_normal((n_items, 3)).astype(np.float32),
        signal_user_factors=rng.standard_normal((n_users, 3)).astype(np.float32),
    )
    user_idx = np.arange(n_users, dtype=np.int64)
    return EvalSet(
        scorer=scorer,
        user_idx=user_idx,
        truth=_sparse(rng, n_users, n_items, 0.08, None),
        counts=counts,
        age_days=ages,
        user_vectors=scorer.user_factors,
        signal_vectors=scorer.signal_user_factors,
    )


def _same(ev: EvalSet, chunk_users: int) -> EvalSet:
    other = ev.with_scorer(ev.scorer)
    other.chunk_users = chunk_users
    return other


def test_chunks_cover_every_row_once_and_never_leave_one_row_alone() -> None:
    for n in range(0, 40):
        for step in range(1, 12):
            parts = list(chunks(n, step))
            rows = [i for s in parts for i in range(s.start, s.stop)]
            assert rows == list(range(n))
            assert all(s.stop - s.start >= 2 for s in parts) or n == 1
            assert all(s.stop - s.start <= max(2, step) + 1 for s in parts)


@pytest.mark.parametrize("cache", [True, False])
def test_chunked_figures_are_exactly_those_of_one_chunk(
    cache: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cache:
        monkeypatch.setattr(evaluate, "EVAL_CACHE_CELLS", 0)
    base = _evalset()
    whole = _same(base, base.n_users)  # one chunk: the code before chunks
    for chunk_users in (2, 3, 7, 20):
        ev = _same(base, chunk_users)
        assert len(list(chunks(ev.n_users, ev.rows_per_chunk))) > 1
        for recipe in RECIPES:
            for protocol in PROTOCOLS:
                assert ev.evaluate(recipe, protocol) == whole.evaluate(recipe, protocol)
                np.testing.assert_array_equal(
                    ev.user_ndcg(recipe, protocol), whole.user_ndcg(recipe, protocol)
                )
        jobs = [(r, p) for r in RECIPES for p in PROTOCOLS]
        assert ev.evaluate_many(jobs) == [whole.evaluate(r, p) for r, p in jobs]
    # and one dense matrix through rank_metrics: the figures before any of this
    for recipe in RECIPES:
        for protocol in PROTOCOLS:
            dense = whole.scores(recipe)
            assert whole.evaluate(recipe, protocol) == rank_metrics(
                dense, whole.truth, whole.counts, protocol
            )
            np.testing.assert_array_equal(
                whole.user_ndcg(recipe, protocol),
                user_ndcg(dense, whole.truth, whole.counts, protocol),
            )


def test_the_cache_stays_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    ev = _evalset()
    cells = ev.n_users * ev.scorer.n_items
    monkeypatch.setattr(evaluate, "EVAL_CACHE_CELLS", 2 * cells)  # room for two components
    ev.evaluate(RECIPES[3], "all")  # als, als_signals, ease
    assert len(ev._cache) == 2
    assert sum(m.size for m in ev._cache.values()) <= 2 * cells


@settings(max_examples=40, deadline=None)
@given(
    n_users=st.integers(1, 25),
    n_items=st.integers(1, 15),
    k=st.integers(1, 12),
    step=st.integers(1, 9),
    protocol=st.sampled_from(PROTOCOLS),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_a_tally_over_chunks_equals_one_call(
    n_users: int, n_items: int, k: int, step: int, protocol: str, seed: int, ties: bool
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    if ties:
        scores = np.round(scores).astype(np.float32)
    truth = _sparse(rng, n_users, n_items, 0.3, None)
    history = _sparse(rng, n_users, n_items, 0.3, None)
    first_unbought = int(rng.integers(0, n_items + 1))
    scores[:, first_unbought:] = -np.inf
    tally = RankTally(n_items, k, first_unbought)
    for rows in chunks(n_users, step):
        tally.add(scores[rows], truth[rows], history[rows], protocol)
    assert tally.metrics() == rank_metrics(scores, truth, history, protocol, k)
    assert tally.unbought() == unbought_figures(scores, truth, history, protocol, first_unbought, k)
    np.testing.assert_array_equal(tally.user_ndcg(), user_ndcg(scores, truth, history, protocol, k))


def test_the_sample_is_seeded_fixed_and_at_least_default_users() -> None:
    n = DEFAULT_EVAL_USERS + 5_000
    user_keys, item_keys = pd.Index(np.arange(n)), pd.Index(np.arange(1_000_000))
    users = np.arange(n)
    items = users % 1_000_000
    # a million items: the old cap (10M cells) would have scored 10 users
    sample = sample_truth(user_keys, item_keys, users, items)
    assert len(sample.user_idx) == DEFAULT_EVAL_USERS
    assert sample.of_users == n
    assert np.all(np.diff(sample.user_idx) > 0)
    again = sample_truth(user_keys, item_keys, users, items)
    np.testing.assert_array_equal(again.user_idx, sample.user_idx)
    assert sample.truth.shape == (DEFAULT_EVAL_USERS, 1_000_000)
    assert sample.truth.nnz == DEFAULT_EVAL_USERS
    few = sample_truth(user_keys, item_keys, users[:1_379], items[:1_379])
    assert len(few.user_idx) == few.of_users == 1_379  # fewer: all of them
    idx, _ = build_truth(user_keys, item_keys, users, items, max_users=70)
    assert len(idx) == 70
    with pytest.raises(ValueError, match="max_users must be >= 1"):
        sample_truth(user_keys, item_keys, users, items, max_users=0)


def _wide_shop(n_users: int, n_items: int, seed: int = 1) -> pd.DataFrame:
    """Many users and many items (every one bought before the cut-offs); every user buys in
    the validation and in the test window."""
    rng = np.random.default_rng(seed)
    end = pd.Timestamp("2024-06-30")
    blocks = []
    for start, days, per_user in ((150, 60, 36), (89, 23, 2), (58, 26, 2), (25, 24, 1)):
        n = n_users * per_user
        blocks.append(
            pd.DataFrame(
                {
                    "user_id": [f"u{u}" for u in np.tile(np.arange(n_users), per_user)],
                    "item_id": [f"i{i}" for i in rng.permutation(n) % n_items],
                    "timestamp": end
                    - pd.Timedelta(days=start)
                    + pd.to_timedelta(rng.integers(0, days * 86_400, n), "s"),
                }
            )
        )
    return pd.concat(blocks, ignore_index=True)


def test_the_gate_decides_on_every_test_user_of_a_wide_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """700 test users x 25,000 items: ``MAX_EVAL_CELLS // items`` gave 10M // 25k = 400
    users (and the gate's paired comparison ran on those); now every one of them, in chunks."""
    n_users, n_items = 700, 25_000
    frame = _wide_shop(n_users, n_items)
    params = ModelParams(factors=2, iterations=1, threads=1)
    older = frame[frame["timestamp"] <= frame["timestamp"].max() - pd.Timedelta(days=30)]
    root = tmp_path / "models"
    first = run(  # the current model, evaluated on 2 users only (quick: not what is tested)
        TrainConfig(model_dir=root, params=params, eval_users=2),
        purchases=purchases_from_frame(older, source="older"),
    )
    compared: list[dict[str, tuple[int, int]]] = []
    decide = gate.decide

    def told(
        new: UserScores, popularity: UserScores, current: UserScores | None, **kw: Any
    ) -> gate.GateDecision:
        assert current is not None
        compared.append({p: (len(new[p]), len(current[p])) for p in new})
        return decide(new, popularity, current, **kw)

    monkeypatch.setattr(gate, "decide", told)
    second = run(
        TrainConfig(model_dir=root, params=params),
        purchases=purchases_from_frame(frame, source="wide"),
    )
    assert second.gate.method == "direct"
    # paired: the current model was scored on the very users the new one was
    assert compared == [{p: (second.metrics[p][second.served[p]]["users"],) * 2 for p in PROTOCOLS}]
    ev = second.evaluation
    items = second.manifest.counts.items
    assert 10_000_000 // items <= 400  # the old cap: a few hundred users
    assert ev["users"] == ev["of_users"] >= 650
    assert ev["chunk_users"] < ev["users"]  # it took several chunks
    for protocol in PROTOCOLS:
        served = second.metrics[protocol][second.served[protocol]]
        assert served["users"] > 500
    recorded = load_artifact(ModelStore(root).version_path(second.version)).manifest.evaluation
    assert recorded is not None
    assert (recorded.users, recorded.of_users, recorded.seed) == (ev["users"], ev["of_users"], 0)
    assert recorded.chunk_users == ev["chunk_users"]
    assert first.evaluation["users"] == 2  # --eval-users
    assert first.evaluation["of_users"] > 2


def test_the_artifact_is_rescored_in_chunks_exactly(tmp_path: Path) -> None:
    frame = _wide_shop(200, 1_000)
    result = run(
        TrainConfig(model_dir=tmp_path, params=ModelParams(factors=2, iterations=1, threads=1)),
        purchases=purchases_from_frame(frame, source="wide"),
    )
    artifact = load_artifact(result.path)
    own = pd.Index(np.asarray(artifact.arrays["user_ids"]).astype(str))
    items = pd.Index(np.asarray(artifact.arrays["item_ids"]).astype(str))
    # known and unknown users mixed, an item space wider than the artifact's
    user_ids = pd.Index([*own[:100].tolist(), "nobody-1", "nobody-2", *own[100:151].tolist()])
    item_ids = pd.Index([*items.tolist(), "new-1", "new-2"])
    rng = np.random.default_rng(0)
    truth = _sparse(rng, len(user_ids), len(item_ids), 0.01, None)
    history = _sparse(rng, len(user_ids), len(item_ids), 0.01, None)
    for protocol in PROTOCOLS:
        dense = _artifact_scores(artifact, user_ids, item_ids, protocol)
        whole = rank_metrics(dense, truth, history, protocol)
        for step in (2, 3, 50):
            tally = artifact_tally(
                artifact, user_ids, item_ids, truth, history, protocol, chunk_users=step
            )
            assert tally.metrics() == whole
            np.testing.assert_array_equal(
                tally.user_ndcg(), user_ndcg(dense, truth, history, protocol)
            )


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 12),
    n_items=st.integers(1, 120),
    k=st.integers(1, 12),
    width=st.integers(1, 9),
    kind=st.sampled_from(["float", "ties", "plateau", "neginf", "nan"]),
    seed=st.integers(0, 2**16),
)
def test_top_k_s_shortcut_answers_exactly_as_argpartition(
    rows: int, n_items: int, k: int, width: int, kind: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((rows, n_items)).astype(np.float32)
    if kind == "ties":
        scores = np.round(scores).astype(np.float32)
    elif kind == "plateau":
        scores[:, : n_items // 2] = 1.0
    elif kind == "neginf":
        scores[rng.random(scores.shape) < 0.7] = -np.inf
    elif kind == "nan":
        scores[rng.random(scores.shape) < 0.05] = np.nan
    k = min(k, n_items)
    expected = evaluate._top_k_exact(scores, k)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "FAST_TOP_K_MIN_ITEMS", 0)
        patch.setattr(evaluate, "FAST_TOP_K_BLOCK", width)
        if n_items >= 2 * k * width:
            np.testing.assert_array_equal(evaluate._top_k_fast(scores, k), expected)
        np.testing.assert_array_equal(evaluate.top_k(scores, k, chunk=5), expected)


def test_top_k_on_long_rows_is_argpartition_s_answer() -> None:
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((300, 5_000)).astype(np.float32)
    scores[::3, ::2] = -np.inf  # the novel protocol's masked history
    scores[1::3] = np.round(scores[1::3], 1)  # ties: answered by argpartition
    assert scores.shape[1] >= evaluate.FAST_TOP_K_MIN_ITEMS
    np.testing.assert_array_equal(evaluate.top_k(scores, 10), evaluate._top_k_exact(scores, 10))
