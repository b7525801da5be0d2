"""Products the served model does not know: their vectors, and the ``new_arrivals`` source.

A product added to the catalogue after training has no row in the artifact, so no list could
hold it before a retrain. Each worker gives every such product (in the catalogue, active, not
out of stock) a vector in the ALS item space:

- **content**: the mean of the ALS item factors of the model's items of the same category
  (the catalogue's category, else the artifact's), each weighted by its buyers, and weighted
  once more for every attribute value it shares with the new product (``{"colour": "red"}``
  on both: that item counts twice); a product whose category the model has no item of is
  placed among all the model's items the same way;
- **fold-in**: once users the model knows viewed, carted or bought it since the model's
  ``saw_until``, the vector solved from those users' factors, the mirror of the user fold-in
  (``Recommender.fold_in``): (XᵀX + X_uᵀ(C_u - 1)X_u + λI) y = X_uᵀ C_u 1, XᵀX precomputed
  once per model version. It takes over from the content vector as the users come: the
  served direction is n/(n + K) of the fold-in's and K/(n + K) of the content vector's (unit
  vectors, n the known users seen, K = ``FOLD_IN_PRIOR_USERS``), at the content vector's
  length. The fold-in's own length is no measure of the product: with a handful of users the
  solve is shrunk towards zero by XᵀX (every user who did not touch it), and ranked by its
  raw length a product with a few early visitors would fall below every product nobody saw;
  ``benchmarks/new_arrivals.py`` measures both.

The content part is computed when the catalogue changes (``on_catalogue``: this worker's own
writes at once, the others' through the catalogue tail); the fold-in by a light periodic
refresh (``refresh``: one query for the new products' events); both build a new
``ArrivalIndex`` off the event loop and swap it whole, so a request reads one consistent
snapshot without a lock. A new model version is rebuilt for as soon as it is loaded.

``ArrivalIndex.pick`` is the query side: the new arrivals (added within
``RECOFFER_NEW_ARRIVALS_DAYS``) ranked for one user, under the query's filters, by their
match with the user and their popularity since arrival (inside a category the content
vectors are alike: the popularity is what tells those products apart).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from service.activity.records import DEFAULT_EVENT_WEIGHTS, Activity, CatalogueEntry, ItemRecord
from service.artifact.store import release_pages
from service.clock import SECONDS_PER_DAY, Clock
from service.recommend.recommender import Recommendation

if TYPE_CHECKING:
    from service.activity.store import ActivityStore
    from service.recommend.recommender import Query, Recommender
    from service.recommend.serving import ServingModel

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
MAX_FOLD_IN_ITEMS = 50_000  # the refresh's query names at most this many (the newest) products
FOLD_IN_PRIOR_USERS = 30.0  # known users at which the fold-in's direction weighs half
SPARE_CANDIDATES = 8  # looked at beyond the slots, for the ones the catalogue hid meanwhile
POPULARITY_WEIGHT = 1.0  # of the standardised popularity since arrival, beside the user's match


class ItemEvents(Protocol):
    """Where the refresh reads the new products' events (``activity.Repository``)."""

    def item_event_counts(
        self, item_ids: Sequence[str], since: datetime
    ) -> list[tuple[str, str, str, int]]: ...


class Models(Protocol):
    """Whoever holds the served Recommender (``recommend.holder.ModelHolder``)."""

    @property
    def current(self) -> Recommender | None: ...


@dataclass(frozen=True)
class ArrivalIndex:
    """One model version's vectors of the products it does not know, as arrays (read-only)."""

    version: str
    item_ids: list[str]
    vectors: FloatArray  # (products, factors), in the model's ALS item space
    folded: npt.NDArray[np.bool_]  # the vector is a fold-in (else the content vector)
    categories: npt.NDArray[np.object_]  # str or None
    created: npt.NDArray[np.float64]  # first seen, seconds since the epoch (nan: unknown)
    confirmed: npt.NDArray[np.bool_]  # the catalogue says in stock (not merely unknown)
    popularity: npt.NDArray[np.float64]  # distinct users since training (views, carts, buys)
    days: float
    slots: int
    reasons: list[str] = field(default_factory=list)  # "new in <category>", per product
    # the order for a user without a vector: popularity since arrival, then the newest
    unknown_rank: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))
    popularity_z: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))

    def __len__(self) -> int:
        return len(self.item_ids)

    def vector_of(self, item_id: str) -> FloatArray | None:
        """The vector of one product the model does not know (None when it has none)."""
        if item_id not in self.item_ids:
            return None
        vector: FloatArray = self.vectors[self.item_ids.index(item_id)]
        return vector

    def pick(
        self,
        query: Query,
        user_vector: FloatArray | None,
        recent: Sequence[Activity],
        now: datetime,
        unservable: Collection[str],
        n: int,
    ) -> list[Recommendation]:
        """At most ``n`` new arrivals for one user, best first, under every filter of ``query``.

        Ranked by ``user_vector`` (a known user's factors, a session's folded-in vector):
        the product's vector times it, standardised over the new products, plus
        ``POPULARITY_WEIGHT`` times their standardised log popularity since arrival (the two
        components as a recipe adds them); with none, by popularity since arrival, then newest
        first. ``unservable``: hidden, deleted or out of stock now (the catalogue may have
        changed since this index was built).
        """
        if n <= 0 or not self.item_ids:
            return []
        eligible = self.created >= now.timestamp() - self.days * SECONDS_PER_DAY
        if query.category is not None:
            eligible &= self.categories == query.category
        if query.in_stock:
            eligible &= self.confirmed
        if user_vector is None:
            ranked: npt.NDArray[np.floating[Any]] = self.unknown_rank
        else:
            ranked = _standardised(self.vectors @ user_vector.astype(np.float32, copy=False))
            ranked += POPULARITY_WEIGHT * self.popularity_z
        scores = np.where(eligible, ranked, -np.inf)
        banned = set(query.exclude)
        if query.exclude_purchased:
            banned |= {a.item_id for a in recent if a.type == "purchase"}
        # the best few first (argpartition); all of them only when those were left out
        few = min(len(scores), n + len(banned) + SPARE_CANDIDATES)
        top = np.argpartition(-scores, few - 1)[:few] if few < len(scores) else None
        out: list[Recommendation] = []
        for rows in (top, None):
            out = []
            ordered = np.argsort(-scores, kind="stable") if rows is None else rows
            if rows is not None:
                ordered = rows[np.argsort(-scores[rows], kind="stable")]
            for row in ordered.tolist():
                score = float(scores[row])
                if score == -np.inf:
                    return out  # sorted: the rest are not eligible either
                item_id = self.item_ids[row]
                if item_id in banned or item_id in unservable:
                    continue
                out.append(Recommendation(item_id, score, self.reasons[row], "new_arrivals"))
                if len(out) == n:
                    return out
            if rows is None:
                break
        return out


@dataclass
class _Space:
    """What one model version lends the products it does not know (built once per version)."""

    version: str
    saw_until: datetime
    item_factors: FloatArray
    weights: npt.NDArray[np.float64]  # buyers per model item (at least 1)
    pools: dict[str, npt.NDArray[np.int64]]  # category -> the model's item rows in it
    attribute_rows: dict[tuple[str, str], npt.NDArray[np.int64]]  # (key, value) -> rows
    user_index: Mapping[str, int]
    user_factors: FloatArray
    user_gram: npt.NDArray[np.float64]  # XᵀX of the user factors
    regularization: float
    fold_in_scale: float
    model_items: Mapping[str, int]
    means: dict[str | None, FloatArray] = field(default_factory=dict)

    @classmethod
    def of(cls, model: ServingModel, catalogue: Mapping[str, CatalogueEntry]) -> _Space:
        n = model.n_items
        categories: list[str | None] = [model.category_of(i) for i in range(n)]
        attribute_rows: dict[tuple[str, str], list[int]] = defaultdict(list)
        for item_id, entry in catalogue.items():
            row = model.item_index.get(item_id)
            if row is None:
                continue
            if entry.category is not None:
                categories[row] = entry.category
            for key, value in _attribute_pairs(entry.attributes):
                attribute_rows[(key, value)].append(row)
        pools: dict[str, list[int]] = defaultdict(list)
        for row, category in enumerate(categories):
            if category:
                pools[category].append(row)
        users = np.asarray(model.scorer.user_factors, dtype=np.float32)
        return cls(
            version=model.version,
            saw_until=model.artifact.manifest.saw_until,
            item_factors=np.asarray(model.scorer.item_factors, dtype=np.float32),
            weights=np.maximum(np.asarray(model.scorer.popularity, dtype=np.float64), 1.0),
            pools={c: np.asarray(r, dtype=np.int64) for c, r in pools.items()},
            attribute_rows={k: np.asarray(r, dtype=np.int64) for k, r in attribute_rows.items()},
            user_index=model.user_index,
            user_factors=users,
            user_gram=_gram_of(users),
            regularization=model.regularization,
            fold_in_scale=model.fold_in_scale,
            model_items=model.item_index,
        )

    def content_vector(self, entry: CatalogueEntry) -> FloatArray:
        """The popularity-weighted mean of the factors of the product's category, sharpened
        by its attribute values (see the module's docstring)."""
        category = entry.category if entry.category in self.pools else None
        pairs = [p for p in _attribute_pairs(entry.attributes) if p in self.attribute_rows]
        if not pairs:
            cached = self.means.get(category)
            if cached is None:
                cached = self.means[category] = self._mean(category, [])
            return cached
        return self._mean(category, pairs)

    def _mean(self, category: str | None, pairs: list[tuple[str, str]]) -> FloatArray:
        pool = self.pools[category] if category is not None else None
        weights = self.weights.copy() if pool is None else self.weights[pool].copy()
        base = weights.copy()
        for pair in pairs:
            rows = self.attribute_rows[pair]
            if pool is None:
                weights[rows] += base[rows]
            else:
                weights += base * np.isin(pool, rows)
        factors = self.item_factors if pool is None else self.item_factors[pool]
        total = float(weights.sum())
        if total <= 0:
            return np.zeros(self.item_factors.shape[1], dtype=np.float32)
        return np.asarray((weights @ factors) / total, dtype=np.float32)

    def fold_in(self, users: Mapping[int, float]) -> FloatArray:
        """The item vector for interactions of the model's users (rows) at their confidence."""
        rows = np.fromiter(users, dtype=np.int64, count=len(users))
        c = np.array([users[r] for r in rows.tolist()], dtype=np.float64) * self.fold_in_scale
        x = self.user_factors[rows].astype(np.float64)
        a = self.user_gram + (x.T * (c - 1.0)) @ x + self.regularization * np.eye(x.shape[1])
        try:
            return np.linalg.solve(a, x.T @ c).astype(np.float32)
        except np.linalg.LinAlgError:
            return np.zeros(x.shape[1], dtype=np.float32)


def _attribute_pairs(attributes: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(key, value) pairs of an item's attributes, values as JSON text (1 and "1" differ)."""
    if not attributes:
        return []
    out = []
    for key, value in attributes.items():
        values = value if isinstance(value, list) else [value]
        out += [(str(key), json.dumps(v, sort_keys=True)) for v in values if v is not None]
    return out


class NewArrivals:
    """One worker's vectors of the products its model does not know, and their refresh."""

    def __init__(
        self,
        models: Models,
        activity: ActivityStore,
        clock: Clock,
        *,
        days: float = 30.0,
        slots: int = 2,
        events: ItemEvents | None = None,
        event_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.models = models
        self.activity = activity
        self.clock = clock
        self.days = days
        self.slots = slots
        self.events = events
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self.index: ArrivalIndex | None = None  # replaced whole; readers take no lock
        self._space: _Space | None = None
        self._content: dict[str, FloatArray] = {}
        self._folded: dict[str, tuple[FloatArray, int]] = {}  # the solve, its known users
        self._popularity: dict[str, float] = {}
        self._stale = False
        self._catalogue: dict[str, CatalogueEntry] = {}  # a copy, taken under the lock
        self._lock = threading.Lock()

    def for_version(self, version: str) -> ArrivalIndex | None:
        """The index built for ``version`` (None while it is being rebuilt for a new one)."""
        index = self.index
        if index is None or index.version != version or not self.slots:
            return None
        return index

    # --- the builds (in a thread: call them through run_in_threadpool) -------------------

    def on_catalogue(self, rows: Iterable[ItemRecord]) -> None:
        """Content vectors for the products of ``rows`` the model does not know, then a swap.

        A model item whose category or attributes changed makes the next refresh rebuild the
        category means.
        """
        rows = list(rows)
        with self._lock:
            self._catalogue = self.activity.catalogue.copy()  # the tail writes it meanwhile
            space = self._current_space()
            if space is None:
                return
            touched = False
            for row in rows:
                if row.item_id in space.model_items:
                    self._stale = True  # the category means move: rebuilt at the next refresh
                    continue
                entry = self._catalogue.get(row.item_id) or row.entry()
                self._content[row.item_id] = space.content_vector(entry)
                touched = True
            if touched:
                self._publish(space)

    def refresh(self) -> None:
        """Rebuild for the served model when it changed, then fold in the new products'
        events since its ``saw_until`` (one query) and swap."""
        with self._lock:
            self._catalogue = self.activity.catalogue.copy()  # the tail writes it meanwhile
            space = self._current_space()
            if space is None:
                return
            unknown = self._unknown(space)
            if self.events is not None and unknown:
                newest = sorted(unknown, key=lambda i: -np.nan_to_num(_created(unknown[i])))
                try:
                    counts = self.events.item_event_counts(
                        newest[:MAX_FOLD_IN_ITEMS], space.saw_until
                    )
                except Exception:  # no database: the content vectors serve meanwhile
                    self._publish(space)
                    raise
                self._fold_in(space, counts)
            self._publish(space)

    def rebuild(self) -> None:
        """Everything again for the served model (a new version was loaded)."""
        with self._lock:
            self._space = None
        self.refresh()

    def _current_space(self) -> _Space | None:
        recommender = self.models.current
        if recommender is None:
            self.index = None
            return None
        model = recommender.model
        space = self._space
        if space is None or space.version != model.version:
            self._folded, self._popularity = {}, {}  # another model: another space
        if space is None or space.version != model.version or self._stale:
            started = time.perf_counter()
            space = self._space = _Space.of(model, self._catalogue)
            self._content = {i: space.content_vector(e) for i, e in self._unknown(space).items()}
            self._stale = False
            log.info(
                "new_items_space_built",
                extra={
                    "version": model.version,
                    "products": len(self._content),
                    "seconds": time.perf_counter() - started,
                },
            )
        return space

    def _unknown(self, space: _Space) -> dict[str, CatalogueEntry]:
        """The catalogue's products the model does not know, that may be served."""
        return {
            i: e for i, e in self._catalogue.items() if i not in space.model_items and e.servable
        }

    def _fold_in(self, space: _Space, counts: Iterable[tuple[str, str, str, int]]) -> None:
        purchase = self.event_weights.get("purchase", 1.0) or 1.0
        confidence: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        visitors: dict[str, set[str]] = defaultdict(set)
        for item_id, user_id, kind, n in counts:
            visitors[item_id].add(user_id)
            row = space.user_index.get(user_id)
            weight = self.event_weights.get(kind, 0.0)
            if row is not None and weight:
                confidence[item_id][row] += n * weight / purchase
        self._popularity = {i: float(len(u)) for i, u in visitors.items()}
        self._folded = {
            i: (space.fold_in(users), len(users)) for i, users in confidence.items() if users
        }

    def _publish(self, space: _Space) -> None:
        unknown = self._unknown(space)
        ids = [i for i in unknown if i in self._content]
        factors = space.item_factors.shape[1]
        vectors = np.zeros((len(ids), factors), dtype=np.float32)
        folded = np.zeros(len(ids), dtype=bool)
        for row, item_id in enumerate(ids):
            content = self._content[item_id]
            solved = self._folded.get(item_id)
            folded[row] = solved is not None
            vectors[row] = content if solved is None else _blend(content, *solved)
        popularity = np.array([self._popularity.get(i, 0.0) for i in ids], dtype=np.float64)
        created = np.array([_created(unknown[i]) for i in ids], dtype=np.float64)
        index = ArrivalIndex(
            version=space.version,
            item_ids=ids,
            vectors=vectors,
            folded=folded,
            categories=np.array([unknown[i].category for i in ids] or [], dtype=object),
            created=created,
            confirmed=np.array([unknown[i].in_stock is True for i in ids], dtype=bool),
            popularity=popularity,
            days=self.days,
            slots=self.slots,
            reasons=[
                f"new in {unknown[i].category}" if unknown[i].category else "new in the shop"
                for i in ids
            ],
            unknown_rank=_unknown_rank(popularity, created),
            popularity_z=_standardised(np.log1p(popularity)),
        )
        self.index = index


def _blend(content: FloatArray, solved: FloatArray, users: int) -> FloatArray:
    """The served vector of a product with a fold-in (see the module's docstring)."""
    length = float(np.linalg.norm(content))
    solved_length = float(np.linalg.norm(solved))
    if solved_length == 0:
        return content
    if length == 0:
        return solved
    share = users / (users + FOLD_IN_PRIOR_USERS)
    direction = share * solved / solved_length + (1 - share) * content / length
    norm = float(np.linalg.norm(direction))
    return content if norm == 0 else np.asarray(direction * (length / norm), dtype=np.float32)


def _standardised(values: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    """(values - mean) / std, zeros where they are all equal (on the request path: two dot
    products rather than numpy's slower mean and std)."""
    wide = np.array(values, dtype=np.float64)
    if not len(wide):
        return wide
    wide -= wide.sum() / len(wide)
    variance = float(wide @ wide) / len(wide)
    if variance <= 1e-24:
        return np.zeros(len(wide), dtype=np.float64)
    wide /= variance**0.5
    return wide


def _unknown_rank(
    popularity: npt.NDArray[np.float64], created: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Scores ordering by popularity, then the newest: the rank of each, best highest."""
    order = np.lexsort((-np.nan_to_num(created), -popularity))
    rank = np.empty(len(order), dtype=np.float64)
    rank[order] = np.arange(len(order), 0, -1, dtype=np.float64)
    return rank


def _created(entry: CatalogueEntry) -> float:
    return entry.created_at.timestamp() if entry.created_at is not None else float("nan")


GRAM_BLOCK_ROWS = 65_536


def _gram_of(vectors: FloatArray) -> npt.NDArray[np.float64]:
    """XᵀX in float64, a block of rows at a time: ten million users' factors never get a
    float64 copy (5 GB) at once (issue 15)."""
    k = int(vectors.shape[1])
    gram = np.zeros((k, k), dtype=np.float64)
    for start in range(0, int(vectors.shape[0]), GRAM_BLOCK_ROWS):
        block = np.asarray(vectors[start : start + GRAM_BLOCK_ROWS], dtype=np.float64)
        gram += block.T @ block
    release_pages(vectors)  # a mapped file's pages read here are not this worker's to keep
    return gram
