"""Temporal split and ranking metrics.

Protocol (PRODUCT.md): the cut-off is the last timestamp minus N days; the model sees purchases up
to the cut-off; a test user's truth is the set of items they bought after it, restricted to users
and items known at the cut-off; users with an empty truth are left out. Under ``novel`` the items
a user bought before the cut-off are removed from both the ranking and the truth.

Metrics at k: ``recall`` = hits / min(|truth|, k) (so a perfect list scores 1 even when a user
bought more than k items, the convention of the reference figures), ``precision`` = hits / k,
``ndcg`` with binary gains, ``hit_rate`` = share of users with at least one hit, ``coverage`` =
share of the catalogue that appears in at least one list.

Which users (issue 15, item 2): a fixed, seeded sample of ``DEFAULT_EVAL_USERS`` test users
(all of them when fewer; ``--eval-users`` overrides), whatever the catalogue's size, scored in
chunks of ``chunk_users_for(items)`` users so that no users x items matrix larger than
``EVAL_CHUNK_CELLS`` cells is built per score (``EVAL_CACHE_CELLS`` bounds the cached
components). The figures are exactly those of one unchunked pass (``RankTally``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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
# users x items scored at once (one float32 matrix of 32 MB; a few such live at a time): the
# test users are scored in chunks of ``chunk_users_for(items)`` rows, so memory does not grow
# with the number of users
EVAL_CHUNK_CELLS = 8_000_000
# users x items of component scores an EvalSet keeps between evaluations (all components
# together, 200 MB of float32): tuning re-weights cached parts instead of re-scoring; past it,
# every evaluation scores its chunks afresh
EVAL_CACHE_CELLS = 50_000_000
EVAL_SEED = 0  # the seed of the test users' sample

MetricTable = dict[str, dict[str, dict[str, float]]]  # protocol -> candidate -> metric -> value

_DENSE = ("als", "als_signals", "ease")  # the user-dependent components kept as matrices


def chunk_users_for(n_items: int, cells: int | None = None) -> int:
    """Users scored at once over ``n_items`` items within ``cells`` (``EVAL_CHUNK_CELLS``)."""
    return max(2, (EVAL_CHUNK_CELLS if cells is None else cells) // max(1, n_items))


def chunks(n_rows: int, step: int) -> Iterator[slice]:
    """Consecutive row slices of ``step`` rows (at least 2) covering ``range(n_rows)``; a last
    single row joins the chunk before it.

    Never one row alone: numpy multiplies a single row through BLAS gemv, whose rounding is
    not gemm's, and the figures must not depend on where the chunks fall.
    """
    step = max(2, step)
    starts = list(range(0, n_rows, step))
    if len(starts) > 1 and n_rows - starts[-1] == 1:
        starts.pop()
    for i, start in enumerate(starts):
        yield slice(start, starts[i + 1] if i + 1 < len(starts) else n_rows)


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


class RankTally:
    """``rank_metrics`` (and ``unbought_figures``) accumulated over chunks of users.

    Every figure is a function of per-user values (hits, truth size, NDCG, the top k), so
    adding the users chunk by chunk, in order, gives exactly the figures of one call on all of
    them: the per-user arrays are concatenated and averaged once, coverage is the union of the
    chunks' lists, the unbought counts are sums.
    """

    def __init__(self, n_items: int, k: int = DEFAULT_K, first_unbought: int | None = None):
        self.n_items = n_items
        self.k = min(k, n_items)
        self.first_unbought = first_unbought
        self.covered = np.zeros(n_items, dtype=bool)
        self._hits: list[npt.NDArray[np.int64]] = []
        self._sizes: list[npt.NDArray[np.int64]] = []
        self._ndcg: list[npt.NDArray[np.float64]] = []
        self._shown: list[npt.NDArray[np.bool_]] = []
        self._unbought_slots = 0
        self._valid_slots = 0
        self._unbought_truth = 0
        self._unbought_hits = 0

    def add(
        self,
        scores: npt.NDArray[np.float32],
        truth: sp.csr_matrix,
        history: sp.csr_matrix,
        protocol: str,
    ) -> None:
        """Add these users (rows of ``scores``, ``truth`` and ``history``)."""
        if scores.shape[1] != self.n_items:
            raise ValueError(f"scores over {scores.shape[1]} items, the tally {self.n_items}")
        ranked = _rank(scores, truth, history, protocol, self.k)
        if self.first_unbought is not None:
            self._unbought_truth += _unbought_truth(truth, history, protocol, self.first_unbought)
        if ranked is None:
            return
        hits, sizes, top, valid, k = ranked
        self._hits.append(hits.sum(axis=1))
        self._sizes.append(sizes)
        self._ndcg.append(_ndcg(hits, sizes, k))
        self.covered[top[valid]] = True
        if self.first_unbought is not None:
            unbought = (top >= self.first_unbought) & valid
            self._shown.append(np.asarray(unbought.any(axis=1), dtype=bool))
            self._unbought_slots += int(unbought.sum())
            self._valid_slots += int(valid.sum())
            self._unbought_hits += int((hits & unbought).sum())

    @property
    def users(self) -> int:
        return int(sum(len(s) for s in self._sizes))

    def user_ndcg(self) -> npt.NDArray[np.float64]:
        """Each counted user's NDCG@k, in the order added."""
        return np.concatenate(self._ndcg) if self._ndcg else np.zeros(0, dtype=np.float64)

    def metrics(self) -> dict[str, float]:
        """``rank_metrics``' figures of every user added."""
        if not self._sizes:
            return {**dict.fromkeys(METRICS, 0.0), "users": 0.0}
        n_hits, sizes, k = np.concatenate(self._hits), np.concatenate(self._sizes), self.k
        return {
            "recall": float(np.mean(n_hits / np.minimum(sizes, k))),
            "ndcg": float(np.mean(self.user_ndcg())),
            "precision": float(np.mean(n_hits / k)),
            "hit_rate": float(np.mean(n_hits > 0)),
            "coverage": float(self.covered.mean()),
            "users": float(len(sizes)),
        }

    def unbought(self) -> dict[str, float]:
        """``unbought_figures``' figures (needs ``first_unbought``)."""
        out = self.metrics()
        if not self._sizes:
            return {**out, "shown": 0.0, "users_shown": 0.0, "truth": 0.0, "hits": 0.0}
        return {
            **out,
            "shown": float(self._unbought_slots / max(self._valid_slots, 1)),
            "users_shown": float(np.concatenate(self._shown).mean()),
            "truth": float(self._unbought_truth),
            "hits": float(self._unbought_hits),
        }


@dataclass
class EvalSet:
    """Test users of one split in a stage's index space, with their truth, ready to score.

    The users are scored in chunks of ``rows_per_chunk`` (``chunk_users_for``: bounded memory,
    whatever their number) and the figures are exactly those of scoring them all at once
    (``RankTally``). Component scores are cached while they fit in ``EVAL_CACHE_CELLS``, so
    evaluating many recipes (tuning) on a small shop costs a weighted sum each.

    ``of_users``: the test users with a truth the sample was drawn from (``n_users`` when all
    are scored); ``seed``: the sample's seed; ``chunk_users`` overrides the rows per chunk.
    """

    scorer: Scorer
    user_idx: npt.NDArray[np.int64]  # the test users' rows in the stage's matrices
    truth: sp.csr_matrix  # len(user_idx) x items, 1 where bought in the test window
    counts: sp.csr_matrix
    age_days: sp.csr_matrix
    user_vectors: npt.NDArray[np.float32]
    signal_vectors: npt.NDArray[np.float32] | None = None  # for als_signals
    of_users: int | None = None
    seed: int = EVAL_SEED
    chunk_users: int | None = None
    _cache: dict[tuple[Any, ...], npt.NDArray[np.float32]] = field(default_factory=dict)
    # the tallies ``evaluate_many`` made (the candidates' figures), which the gate's per-user
    # NDCG of the same recipes reads instead of scoring them again
    _kept: dict[tuple[str, str, int], RankTally] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_idx)

    @property
    def rows_per_chunk(self) -> int:
        """Users scored at once."""
        if self.chunk_users is not None:
            return max(2, self.chunk_users)
        return chunk_users_for(self.scorer.n_items)

    def info(self) -> dict[str, int]:
        """The sample: users scored, of how many, its seed and the users scored at once."""
        return {
            "users": self.n_users,
            "of_users": self.n_users if self.of_users is None else self.of_users,
            "seed": self.seed,
            "chunk_users": min(self.rows_per_chunk, max(1, self.n_users)),
        }

    def _component(
        self,
        name: str,
        recipe: Recipe,
        rows: slice,
        local: dict[tuple[Any, ...], npt.NDArray[np.float32]],
    ) -> npt.NDArray[np.float32]:
        """One user-dependent component (als, als_signals, ease) of these rows, unweighted:
        from the cache, computed into it while it fits in ``EVAL_CACHE_CELLS``, or computed
        for this chunk only (``local``: the chunk's parts shared by the recipes scored on it)."""
        key = (name, recipe.input_half_life_days if name == "ease" else None)
        hit = self._cache.get(key)
        if hit is not None:
            return hit[rows]
        cells = self.n_users * self.scorer.n_items
        if sum(m.size for m in self._cache.values()) + cells <= EVAL_CACHE_CELLS:
            whole = np.empty((self.n_users, self.scorer.n_items), dtype=np.float32)
            for part in chunks(self.n_users, self.rows_per_chunk):
                whole[part] = self._unit(name, recipe, part)
            self._cache[key] = whole
            return whole[rows]
        part_hit = local.get(key)
        if part_hit is None:
            part_hit = local[key] = self._unit(name, recipe, rows)
        return part_hit

    def _unit(self, name: str, recipe: Recipe, rows: slice) -> npt.NDArray[np.float32]:
        unit = Recipe(weights={name: 1.0}, input_half_life_days=recipe.input_half_life_days)
        return self.scorer.score_histories(
            self.counts[rows],
            self.age_days[rows],
            self.user_vectors[rows],
            unit,
            signal_vectors=None if self.signal_vectors is None else self.signal_vectors[rows],
        )

    def chunk_scores(
        self,
        recipe: Recipe,
        rows: slice,
        local: dict[tuple[Any, ...], npt.NDArray[np.float32]] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Exactly ``Scorer.score_histories`` for the users ``rows``, assembled from parts.

        Only als, als_signals and ease are kept as users x items matrices; popularity and
        trending are one row for everybody and repeat is sparse, so they are added directly.
        ``local`` shares the chunk's components between recipes scored on the same rows.
        """
        local = {} if local is None else local
        n_rows = len(range(*rows.indices(self.n_users)))
        total = np.zeros((n_rows, self.scorer.n_items), dtype=np.float32)
        for name in _DENSE:
            w = recipe.weight(name)
            if w:
                total += np.float32(w) * self._component(name, recipe, rows, local)
        rest = Recipe(
            weights={n: recipe.weight(n) for n in ("popularity", "trending", "repeat")},
            repeat_half_life_days=recipe.repeat_half_life_days,
            repeat_bonus=recipe.repeat_bonus,
        )
        total += self.scorer.score_histories(self.counts[rows], self.age_days[rows], None, rest)
        return total

    def scores(self, recipe: Recipe) -> npt.NDArray[np.float32]:
        """Every user's scores (users x items: for small sets; the figures use chunks)."""
        out = np.empty((self.n_users, self.scorer.n_items), dtype=np.float32)
        for rows in chunks(self.n_users, self.rows_per_chunk):
            out[rows] = self.chunk_scores(recipe, rows)
        return out

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
            of_users=self.of_users,
            seed=self.seed,
            chunk_users=self.chunk_users,
        )

    def tallies(
        self, jobs: Sequence[tuple[Recipe, str]], k: int = DEFAULT_K, *, keep: bool = False
    ) -> list[RankTally]:
        """One ``RankTally`` per (recipe, protocol), every user added chunk by chunk: each
        chunk's components are computed once for all the jobs. ``keep``: remember them, so
        the same job later costs nothing (a handful of candidates; tuning keeps none)."""
        keys = [(json.dumps(r.to_dict(), sort_keys=True), p, k) for r, p in jobs]
        todo = [i for i, key in enumerate(keys) if key not in self._kept]
        fresh = {i: RankTally(self.scorer.n_items, k) for i in todo}
        if todo:
            for rows in chunks(self.n_users, self.rows_per_chunk):
                local: dict[tuple[Any, ...], npt.NDArray[np.float32]] = {}
                truth, counts = self.truth[rows], self.counts[rows]
                for i in todo:
                    recipe, protocol = jobs[i]
                    scores = self.chunk_scores(recipe, rows, local)
                    fresh[i].add(scores, truth, counts, protocol)
        if keep:
            self._kept.update({keys[i]: t for i, t in fresh.items()})
        return [fresh[i] if i in fresh else self._kept[keys[i]] for i in range(len(jobs))]

    def evaluate_many(
        self, jobs: Sequence[tuple[Recipe, str]], k: int = DEFAULT_K
    ) -> list[dict[str, float]]:
        """``evaluate`` of each (recipe, protocol), sharing the chunks' components; the tallies
        are kept for ``user_ndcg`` (the gate)."""
        return [t.metrics() for t in self.tallies(jobs, k, keep=True)]

    def evaluate(self, recipe: Recipe, protocol: str, k: int = DEFAULT_K) -> dict[str, float]:
        """Metrics of ``recipe`` under ``protocol`` (``all`` or ``novel``)."""
        return self.tallies([(recipe, protocol)], k)[0].metrics()

    def user_ndcg(self, recipe: Recipe, protocol: str, k: int = DEFAULT_K) -> npt.NDArray[Any]:
        """NDCG@k of ``recipe`` for each user ``evaluate`` counts (``user_ndcg``)."""
        return self.tallies([(recipe, protocol)], k)[0].user_ndcg()


def describe_evaluation(info: dict[str, int]) -> str:
    """One line on the test users the figures rest on (``EvalSet.info``)."""
    users, of_users = info["users"], info["of_users"]
    which = (
        f"all {users:,} test users"
        if users >= of_users
        else f"a seeded sample of {users:,} of {of_users:,} test users (seed {info['seed']})"
    )
    return f"evaluation: {which}, scored {info['chunk_users']:,} at a time"


def rank_metrics(
    scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    k: int = DEFAULT_K,
) -> dict[str, float]:
    """Ranking metrics for rows of ``scores`` against ``truth``; see the module docstring."""
    tally = RankTally(scores.shape[1], k)
    tally.add(scores, truth, history, protocol)
    return tally.metrics()


def user_ndcg(
    scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
    history: sp.csr_matrix,
    protocol: str,
    k: int = DEFAULT_K,
) -> npt.NDArray[np.float64]:
    """NDCG@k of each user ``rank_metrics`` counts (same users, same order; its mean is
    ``rank_metrics``' ndcg): what the quality gate's paired comparison resamples."""
    tally = RankTally(scores.shape[1], k)
    tally.add(scores, truth, history, protocol)
    return tally.user_ndcg()


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


# ``top_k``'s shortcut: rows of at least this many items, cut in blocks of this many columns
FAST_TOP_K_MIN_ITEMS = 2048
FAST_TOP_K_BLOCK = 64


def top_k(scores: npt.NDArray[np.float32], k: int, chunk: int = 256) -> npt.NDArray[np.int64]:
    """Column indices of each row's k best scores, best first (rows in chunks: bounded memory).

    Exactly ``argpartition`` then a stable sort of those k (``_top_k_exact``): a long row
    goes through ``_top_k_fast`` first, which answers only where that result is unique.
    """
    out = np.empty((scores.shape[0], k), dtype=np.int64)
    for start in range(0, scores.shape[0], chunk):
        block = scores[start : start + chunk]
        if k < 1 or block.shape[1] < max(FAST_TOP_K_MIN_ITEMS, 2 * k * FAST_TOP_K_BLOCK):
            out[start : start + chunk] = _top_k_exact(block, k)
        else:
            out[start : start + chunk] = _top_k_fast(block, k)
    return out


def _top_k_exact(block: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    top = np.argpartition(block, -k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
    result: npt.NDArray[np.int64] = np.take_along_axis(top, order, axis=1)
    return result


def _top_k_fast(block: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """``_top_k_exact`` without selecting over every cell where the answer is unique.

    The k-th largest of the maxima of column blocks (k distinct cells) is at most the row's
    k-th largest value, so every top-k cell is among the cells at or above it: a few, sorted
    instead of the row. A row whose k best values are not strictly decreasing and strictly
    above the rest (ties, whose order ``argpartition`` decides) or holds NaN goes to
    ``_top_k_exact``; so does a row with too many cells at the bound.
    """
    rows, n = block.shape
    width = FAST_TOP_K_BLOCK
    whole = n // width * width
    maxima = block[:, :whole].reshape(rows, n // width, width).max(axis=2)
    if whole < n:
        maxima = np.hstack([maxima, block[:, whole:].max(axis=1, keepdims=True)])
    bound = np.partition(maxima, -k, axis=1)[:, -k]
    mask = block >= bound[:, None]
    counts = mask.sum(axis=1)
    limit = max(4 * k, n // 16)
    easy = np.isfinite(bound) & ~np.isnan(maxima).any(axis=1) & (counts <= limit)
    out = np.empty((rows, k), dtype=np.int64)
    hard = ~easy
    if easy.any():
        r, c = np.nonzero(mask[easy])
        sizes = counts[easy]
        width_pad = max(int(sizes.max()), k + 1)
        starts = np.cumsum(sizes) - sizes
        pos = np.arange(len(r)) - starts[r]
        values = np.full((len(sizes), width_pad), -np.inf, dtype=block.dtype)
        cols = np.zeros((len(sizes), width_pad), dtype=np.int64)
        values[r, pos] = block[easy][r, c]
        cols[r, pos] = c
        order = np.argsort(-values, axis=1, kind="stable")[:, : k + 1]
        best = np.take_along_axis(values, order, axis=1)
        unique = np.all(best[:, :-1] > best[:, 1:], axis=1)  # k + 1 strictly decreasing
        picked = np.take_along_axis(cols, order[:, :k], axis=1)
        easy_rows = np.flatnonzero(easy)
        out[easy_rows[unique]] = picked[unique]
        hard[easy_rows[~unique]] = True
    if hard.any():
        out[hard] = _top_k_exact(block[hard], k)
    return out


@dataclass(frozen=True)
class TruthSample:
    """``build_truth``'s users and truth, with the number of test users they were drawn from."""

    user_idx: npt.NDArray[np.int64]
    truth: sp.csr_matrix
    of_users: int
    seed: int


def sample_truth(
    user_keys: pd.Index,
    item_keys: pd.Index,
    test_users: npt.ArrayLike,
    test_items: npt.ArrayLike,
    *,
    max_users: int | None = None,
    seed: int = EVAL_SEED,
) -> TruthSample:
    """Rows of the test users known at the cut-off and their truth among known items.

    ``user_keys`` / ``item_keys`` name the model's rows and columns (ids or codes) and
    ``test_users`` / ``test_items`` are the test purchases in the same kind of key. When more
    than ``max_users`` (``DEFAULT_EVAL_USERS`` when None) users have a truth, a seeded sample
    of that many is kept, in row order; the catalogue's size never shrinks it (the scoring is
    chunked). Raises ValueError when ``max_users`` < 1.
    """
    limit = DEFAULT_EVAL_USERS if max_users is None else int(max_users)
    if limit < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    # each test purchase's row and column in the model's matrices
    user_idx = user_keys.get_indexer(test_users)
    item_idx = item_keys.get_indexer(test_items)
    known = (user_idx >= 0) & (item_idx >= 0)
    user_idx, item_idx = user_idx[known], item_idx[known]
    eval_user_idx = np.unique(user_idx)
    of_users = len(eval_user_idx)
    if of_users > limit:
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
    return TruthSample(eval_user_idx.astype(np.int64), truth, of_users, seed)


def build_truth(
    user_keys: pd.Index,
    item_keys: pd.Index,
    test_users: npt.ArrayLike,
    test_items: npt.ArrayLike,
    *,
    max_users: int | None = None,
    seed: int = EVAL_SEED,
) -> tuple[npt.NDArray[np.int64], sp.csr_matrix]:
    """``sample_truth``'s (the users' rows, truth: one row each)."""
    sample = sample_truth(
        user_keys, item_keys, test_users, test_items, max_users=max_users, seed=seed
    )
    return sample.user_idx, sample.truth


def build_evalset(
    scorer: Scorer,
    user_keys: pd.Index,
    item_keys: pd.Index,
    test_users: npt.ArrayLike,
    test_items: npt.ArrayLike,
    *,
    max_users: int | None = None,
    seed: int = EVAL_SEED,
) -> EvalSet:
    """An EvalSet over ``sample_truth``'s users, scored by ``scorer`` (same index space)."""
    sample = sample_truth(
        user_keys, item_keys, test_users, test_items, max_users=max_users, seed=seed
    )
    user_idx = sample.user_idx
    user_vectors, signal_vectors = _vectors(scorer, user_idx)
    return EvalSet(
        scorer=scorer,
        user_idx=user_idx,
        truth=sample.truth,
        counts=scorer.history_counts[user_idx],
        age_days=scorer.history_age_days[user_idx],
        user_vectors=user_vectors,
        signal_vectors=signal_vectors,
        of_users=sample.of_users,
        seed=seed,
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
    the top k. In chunks of users: ``RankTally`` with ``first_unbought``.
    """
    tally = RankTally(scores.shape[1], k, first_unbought)
    tally.add(scores, truth, history, protocol)
    return tally.unbought()


def _unbought_truth(
    truth: sp.csr_matrix, history: sp.csr_matrix, protocol: str, first_unbought: int
) -> int:
    """Test purchases (user, item) of items from ``first_unbought`` on, under ``protocol``."""
    kept_truth = truth.tocsr()
    if protocol == "novel":
        seen = history.tocsr().astype(bool).astype(np.int8)
        kept_truth = (kept_truth.astype(bool).astype(np.int8) - kept_truth.multiply(seen)).tocsr()
        kept_truth.eliminate_zeros()
    kept_truth = kept_truth[np.diff(kept_truth.indptr) > 0]
    return int((kept_truth.indices >= first_unbought).sum())
