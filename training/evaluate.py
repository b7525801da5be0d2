"""Temporal split and ranking metrics.

Protocol (PRODUCT.md): the cut-off is the last timestamp minus N days; the model sees purchases up
to the cut-off; a test user's truth is the set of items they bought after it, restricted to users
and items known at the cut-off; users with an empty truth are left out. Under ``novel`` the items
a user bought before the cut-off are removed from both the ranking and the truth.

Metrics at k: ``recall`` = hits / min(|truth|, k) (so a perfect list scores 1 even when a user
bought more than k items, the convention of the reference figures), ``precision`` = hits / k,
``ndcg`` with binary gains, ``hit_rate`` = share of users with at least one hit, ``coverage`` =
share of the catalogue that appears in at least one list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from service.errors import SplitError
from service.scoring import Recipe, Scorer

METRICS = ("recall", "ndcg", "precision", "hit_rate", "coverage")
DEFAULT_K = 10
TEST_DAYS = 30.0  # the default test (and validation) window: PRODUCT.md's temporal split
# issue 15, item 2: the validation, test and gate figures rest on a fixed, seeded sample of at
# least this many test users (all of them when fewer), scored in chunks of bounded memory
DEFAULT_EVAL_USERS = 50_000
MAX_EVAL_CELLS = 10_000_000  # users x items scored at once; bounds time and memory

MetricTable = dict[str, dict[str, dict[str, float]]]  # protocol -> candidate -> metric -> value


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    cutoff: pd.Timestamp
    end: pd.Timestamp


def temporal_split(frame: pd.DataFrame, days: float) -> Split:
    """Cut ``frame`` at its last timestamp minus ``days``: train <= cut-off < test."""
    if days <= 0:
        raise SplitError(f"test window must be positive, got {days} days")
    end = pd.Timestamp(frame["timestamp"].max())
    cutoff = end - pd.Timedelta(days=days)
    mask = (frame["timestamp"] <= cutoff).to_numpy()
    train, test = frame[mask], frame[~mask]
    if train.empty or test.empty:
        start = pd.Timestamp(frame["timestamp"].min())
        raise SplitError(
            f"a {days:g}-day test window over data from {start:%Y-%m-%d} to {end:%Y-%m-%d} "
            f"leaves {len(train)} training and {len(test)} test rows; choose fewer test days"
        )
    return Split(train=train, test=test, cutoff=cutoff, end=end)


def metric_key(name: str, k: int = DEFAULT_K) -> str:
    return f"{name}@{k}"


@dataclass
class EvalSet:
    """Test users of one split in a stage's index space, with their truth, ready to score.

    Component scores are computed once and cached, so evaluating many recipes (tuning) costs a
    weighted sum each.
    """

    scorer: Scorer
    user_idx: npt.NDArray[np.int64]  # the test users' rows in the stage's matrices
    truth: sp.csr_matrix  # len(user_idx) x items, 1 where bought in the test window
    counts: sp.csr_matrix
    age_days: sp.csr_matrix
    user_vectors: npt.NDArray[np.float32]
    signal_vectors: npt.NDArray[np.float32] | None = None  # for als_signals
    _cache: dict[tuple[Any, ...], npt.NDArray[np.float32]] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_idx)

    def _dense(self, name: str, recipe: Recipe) -> npt.NDArray[np.float32]:
        """The user-dependent dense components (als, als_signals, ease), computed once each."""
        key = (name, recipe.input_half_life_days if name == "ease" else None)
        hit = self._cache.get(key)
        if hit is None:
            unit = Recipe(weights={name: 1.0}, input_half_life_days=recipe.input_half_life_days)
            hit = self.scorer.score_histories(
                self.counts,
                self.age_days,
                self.user_vectors,
                unit,
                signal_vectors=self.signal_vectors,
            )
            self._cache[key] = hit
        return hit

    def scores(self, recipe: Recipe) -> npt.NDArray[np.float32]:
        """Exactly ``Scorer.score_histories`` for these users, assembled from cached parts.

        Only als, als_signals and ease are cached as users x items matrices; popularity and
        trending are one row for everybody and repeat is sparse, so they are added directly.
        """
        total = np.zeros((self.n_users, self.scorer.n_items), dtype=np.float32)
        for name in ("als", "als_signals", "ease"):
            w = recipe.weight(name)
            if w:
                total += np.float32(w) * self._dense(name, recipe)
        rest = Recipe(
            weights={n: recipe.weight(n) for n in ("popularity", "trending", "repeat")},
            repeat_half_life_days=recipe.repeat_half_life_days,
            repeat_bonus=recipe.repeat_bonus,
        )
        total += self.scorer.score_histories(self.counts, self.age_days, None, rest)
        return total

    def with_scorer(self, scorer: Scorer) -> EvalSet:
        """The same users and truth, scored by another fit of the same rows (a refit)."""
        user_vectors, signal_vectors = _vectors(scorer, self.user_idx)
        return EvalSet(
            scorer=scorer,
            user_idx=self.user_idx,
            truth=self.truth,
            counts=self.counts,
            age_days=self.age_days,
            user_vectors=user_vectors,
            signal_vectors=signal_vectors,
        )

    def evaluate(self, recipe: Recipe, protocol: str, k: int = DEFAULT_K) -> dict[str, float]:
        """Metrics of ``recipe`` under ``protocol`` (``all`` or ``novel``)."""
        return rank_metrics(self.scores(recipe), self.truth, self.counts, protocol, k)

    def user_ndcg(self, recipe: Recipe, protocol: str, k: int = DEFAULT_K) -> npt.NDArray[Any]:
        """NDCG@k of ``recipe`` for each user ``evaluate`` counts (``user_ndcg``)."""
        return user_ndcg(self.scores(recipe), self.truth, self.counts, protocol, k)


def rank_metrics(
    scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    k: int = DEFAULT_K,
) -> dict[str, float]:
    """Ranking metrics for rows of ``scores`` against ``truth``; see the module docstring."""
    ranked = _rank(scores, truth, history, protocol, k)
    if ranked is None:
        return {**dict.fromkeys(METRICS, 0.0), "users": 0.0}
    hits, sizes, top, valid, k = ranked
    n_hits = hits.sum(axis=1)
    covered = np.zeros(scores.shape[1], dtype=bool)
    covered[top[valid]] = True
    return {
        "recall": float(np.mean(n_hits / np.minimum(sizes, k))),
        "ndcg": float(np.mean(_ndcg(hits, sizes, k))),
        "precision": float(np.mean(n_hits / k)),
        "hit_rate": float(np.mean(n_hits > 0)),
        "coverage": float(covered.mean()),
        "users": float(len(sizes)),
    }


def user_ndcg(
    scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    k: int = DEFAULT_K,
) -> npt.NDArray[np.float64]:
    """NDCG@k of each user ``rank_metrics`` counts (same users, same order; its mean is
    ``rank_metrics``' ndcg): what the quality gate's paired comparison resamples."""
    ranked = _rank(scores, truth, history, protocol, k)
    if ranked is None:
        return np.zeros(0, dtype=np.float64)
    hits, sizes, _, _, k = ranked
    return _ndcg(hits, sizes, k)


def _rank(
    scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    k: int,
) -> (
    tuple[
        npt.NDArray[np.bool_],
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.bool_],
        int,
    ]
    | None
):
    """(hits in each user's top k, truth sizes, top k, valid positions, k) of the users with
    a non-empty truth under ``protocol``; None when there is none."""
    if protocol not in ("all", "novel"):
        raise ValueError(f"unknown protocol {protocol!r}")
    n_items = scores.shape[1]
    k = min(k, n_items)
    truth = truth.tocsr().astype(bool).astype(np.int8)
    if protocol == "novel":
        scores = scores.copy()
        hist = history.tocsr()
        rows = np.repeat(np.arange(hist.shape[0]), np.diff(hist.indptr))
        scores[rows, hist.indices] = -np.inf
        seen = hist.astype(bool).astype(np.int8)
        truth = (truth - truth.multiply(seen)).tocsr()
        truth.eliminate_zeros()
    sizes = np.diff(truth.indptr)
    keep = sizes > 0
    if not keep.any():
        return None
    scores, truth, sizes = scores[keep], truth[keep], sizes[keep]
    top = top_k(scores, k)
    hits = np.take_along_axis(truth.toarray().astype(bool), top, axis=1)
    # a -inf score is never a recommendation (novel with fewer candidates than k)
    valid = np.isfinite(np.take_along_axis(scores, top, axis=1))
    hits &= valid
    return hits, sizes.astype(np.int64), top, valid, k


def _ndcg(
    hits: npt.NDArray[np.bool_], sizes: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float64]:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[np.minimum(sizes, k) - 1]
    result: npt.NDArray[np.float64] = (hits * discounts).sum(axis=1) / ideal
    return result


def top_k(scores: npt.NDArray[np.float32], k: int, chunk: int = 256) -> npt.NDArray[np.int64]:
    """Column indices of each row's k best scores, best first (rows in chunks: bounded memory)."""
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for start in range(0, scores.shape[0], chunk):
        block = scores[start : start + chunk]
        top = np.argpartition(block, -k, axis=1)[:, -k:]
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        out[start : start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def build_truth(
    user_keys: pd.Index,
    item_keys: pd.Index,
    test_users: npt.ArrayLike,
    test_items: npt.ArrayLike,
    *,
    max_users: int | None = None,
    seed: int = 0,
) -> tuple[npt.NDArray[np.int64], sp.csr_matrix]:
    """Rows of the test users known at the cut-off and their truth among known items.

    ``user_keys`` / ``item_keys`` name the model's rows and columns (ids or codes) and
    ``test_users`` / ``test_items`` are the test purchases in the same kind of key. When the
    catalogue is big, a seeded sample of users keeps users x items under ``MAX_EVAL_CELLS``
    unless ``max_users`` says otherwise. Returns (the users' rows, truth: one row each).
    """
    # each test purchase's row and column in the model's matrices
    user_idx = user_keys.get_indexer(test_users)
    item_idx = item_keys.get_indexer(test_items)
    known = (user_idx >= 0) & (item_idx >= 0)
    user_idx, item_idx = user_idx[known], item_idx[known]
    eval_user_idx = np.unique(user_idx)
    limit = max_users if max_users is not None else max(1, MAX_EVAL_CELLS // len(item_keys))
    if len(eval_user_idx) > limit:
        eval_user_idx = np.sort(
            np.random.default_rng(seed).choice(eval_user_idx, size=limit, replace=False)
        )
    truth_row_of = np.full(len(user_keys), -1, dtype=np.int64)
    truth_row_of[eval_user_idx] = np.arange(len(eval_user_idx))
    truth_rows = truth_row_of[user_idx]
    sel = truth_rows >= 0
    truth = sp.csr_matrix(
        (np.ones(int(sel.sum()), dtype=np.float32), (truth_rows[sel], item_idx[sel])),
        shape=(len(eval_user_idx), len(item_keys)),
    )
    truth.sum_duplicates()
    truth.data[:] = 1.0
    return eval_user_idx.astype(np.int64), truth


def build_evalset(
    scorer: Scorer,
    user_keys: pd.Index,
    item_keys: pd.Index,
    test_users: npt.ArrayLike,
    test_items: npt.ArrayLike,
    *,
    max_users: int | None = None,
    seed: int = 0,
) -> EvalSet:
    """An EvalSet over ``build_truth``'s users, scored by ``scorer`` (same index space)."""
    user_idx, truth = build_truth(
        user_keys, item_keys, test_users, test_items, max_users=max_users, seed=seed
    )
    user_vectors, signal_vectors = _vectors(scorer, user_idx)
    return EvalSet(
        scorer=scorer,
        user_idx=user_idx,
        truth=truth,
        counts=scorer.history_counts[user_idx],
        age_days=scorer.history_age_days[user_idx],
        user_vectors=user_vectors,
        signal_vectors=signal_vectors,
    )


def _vectors(
    scorer: Scorer, user_idx: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
    """These rows of both ALS factor sets (the second None in a model without signals)."""
    signal = scorer.signal_user_factors
    return (
        np.asarray(scorer.user_factors[user_idx], dtype=np.float32),
        None if signal is None else np.asarray(signal[user_idx], dtype=np.float32),
    )


def truth_of(
    user_idx: npt.NDArray[np.int64],
    user_keys: pd.Index,
    item_keys: pd.Index,
    test_users: npt.ArrayLike,
    test_items: npt.ArrayLike,
) -> sp.csr_matrix:
    """The truth (one row per entry of ``user_idx``, rows of ``user_keys``) over ``item_keys``:
    what those users bought in the test window among those items."""
    rows_of = np.full(len(user_keys), -1, dtype=np.int64)
    rows_of[user_idx] = np.arange(len(user_idx))
    users = user_keys.get_indexer(test_users)
    items = item_keys.get_indexer(test_items)
    keep = (users >= 0) & (items >= 0)
    rows = rows_of[users[keep]]
    cols = items[keep]
    sel = rows >= 0
    truth = sp.csr_matrix(
        (np.ones(int(sel.sum()), dtype=np.float32), (rows[sel], cols[sel])),
        shape=(len(user_idx), len(item_keys)),
    )
    truth.sum_duplicates()
    truth.data[:] = 1.0
    return truth


def unbought_figures(
    scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    first_unbought: int,
    k: int = DEFAULT_K,
) -> dict[str, float]:
    """``rank_metrics`` plus how the items never bought before the cut-off fare.

    Columns from ``first_unbought`` on are items nobody bought before the cut-off (known from
    views or add-to-carts; a score of -inf: the model cannot recommend them). ``shown``: share
    of the top-k slots holding one; ``users_shown``: share of users shown at least one;
    ``truth``: test purchases of them (user, item pairs) by the users counted; ``hits``: those in
    the top k.
    """
    out = rank_metrics(scores, truth, history, protocol, k)
    ranked = _rank(scores, truth, history, protocol, k)
    if ranked is None:
        return {**out, "shown": 0.0, "users_shown": 0.0, "truth": 0.0, "hits": 0.0}
    hits, _, top, valid, _ = ranked
    unbought = (top >= first_unbought) & valid
    kept_truth = truth.tocsr()
    if protocol == "novel":
        seen = history.tocsr().astype(bool).astype(np.int8)
        kept_truth = (kept_truth.astype(bool).astype(np.int8) - kept_truth.multiply(seen)).tocsr()
        kept_truth.eliminate_zeros()
    kept_truth = kept_truth[np.diff(kept_truth.indptr) > 0]
    return {
        **out,
        "shown": float(unbought.sum() / max(int(valid.sum()), 1)),
        "users_shown": float(unbought.any(axis=1).mean()),
        "truth": float((kept_truth.indices >= first_unbought).sum()),
        "hits": float((hits & unbought).sum()),
    }
