"""Fitting the model components and the candidate recipes built from them.

implicit is untyped; it stays behind ``fit_als`` so the rest of the trainer is typed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from service.clock import SECONDS_PER_DAY
from service.errors import ModelFitError
from service.scoring import PROTOCOLS, Recipe, Scorer
from training.encode import MIN_AGE_DAYS, IdMaps
from training.evaluate import EvalSet, build_evalset
from training.signals import Signals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelParams:
    """Hyper-parameters of the fitted components (the search space of tuning)."""

    factors: int = 64
    # 8 cold iterations, then 2 more from the previous stage's factors at each later stage:
    # on Online Retail as good as 15 cold ones (ALS NDCG@10 0.332 vs 0.328), in less time
    iterations: int = 8
    regularization: float = 0.05
    weighting: str = "bm25"  # or "confidence"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    alpha: float = 2.0  # confidence weighting: 1 + alpha * log1p(count)
    # an order of q units of an item weighs 1 + quantity_weight * ln(q) in ALS (0: every order
    # 1). Off by default: on Online Retail it lowers ALS's test NDCG@10 (0.3315 at 0, 0.3285 at
    # 0.25, 0.3245 at 0.5, 0.3193 at 1.0; untuned), its wholesale customers buying dozens of all
    quantity_weight: float = 0.0
    input_half_life_days: float = 60.0  # older purchases count less when fitting
    ease_lambda: float = 300.0
    ease_max_items: int = 6000  # EASE inverts an items x items matrix: small catalogues only
    trending_days: int = 30
    warm_iterations: int = 2  # iterations when refitting from the previous stage's factors
    # weaker signals (training.signals): one event next to one purchase, in the second ALS only
    view_weight: float = 0.1
    add_to_cart_weight: float = 0.3
    # users who only browsed and items only viewed or carted get rows in the second ALS
    # (training.signals); off: only users and items with purchases, the rule before issue 14
    every_visitor: bool = True
    seed: int = 42
    threads: int = 0  # 0: all cores
    # from this many served items the trainer builds an ANN index over the item factors
    # (issue 15, item 4; ``training.ann``); 0: always
    ann_min_items: int = 100_000

    def __post_init__(self) -> None:
        if self.weighting not in ("bm25", "confidence"):
            raise ValueError(f"weighting must be 'bm25' or 'confidence', not {self.weighting!r}")
        if self.factors < 1 or self.iterations < 1 or self.warm_iterations < 1:
            raise ValueError("factors, iterations and warm_iterations must be >= 1")
        if self.ann_min_items < 0:
            raise ValueError(f"ann_min_items must be >= 0, not {self.ann_min_items}")
        if self.regularization < 0 or self.ease_lambda <= 0 or self.trending_days < 1:
            raise ValueError("regularization >= 0, ease_lambda > 0 and trending_days >= 1")
        if not 0.0 <= self.quantity_weight <= 10.0:
            raise ValueError(
                f"quantity_weight must be between 0 and 10, not {self.quantity_weight}"
            )
        for name in ("view_weight", "add_to_cart_weight"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (a purchase is 1), not {value}")

    @property
    def signal_weights(self) -> tuple[float, float]:
        """Weights of the types in ``training.signals.SIGNAL_TYPES``, in that order."""
        return (self.view_weight, self.add_to_cart_weight)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelParams:
        """Parameters from a manifest (one from before signal or quantity weights: without)."""
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {
            "view_weight": 0.0,
            "add_to_cart_weight": 0.0,
            "quantity_weight": 0.0,  # fitted before quantities counted
            "every_visitor": False,  # fitted when only purchasers' signals counted
        }
        values.update({k: v for k, v in data.items() if k in known})
        return cls(**values)


@dataclass
class Stage:
    """Components fitted on one slice of the purchases (ids, history, factors, popularity).

    ``user_codes`` / ``item_codes`` give, for each row of the stage's matrices, the code in the
    run's IdMaps; ``user_ids`` / ``item_ids`` are the shop's ids of the same rows.

    The second ALS may have more rows: ``signal_user_codes`` / ``signal_item_codes`` are its
    rows' codes (``training.signals``: the purchase rows first, in the same order, then the
    visitors and items seen only in the signals), and ``signal_*_factors`` have one row each.
    ``scorer`` scores the purchase rows; ``served_item_codes`` are the columns of the served
    model (the purchase items, then the items only viewed or carted).
    """

    user_codes: npt.NDArray[np.int64]
    item_codes: npt.NDArray[np.int64]
    user_ids: pd.Index
    item_ids: pd.Index
    counts: sp.csr_matrix
    age_days: sp.csr_matrix
    reference_time: pd.Timestamp
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    popularity: npt.NDArray[np.float32]
    trending: npt.NDArray[np.float32]
    ease_b: npt.NDArray[np.float32] | None = None
    # the second ALS, on purchases plus the weaker signals (None in a run without signals)
    signal_user_factors: npt.NDArray[np.float32] | None = None
    signal_item_factors: npt.NDArray[np.float32] | None = None
    signal_pairs: int = 0  # (user, item) pairs where weaker signals reached it
    timings: dict[str, float] = field(default_factory=dict)
    # what ALS was fitted on before recency and BM25: ``counts`` weighed by quantity
    strength: sp.csr_matrix | None = None
    signal_user_codes: npt.NDArray[np.int64] | None = None  # rows of signal_user_factors
    signal_item_codes: npt.NDArray[np.int64] | None = None  # rows of signal_item_factors
    # the shop's ids of the second ALS's rows after the purchase rows (visitors, items)
    extra_user_ids: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))
    extra_item_ids: pd.Index = field(default_factory=lambda: pd.Index([], dtype=object))

    @property
    def served_item_ids(self) -> pd.Index:
        """The shop's ids of ``served_item_codes``."""
        return self.item_ids.append(self.extra_item_ids)

    @property
    def served_item_codes(self) -> npt.NDArray[np.int64]:
        """Codes of the served model's items: the purchase items, then those only signalled."""
        return self.item_codes if self.signal_item_codes is None else self.signal_item_codes

    def scorer(self) -> Scorer:
        """The components over the purchase rows (what every evaluation figure scores)."""
        n_users, n_items = len(self.user_codes), len(self.item_codes)
        return Scorer(
            item_factors=self.item_factors,
            user_factors=self.user_factors,
            history_counts=self.counts,
            history_age_days=self.age_days,
            popularity=self.popularity,
            trending=self.trending,
            ease_b=self.ease_b,
            signal_item_factors=None
            if self.signal_item_factors is None
            else self.signal_item_factors[:n_items],
            signal_user_factors=None
            if self.signal_user_factors is None
            else self.signal_user_factors[:n_users],
        )

    def served_scorer(self) -> Scorer:
        """The components over the served model's items (``served_item_codes``): an item only
        viewed or carted has popularity 0, no purchase-ALS vector (zeros), no EASE weight and
        its learnt ``als_signals`` vector; the users are the purchase rows.

        Standardised over the purchase items (``Scorer.n_scored``), so its scores of those items
        are ``scorer()``'s: the model served is the model evaluated."""
        arrays = served_components(self)
        return Scorer(
            item_factors=arrays["item_factors"],
            user_factors=self.user_factors,
            history_counts=arrays["history_counts"],
            history_age_days=arrays["history_age_days"],
            popularity=arrays["popularity"],
            trending=arrays["trending"],
            ease_b=arrays.get("ease_b"),
            signal_item_factors=self.signal_item_factors,
            signal_user_factors=None
            if self.signal_user_factors is None
            else self.signal_user_factors[: len(self.user_codes)],
            n_scored=len(self.item_codes),
        )

    def evalset(self, test: pd.DataFrame, *, max_users: int | None = None) -> EvalSet:
        """Evaluation users of a coded test slice, in this stage's index space."""
        return build_evalset(
            self.scorer(),
            pd.Index(self.user_codes),
            pd.Index(self.item_codes),
            test["user"].to_numpy(),
            test["item"].to_numpy(),
            max_users=max_users,
        )


def served_components(stage: Stage) -> dict[str, Any]:
    """The item-side arrays of ``stage`` widened to its served items (``served_item_codes``).

    Items after the purchase items were only viewed or carted: zero purchase-ALS vectors,
    popularity and trending 0, no history. Keys: item_factors, history_counts and
    history_age_days (CSR, users x served items), popularity, trending and, when the stage has
    EASE, ease_b: purchase items x purchase items, as fitted (``Scorer`` scores the other items
    0 in EASE, the inverse of a block-diagonal Gram matrix; padding it would cost
    (purchase + view-only items)^2 floats for zeros).
    """
    n_items = len(stage.item_codes)
    extra = len(stage.served_item_codes) - n_items
    shape = (stage.counts.shape[0], n_items + extra)

    def widen(matrix: sp.csr_matrix) -> sp.csr_matrix:
        return sp.csr_matrix((matrix.data, matrix.indices, matrix.indptr), shape=shape)

    def pad(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.concatenate([values, np.zeros(extra, dtype=values.dtype)])

    out: dict[str, Any] = {
        "item_factors": np.vstack(
            [stage.item_factors, np.zeros((extra, stage.item_factors.shape[1]), np.float32)]
        ),
        "history_counts": widen(stage.counts),
        "history_age_days": widen(stage.age_days),
        "popularity": pad(stage.popularity),
        "trending": pad(stage.trending),
    }
    if stage.ease_b is not None:
        out["ease_b"] = stage.ease_b
    return out


def build_history(
    coded: pd.DataFrame, reference_time: pd.Timestamp
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], sp.csr_matrix, sp.csr_matrix]:
    """User x item matrices of distinct orders and days since the last purchase.

    ``coded`` comes from ``encode`` (or a slice of it). Returns (user_codes, item_codes,
    counts, age_days): the codes of the matrices' rows and columns, and two matrices that share
    one sparsity pattern.
    """
    o = coded["order"].to_numpy(dtype=np.int64)
    ts = coded["timestamp"].to_numpy(dtype="datetime64[ns]").astype(np.int64)
    # codes are dense (0..n-1), so presence counts replace sorting to find the rows present;
    # user_idx / item_idx: each purchase's row and column in the matrices
    user_codes, user_idx = _compact(coded["user"].to_numpy(dtype=np.int64))
    item_codes, item_idx = _compact(coded["item"].to_numpy(dtype=np.int64))
    n_users, n_items = len(user_codes), len(item_codes)
    pair = user_idx * n_items + item_idx
    n_orders = int(o.max()) + 1 if len(o) else 1
    if n_users * n_items * n_orders < 2**62:
        order = np.argsort(pair * n_orders + o, kind="stable")  # one int64 sort
    else:
        order = np.lexsort((o, pair))
    pair, o, ts = pair[order], o[order], ts[order]
    new_pair = np.r_[True, pair[1:] != pair[:-1]]
    starts = np.flatnonzero(new_pair)
    new_order = new_pair | np.r_[True, o[1:] != o[:-1]]
    # distinct orders per pair: several lines of one item in one order count once
    orders_per_pair = np.add.reduceat(new_order, starts).astype(np.float32)
    last = np.maximum.reduceat(ts, starts)
    pairs = pair[starts]
    pair_user_idx, pair_item_idx = pairs // n_items, pairs % n_items
    ref_ns = np.int64(pd.Timestamp(reference_time).value)
    age = np.maximum((ref_ns - last) / (SECONDS_PER_DAY * 1e9), MIN_AGE_DAYS).astype(np.float32)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_user_idx, minlength=n_users), out=indptr[1:])
    indices = pair_item_idx.astype(np.int32)
    shape = (n_users, n_items)
    counts = sp.csr_matrix((orders_per_pair, indices, indptr), shape=shape)
    ages = sp.csr_matrix((age, indices.copy(), indptr.copy()), shape=shape)
    return user_codes, item_codes, counts, ages


def purchase_strength(
    coded: pd.DataFrame,
    user_codes: npt.NDArray[np.int64],
    item_codes: npt.NDArray[np.int64],
    quantity_weight: float,
) -> sp.csr_matrix:
    """User x item purchase strength: each distinct order counts ``1 + w * ln(units)``.

    ``units`` are the order's units of the item (the ``quantity`` of its lines, summed; at
    least 1), ``w`` is ``quantity_weight``: 0 gives the distinct-order counts of
    ``build_history``, whose rows (``user_codes``) and columns (``item_codes``) and sparsity
    pattern this matrix shares. Logarithmic, so a wholesale line of 1,000 units weighs about
    4.5 orders (w = 0.5), not 1,000.
    """
    units = coded.groupby(["user", "item", "order"], sort=False)["quantity"].sum().clip(lower=1.0)
    per_order = 1.0 + quantity_weight * np.log(units.to_numpy(dtype=np.float64))
    users = units.index.get_level_values("user").to_numpy(dtype=np.int64)
    items = units.index.get_level_values("item").to_numpy(dtype=np.int64)
    rows = np.searchsorted(user_codes, users)
    cols = np.searchsorted(item_codes, items)
    shape = (len(user_codes), len(item_codes))
    strength = sp.coo_matrix((per_order, (rows, cols)), shape=shape).tocsr()
    strength.sum_duplicates()
    strength.sort_indices()
    return sp.csr_matrix(strength, dtype=np.float32)


def _compact(codes: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(sorted distinct codes, each code's position among them), without sorting."""
    if not len(codes):
        return codes, codes
    present = np.bincount(codes) > 0
    distinct = np.flatnonzero(present).astype(np.int64)
    position = np.cumsum(present) - 1
    return distinct, position[codes].astype(np.int64)


def _widen(matrix: sp.csr_matrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """``matrix`` as the top-left block of an otherwise empty ``shape``."""
    if matrix.shape == shape:
        return matrix
    indptr = np.concatenate(
        [matrix.indptr, np.full(shape[0] - matrix.shape[0], matrix.indptr[-1], dtype=np.int64)]
    )
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=shape)


def _distinct_buyers(counts: sp.csr_matrix) -> npt.NDArray[np.float32]:
    return np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float32)


def _trending(counts: sp.csr_matrix, age_days: sp.csr_matrix, days: int) -> npt.NDArray[np.float32]:
    recent = age_days.data <= days
    return np.bincount(counts.indices[recent], minlength=counts.shape[1]).astype(np.float32)


def als_weights(
    counts: sp.csr_matrix,
    age_days: sp.csr_matrix,
    params: ModelParams,
    signals: sp.csr_matrix | None = None,
    *,
    purchase_rows: tuple[int, int] | None = None,
) -> sp.csr_matrix:
    """The confidence matrix ALS is fitted on (recency-decayed counts, BM25 or log weighting).

    ``signals`` (same shape, already decayed and weighted: ``training.signals``) join the
    decayed purchase counts: under BM25 they are weighted with the purchases' statistics and
    added; under confidence weighting they are added before the log. ``purchase_rows``: the
    purchases fill only this top-left block (the rest are visitors and items seen only in the
    signals), and BM25's statistics come from that block alone, so the purchases weigh exactly
    what they weigh without the visitors.
    """
    weighted = counts.copy()
    weighted.data = (counts.data * np.exp(-age_days.data / params.input_half_life_days)).astype(
        np.float32
    )
    has_signals = signals is not None and signals.nnz > 0
    if params.weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        block = weighted
        if purchase_rows is not None and purchase_rows != weighted.shape:
            block = weighted[: purchase_rows[0], : purchase_rows[1]]
        out = _widen(
            sp.csr_matrix(bm25_weight(block, K1=params.bm25_k1, B=params.bm25_b).tocsr()),
            weighted.shape,
        )
        if has_signals:
            out = out + _bm25_like(block, signals, params.bm25_k1, params.bm25_b)
    else:
        out = weighted + signals if has_signals else weighted
        out.data = (1.0 + params.alpha * np.log1p(out.data)).astype(np.float32)
    out = sp.csr_matrix(out, dtype=np.float32)
    out.eliminate_zeros()
    return out


def _bm25_like(purchases: sp.csr_matrix, signals: sp.csr_matrix, k1: float, b: float) -> Any:
    """``signals`` weighted by BM25 with the purchases' statistics (as implicit's bm25_weight).

    Item idf and user length come from purchases alone: views are plentiful, and counted in
    the statistics they would lower every popular item's idf and lengthen every browser's row,
    which shrinks the weight of the purchases themselves. ``signals`` may have more rows and
    columns than ``purchases`` (visitors and items without purchases): an item nobody bought
    has the idf of an item one buyer fewer than the rarest, and a visitor who never bought the
    length of an average buyer (not the shortest row, which would make one view weigh like a
    purchase).
    """
    n_users, n_items = purchases.shape
    buyers = np.bincount(purchases.indices, minlength=n_items)
    buyers = np.concatenate([buyers, np.zeros(signals.shape[1] - n_items, dtype=buyers.dtype)])
    idf = np.log(n_users) - np.log1p(buyers)
    row_sums = np.asarray(purchases.sum(axis=1)).ravel()
    length_norm = (1.0 - b) + b * row_sums / row_sums.mean()
    length_norm = np.concatenate([length_norm, np.ones(signals.shape[0] - n_users)])
    out = signals.tocoo()
    out.data = out.data * (k1 + 1.0) / (k1 * length_norm[out.row] + out.data) * idf[out.col]
    return out.tocsr()


def fit_als(
    counts: sp.csr_matrix,
    age_days: sp.csr_matrix,
    params: ModelParams,
    *,
    init: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None,
    signals: sp.csr_matrix | None = None,
    purchase_rows: tuple[int, int] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Fit implicit's ALS; warm-started (``params.warm_iterations``) when ``init`` is given.

    ``signals``: weaker evidence added to the purchases, ``purchase_rows`` the block the
    purchases fill (see ``als_weights``). Returns (user_factors, item_factors) as float32
    arrays.
    """
    from implicit.cpu.als import AlternatingLeastSquares

    weights = als_weights(counts, age_days, params, signals, purchase_rows=purchase_rows)
    # implicit parallelises itself; a BLAS thread pool underneath only oversubscribes the cores
    # (implicit checks this when the model is constructed, so construct it inside the limit)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            iterations=params.warm_iterations if init is not None else params.iterations,
            random_state=params.seed,
            num_threads=params.threads,
            calculate_training_loss=False,
        )
        if init is not None:
            # copies: implicit updates its factors in place, and ``init`` is the caller's
            model.user_factors = np.array(init[0], dtype=np.float32, order="C", copy=True)
            model.item_factors = np.array(init[1], dtype=np.float32, order="C", copy=True)
        model.fit(weights, show_progress=False)
    user_factors = np.asarray(model.user_factors, dtype=np.float32)
    item_factors = np.asarray(model.item_factors, dtype=np.float32)
    if not (np.isfinite(user_factors).all() and np.isfinite(item_factors).all()):
        raise ModelFitError("ALS factors are not finite; lower the learning weights or factors")
    return user_factors, item_factors


def fit_ease(counts: sp.csr_matrix, lam: float) -> npt.NDArray[np.float32]:
    """EASE (Steck 2019): closed-form item-item weights with a zero diagonal."""
    binary = counts.copy()
    binary.data = np.ones_like(binary.data, dtype=np.float64)
    gram = (binary.T @ binary).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    try:
        inverse = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise ModelFitError(f"EASE matrix could not be inverted: {exc}") from None
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return np.asarray(weights, dtype=np.float32)


def reindex_factors(
    old_codes: npt.NDArray[np.int64],
    old_factors: npt.NDArray[np.float32],
    new_codes: npt.NDArray[np.int64],
    seed: int,
) -> npt.NDArray[np.float32]:
    """Factors for ``new_codes``: copied where the code is known, small random values otherwise."""
    rng = np.random.default_rng(seed)
    out = (rng.random((len(new_codes), old_factors.shape[1]), dtype=np.float32) * 0.01).astype(
        np.float32
    )
    where = pd.Index(old_codes).get_indexer(new_codes)
    known = where >= 0
    out[known] = old_factors[where[known]]
    return out


def _warm_init(
    previous: Stage,
    user_factors: npt.NDArray[np.float32],
    item_factors: npt.NDArray[np.float32] | None,
    user_codes: npt.NDArray[np.int64],
    item_codes: npt.NDArray[np.int64],
    params: ModelParams,
    *,
    signal: bool = False,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
    """A previous stage's factors moved to the rows of ``user_codes`` / ``item_codes``, or None
    when they cannot be. ``signal``: the factors are the second ALS's (rows
    ``previous.signal_*_codes``)."""
    if item_factors is None or user_factors.shape[1] != params.factors:
        return None
    old_users, old_items = previous.user_codes, previous.item_codes
    if signal and previous.signal_user_codes is not None and previous.signal_item_codes is not None:
        old_users, old_items = previous.signal_user_codes, previous.signal_item_codes
    if len(old_users) != len(user_factors) or len(old_items) != len(item_factors):
        return None
    return (
        reindex_factors(old_users, user_factors, user_codes, params.seed),
        reindex_factors(old_items, item_factors, item_codes, params.seed + 1),
    )


def fit_stage(
    coded: pd.DataFrame,
    reference_time: pd.Timestamp,
    params: ModelParams,
    ids: IdMaps,
    *,
    warm_from: Stage | None = None,
    with_ease: bool | None = None,
    signals: Signals | None = None,
    signals_until: pd.Timestamp | None = None,
) -> Stage:
    """Fit every component on ``coded`` purchases (all up to ``reference_time``).

    ``with_ease`` None: fit EASE when this slice's catalogue is small enough; a run decides
    once for all its stages (``training.pipeline``) so that they agree.
    ``signals``: views and add-to-carts (``training.signals``). With them a second ALS is
    fitted on purchases plus the signals up to ``signals_until`` (default ``reference_time``;
    the serving stage passes the newest signal's time, so browsing after the last purchase
    counts too, as the freshest), weighted by ``params``: the ``als_signals`` component. The
    first ALS stays purchase-only. A stage with no signal in its range shares the purchase
    factors, so every stage of a run has the same components.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    user_codes, item_codes, counts, ages = build_history(coded, reference_time)
    strength = counts
    if params.quantity_weight > 0 and "quantity" in coded:
        strength = purchase_strength(coded, user_codes, item_codes, params.quantity_weight)
    timings["history"] = time.perf_counter() - t0
    init = None
    if warm_from is not None:
        init = _warm_init(
            warm_from,
            warm_from.user_factors,
            warm_from.item_factors,
            user_codes,
            item_codes,
            params,
        )
    t0 = time.perf_counter()
    user_factors, item_factors = fit_als(strength, ages, params, init=init)
    timings["als"] = time.perf_counter() - t0
    weak = None
    signal_factors = None
    signal_rows = (user_codes, item_codes)
    if signals is not None:
        t0 = time.perf_counter()
        seen = signals if params.every_visitor else signals.purchasers_only()
        cut = reference_time if signals_until is None else max(signals_until, reference_time)
        if params.every_visitor:
            # visitors and items first seen in the signals up to this stage's cut: extra rows
            signal_rows = seen.rows(user_codes, item_codes, cut)
        weak = seen.matrix(
            *signal_rows,
            reference_time,
            params.signal_weights,
            params.input_half_life_days,
            until=signals_until,
        )
        signal_factors = (user_factors, item_factors)  # no signal in range: the first ALS
        if weak is None:
            signal_rows = (user_codes, item_codes)
        else:
            signal_init = None
            if warm_from is not None and warm_from.signal_user_factors is not None:
                signal_init = _warm_init(
                    warm_from,
                    warm_from.signal_user_factors,
                    warm_from.signal_item_factors,
                    *signal_rows,
                    params,
                    signal=True,
                )
            signal_factors = fit_als(
                _widen(strength, weak.shape),
                _widen(ages, weak.shape),
                params,
                init=signal_init,
                signals=weak,
                purchase_rows=strength.shape,
            )
        timings["als_signals"] = time.perf_counter() - t0
    ease_b = None
    if with_ease is None:
        with_ease = len(item_codes) <= params.ease_max_items
    if with_ease:
        t0 = time.perf_counter()
        ease_b = fit_ease(counts, params.ease_lambda)
        timings["ease"] = time.perf_counter() - t0
    return Stage(
        user_codes=user_codes,
        item_codes=item_codes,
        user_ids=ids.users[user_codes],
        item_ids=ids.items[item_codes],
        counts=counts,
        age_days=ages,
        reference_time=pd.Timestamp(reference_time),
        user_factors=user_factors,
        item_factors=item_factors,
        popularity=_distinct_buyers(counts),
        trending=_trending(counts, ages, params.trending_days),
        ease_b=ease_b,
        signal_user_factors=None if signal_factors is None else signal_factors[0],
        signal_item_factors=None if signal_factors is None else signal_factors[1],
        signal_pairs=0 if weak is None else int(weak.nnz),
        timings=timings,
        strength=strength,
        signal_user_codes=None if signal_factors is None else signal_rows[0],
        signal_item_codes=None if signal_factors is None else signal_rows[1],
        extra_user_ids=_ids_of(ids.users, signal_rows[0][len(user_codes) :], signals, "users"),
        extra_item_ids=_ids_of(ids.items, signal_rows[1][len(item_codes) :], signals, "items"),
    )


def _ids_of(
    known: pd.Index, codes: npt.NDArray[np.int64], signals: Signals | None, axis: str
) -> pd.Index:
    """The shop's ids of ``codes``: positions in ``known``, or after it in the signals' new
    users or items (``axis``)."""
    if signals is None or not len(codes):
        return pd.Index([], dtype=object)
    new = signals.new_users if axis == "users" else signals.new_items
    inside = codes < len(known)
    out = np.empty(len(codes), dtype=object)
    out[inside] = known[codes[inside]]
    out[~inside] = new[codes[~inside] - len(known)]
    return pd.Index(out, dtype=object)


Candidates = dict[str, dict[str, Recipe]]


def default_candidates(with_ease: bool, with_signals: bool = False) -> Candidates:
    """The baselines and the untuned models; ``blend`` is what tuning improves on.

    ``repeat`` is not a candidate under ``novel`` (it can only recommend bought items). With
    signals, the ``novel`` blend starts from ``als_signals`` (browsing says most about what a
    user has not bought yet) and the ``all`` blend from the purchase-only ``als``; tuning may
    mix both in either.
    """
    cands: Candidates = {
        "popularity": {p: Recipe(weights={"popularity": 1.0}) for p in PROTOCOLS},
        "repeat": {"all": Recipe(weights={"repeat": 1.0, "trending": 1e-3})},
        "als": {p: Recipe(weights={"als": 1.0}) for p in PROTOCOLS},
    }
    if with_signals:
        cands["als_signals"] = {p: Recipe(weights={"als_signals": 1.0}) for p in PROTOCOLS}
    if with_ease:
        cands["ease"] = {p: Recipe(weights={"ease": 1.0}) for p in PROTOCOLS}
    ease = {"ease": 1.0} if with_ease else {}
    novel_cf = {"als_signals" if with_signals else "als": 1.0, **ease}
    cands["blend"] = {
        "all": Recipe(
            weights={"als": 1.0, **ease, "trending": 0.3, "repeat": 6.0},
            repeat_half_life_days=180.0,
            repeat_bonus=0.5,
        ),
        "novel": Recipe(weights={**novel_cf, "trending": 0.5}),
    }
    return cands
