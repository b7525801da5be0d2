"""Recommendations from a loaded model: plain Python and numpy, no HTTP.

Three kinds of user:
- ``model``: the user is in the artifact. Their top candidates under both served recipes are
  precomputed when the model is loaded (for a bounded number of users, when users x items is
  small enough: ``serving.ServingOptions``), so a request is a filter over a short array;
  otherwise they are scored on the spot: with the version's ANN index (``service.ann``) a few
  hundred candidates re-ranked exactly with the served recipe, fetched again with more when the
  filters leave fewer than ``limit`` (up to ``ann_max_candidates``, then the whole catalogue),
  without one the whole catalogue.
- ``session``: the model has never seen the user, but they have recent events (views, carts,
  purchases). The events are folded into the ALS space (one small least-squares solve, the
  formula implicit's ``recalculate_user`` uses) and into EASE's input, and the served recipe
  scores them like a known user: a visitor who viewed products of one taste gets that taste.
- ``popular``: no history at all: popularity, within a category when asked.

Filters: exclude purchased items (the ``novel`` recipe, plus purchases made after training),
exclude ids, category, in stock (only items the catalogue says are in stock), bought within the
last N days (replenishment). Items hidden, deleted or out of stock in the catalogue are never
in any list, whatever the query. Short lists are topped up from popularity, marked ``popular``.

New arrivals (issue 14): products the model does not know, added to the catalogue lately,
take up to ``ArrivalIndex.slots`` positions of a list (``service.recommend.arrivals``), spread
through it and never the first (see ``_place``), marked ``new_arrivals``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from service import ann
from service.activity.records import DEFAULT_EVENT_WEIGHTS, Activity, CatalogueEntry
from service.clock import SECONDS_PER_DAY
from service.errors import UnknownItem
from service.recommend.serving import ServingModel
from service.scoring import Recipe

if TYPE_CHECKING:
    from service.recommend.arrivals import ArrivalIndex

MAX_REASON_ANCHORS = 50  # a long history explains through its most bought items

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Query:
    """One recommendation request, already validated."""

    user_id: str
    limit: int = 10
    exclude_purchased: bool = False
    exclude: frozenset[str] = frozenset()
    category: str | None = None
    in_stock: bool = False
    purchased_within_days: int | None = None


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    reason: str
    source: str


@dataclass
class Result:
    items: list[Recommendation]
    source: str


@dataclass(frozen=True)
class History:
    """A known user's purchases in the model: sorted item rows and order counts (a CSR row)."""

    item_idx: IntArray
    counts: npt.NDArray[np.float32]

    def counts_of(self, item_idx: Sequence[int]) -> npt.NDArray[np.float32]:
        """Order count of each of the rows ``item_idx`` (0 when never bought)."""
        wanted = np.asarray(item_idx, dtype=np.int64)
        if not len(self.item_idx):
            return np.zeros(len(wanted), dtype=np.float32)
        pos = np.minimum(np.searchsorted(self.item_idx, wanted), len(self.item_idx) - 1)
        return np.where(self.item_idx[pos] == wanted, self.counts[pos], 0).astype(np.float32)

    def anchors(self, k: int) -> IntArray:
        """The (at most) ``k`` most bought items."""
        if len(self.item_idx) <= k:
            return self.item_idx
        return self.item_idx[np.argpartition(-self.counts, k)[:k]]


NO_HISTORY = History(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


@dataclass(frozen=True)
class _Fold:
    """A session's events as the scorer takes them (``Recommender._session_fold``)."""

    item_idx: IntArray
    values: npt.NDArray[np.float32]
    ages: npt.NDArray[np.float32]
    vector: npt.NDArray[np.float32] | None
    signal_vector: npt.NDArray[np.float32] | None
    bought: list[int]


class Recommender:
    """Answers queries against one ServingModel plus what happened since it was trained."""

    def __init__(
        self,
        model: ServingModel,
        *,
        event_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.model = model
        self.event_weights = dict(event_weights or DEFAULT_EVENT_WEIGHTS)
        self._session_recipes = {p: self._session_recipe(r) for p, r in model.recipes.items()}
        # the rows of the last set of unservable ids seen (the store replaces it whole)
        self._unservable: tuple[Collection[str], set[int]] = (frozenset(), set())

    def _session_recipe(self, recipe: Recipe) -> Recipe:
        """The served recipe without "buy again" (a session's views are not purchases)."""
        weights = {k: v for k, v in recipe.weights.items() if k != "repeat" and v} or {"als": 1.0}
        session = Recipe(weights=weights, input_half_life_days=recipe.input_half_life_days)
        return session if self.model.scorer.can_use(session) else Recipe(weights={"als": 1.0})

    def recommend(
        self,
        query: Query,
        recent: Sequence[Activity] = (),
        catalogue: Mapping[str, CatalogueEntry] | None = None,
        now: datetime | None = None,
        hidden: Collection[str] = (),
        arrivals: ArrivalIndex | None = None,
    ) -> Result:
        """The ranked list for ``query``; ``recent`` are the user's events since training.

        ``hidden``: items hidden, deleted or out of stock in the catalogue, never recommended.
        ``arrivals``: the products this model does not know; new ones get a few positions.
        """
        m = self.model
        catalogue = catalogue or {}
        protocol = "novel" if query.exclude_purchased else "all"
        user_idx = m.user_index.get(query.user_id)
        recent_known = [a for a in recent if a.item_id in m.item_index]
        banned = self._banned(query, recent_known, catalogue)
        banned |= self._rows_of(hidden)
        if query.purchased_within_days is not None:
            return self._replenish(query, user_idx, recent_known, banned, now)
        if user_idx is not None:
            source = "model"
            picked = self._known(user_idx, protocol, query.limit, banned)
            history = self._history(user_idx)
        elif recent_known:
            source = "session"
            picked = self._session(recent_known, protocol, query.limit, banned, now)
            history = NO_HISTORY
        else:
            source = "popular"
            picked = []
            history = NO_HISTORY
        reasons = self._reasons([i for i, _ in picked], source, history, recent_known)
        items = [
            Recommendation(item_id=m.item_labels[i], score=s, reason=reason, source=source)
            for (i, s), reason in zip(picked, reasons, strict=True)
        ]
        if len(items) < query.limit:
            taken = banned | {i for i, _ in picked}
            if query.exclude_purchased:  # what the model saw them buy, not only the recent
                taken |= set(history.item_idx.tolist())
            items += self._popular_fill(query, taken)
        items = items[: query.limit]
        if arrivals is not None:
            items = self._with_arrivals(items, arrivals, query, user_idx, recent, now, hidden)
        overall = "popular"
        if items and items[0].source in (source, "new_arrivals"):
            overall = items[0].source
        return Result(items=items, source=overall)

    def _rows_of(self, ids: Collection[str]) -> set[int]:
        """The model's rows of ``ids``; remembered for the last set (one per catalogue change)."""
        seen, rows = self._unservable
        if seen is ids:
            return rows
        index = self.model.item_index
        rows = {index[i] for i in ids if i in index}
        if isinstance(ids, frozenset):
            self._unservable = (ids, rows)
        return rows

    def _with_arrivals(
        self,
        items: list[Recommendation],
        arrivals: ArrivalIndex,
        query: Query,
        user_idx: int | None,
        recent: Sequence[Activity],
        now: datetime | None,
        unservable: Collection[str],
    ) -> list[Recommendation]:
        """``items`` with up to ``arrivals.slots`` new arrivals placed in them (never first)."""
        m = self.model
        n = min(arrivals.slots, query.limit - 1)
        if n <= 0:
            return items
        recent_known = [a for a in recent if a.item_id in m.item_index]
        vector: npt.NDArray[np.float32] | None = None
        if user_idx is not None:
            vector = np.asarray(m.scorer.user_factors[user_idx], dtype=np.float32)
        elif recent_known:
            vector = self.session_vector(recent_known)
        picks = arrivals.pick(query, vector, recent, now or m.reference_time, unservable, n)
        if not picks:
            return items
        return _place(items[: query.limit - len(picks)], picks)

    def session_vector(self, recent: Sequence[Activity]) -> npt.NDArray[np.float32]:
        """The ALS vector of a session's events on the model's items (views, carts, buys)."""
        m = self.model
        weights: dict[int, float] = {}
        for a in recent:
            idx = m.item_index[a.item_id]
            weights[idx] = weights.get(idx, 0.0) + self.event_weights.get(a.type, 0.0)
        item_idx = np.fromiter(weights, dtype=np.int64, count=len(weights))
        values = np.array([weights[i] for i in item_idx], dtype=np.float32)
        purchase_weight = self.event_weights.get("purchase", 1.0) or 1.0
        return self.fold_in(item_idx, values / purchase_weight)

    def similar(self, item_id: str, limit: int, banned: Iterable[str] = ()) -> list[Recommendation]:
        """Items whose ALS vectors point the same way (cosine), best first: the purchase
        vectors, or for an item nobody bought the ``als_signals`` ones (``model.similarity``)."""
        m = self.model
        item_idx = m.item_index.get(item_id)
        if item_idx is None:
            raise UnknownItem(item_id)
        scores, verb = m.similarity(item_idx)
        scores[item_idx] = -np.inf
        for other in banned:
            idx = m.item_index.get(other)
            if idx is not None:
                scores[idx] = -np.inf
        top = _top(scores, limit)
        name = m.name_of(item_idx)
        return [
            Recommendation(str(m.item_ids[i]), float(scores[i]), f"{verb} {name}", "model")
            for i in top
            if np.isfinite(scores[i])
        ]

    # --- the three kinds of user ----------------------------------------------------------

    def _known(
        self, user_idx: int, protocol: str, limit: int, banned: set[int]
    ) -> list[tuple[int, float]]:
        m = self.model
        cached = m.candidates.get(protocol)
        row = m.precomputed_row(user_idx)
        if cached is not None and row is not None:
            picked: list[tuple[int, float]] = []
            for i, s in zip(cached[0][row].tolist(), cached[1][row].tolist(), strict=True):
                if s == -np.inf:
                    break  # sorted: the rest are excluded too
                if i not in banned:
                    picked.append((i, s))
                    if len(picked) == limit:
                        return picked
        recipe = m.recipes[protocol]
        if m.ann_indexes and ann.servable(recipe):
            hist, ages = m.scorer.history_counts, m.scorer.history_age_days
            start, end = hist.indptr[user_idx], hist.indptr[user_idx + 1]
            signals = m.scorer.signal_user_factors
            found = self._from_index(
                recipe,
                np.asarray(m.scorer.user_factors[user_idx], dtype=np.float32),
                None if signals is None else np.asarray(signals[user_idx], dtype=np.float32),
                hist.indices[start:end].astype(np.int64),
                hist.data[start:end],
                ages.data[start:end],
                limit,
                banned,
                exclude_own=protocol == "novel",
            )
            if found is not None:
                return found
        return _pick(self._known_scores(user_idx, protocol), limit, banned)

    def _from_index(
        self,
        recipe: Recipe,
        vector: npt.NDArray[np.float32] | None,
        signal_vector: npt.NDArray[np.float32] | None,
        item_idx: IntArray,
        counts: npt.NDArray[np.floating[Any]],
        ages: npt.NDArray[np.floating[Any]],
        limit: int,
        banned: set[int],
        *,
        exclude_own: bool,
        excluded: Collection[int] = (),
    ) -> list[tuple[int, float]] | None:
        """The best ``limit`` items not ``banned`` among the index's candidates re-ranked
        exactly with ``recipe`` (plus the user's own items when it buys again, unless
        ``exclude_own``; never ``excluded``); the fetch grows fourfold while the filters leave
        fewer, up to ``ann_max_candidates``. None: still short, score the whole catalogue."""
        m = self.model
        fetch = m.options.ann_candidates
        ceiling = max(fetch, m.options.ann_max_candidates)
        prior = m.prior_top(recipe)
        own = item_idx if recipe.uses("repeat") and not exclude_own else item_idx[:0]
        dropped = set(banned)
        dropped.update(excluded)
        if exclude_own:
            dropped.update(item_idx.tolist())
        while True:
            found = ann.candidates(
                m.ann_indexes, m.scorer, recipe, vector, signal_vector, fetch, prior
            )
            if len(own):
                found = np.union1d(found, own)
            keep = np.fromiter(
                (i not in dropped for i in found.tolist()), dtype=bool, count=len(found)
            )
            found = found[keep]
            if len(found) >= limit:
                scores = m.scorer.score_candidates(
                    found, item_idx, counts, ages, vector, recipe, signal_vector=signal_vector
                )
                top = _top(scores, limit)
                return [(int(found[i]), float(scores[i])) for i in top]
            if fetch >= ceiling or fetch >= m.n_items:
                return None
            fetch = min(ceiling, fetch * 4)

    def _known_scores(self, user_idx: int, protocol: str) -> npt.NDArray[np.float32]:
        m = self.model
        hist, ages = m.scorer.history_counts, m.scorer.history_age_days
        start, end = hist.indptr[user_idx], hist.indptr[user_idx + 1]
        bought = hist.indices[start:end]
        signals = m.scorer.signal_user_factors
        scores = m.scorer.score_row(
            bought,
            hist.data[start:end],
            ages.data[start:end],
            np.asarray(m.scorer.user_factors[user_idx]),
            m.recipes[protocol],
            signal_vector=None if signals is None else np.asarray(signals[user_idx]),
        )
        if protocol == "novel":
            scores[bought] = -np.inf
        return scores

    def _session(
        self,
        recent: Sequence[Activity],
        protocol: str,
        limit: int,
        banned: set[int],
        now: datetime | None,
    ) -> list[tuple[int, float]]:
        m = self.model
        recipe = self._session_recipes[protocol]
        if m.ann_indexes and ann.servable(recipe):
            fold = self._session_fold(recent, protocol, now)
            found = self._from_index(
                recipe,
                fold.vector,
                fold.signal_vector,
                fold.item_idx,
                fold.values,
                fold.ages,
                limit,
                banned,
                exclude_own=False,
                excluded=fold.bought if protocol == "novel" else (),
            )
            if found is not None:
                return found
        return _pick(self._session_scores(recent, protocol, now), limit, banned)

    def _session_fold(
        self, recent: Sequence[Activity], protocol: str, now: datetime | None
    ) -> _Fold:
        """A session's events as the scorer's inputs: items, weights, ages, folded-in vectors."""
        m = self.model
        weights: dict[int, float] = {}
        newest: dict[int, datetime] = {}
        for a in recent:
            idx = m.item_index[a.item_id]
            weights[idx] = weights.get(idx, 0.0) + self.event_weights.get(a.type, 0.0)
            newest[idx] = max(newest.get(idx, a.ts), a.ts)
        item_idx = np.fromiter(weights, dtype=np.int64, count=len(weights))
        values = np.array([weights[i] for i in item_idx], dtype=np.float32)
        moment = max(now or m.reference_time, *newest.values())  # recency counts from now
        purchase_weight = self.event_weights.get("purchase", 1.0) or 1.0
        recipe = self._session_recipes[protocol]
        confidence = values / purchase_weight
        vector = self.fold_in(item_idx, confidence) if recipe.uses("als") else None
        signal_vector = None
        if recipe.uses("als_signals"):
            signal_vector = self.fold_in(item_idx, confidence, signals=True)
        ages = np.array(
            [max((moment - newest[i]).total_seconds() / SECONDS_PER_DAY, 1e-3) for i in item_idx],
            dtype=np.float32,
        )
        bought = [m.item_index[a.item_id] for a in recent if a.type == "purchase"]
        return _Fold(item_idx, values, ages, vector, signal_vector, bought)

    def _session_scores(
        self, recent: Sequence[Activity], protocol: str, now: datetime | None
    ) -> npt.NDArray[np.float32]:
        m = self.model
        fold = self._session_fold(recent, protocol, now)
        scores = m.scorer.score_row(
            fold.item_idx,
            fold.values,
            fold.ages,
            fold.vector,
            self._session_recipes[protocol],
            signal_vector=fold.signal_vector,
        )
        if protocol == "novel":
            scores[fold.bought] = -np.inf
        return scores

    def rank(
        self,
        user_id: str,
        item_ids: Sequence[str],
        recent: Sequence[Activity] = (),
        now: datetime | None = None,
    ) -> list[str]:
        """``item_ids`` ordered by how much the model expects this user to buy each, best first.

        Known users are scored from their history, others from their folded-in recent events;
        items the model does not know (and everything, for a user with neither) keep their
        order after the ranked ones.
        """
        m = self.model
        user_idx = m.user_index.get(user_id)
        recent_known = [a for a in recent if a.item_id in m.item_index]
        if user_idx is not None:
            scores = self._known_scores(user_idx, "all")
        elif recent_known:
            scores = self._session_scores(recent_known, "all", now)
        else:
            return list(item_ids)
        known = [(i, m.item_index[i]) for i in item_ids if i in m.item_index]
        ranked = sorted(known, key=lambda pair: -float(scores[pair[1]]))
        return [i for i, _ in ranked] + [i for i in item_ids if i not in m.item_index]

    def fold_in(
        self,
        item_idx: npt.NDArray[np.int64],
        confidence: npt.NDArray[np.float32],
        *,
        signals: bool = False,
    ) -> npt.NDArray[np.float32]:
        """ALS user vector for interactions with ``item_idx`` at relative ``confidence``.

        Solves (YᵀY + Yᵢᵀ(Cᵢ - 1)Yᵢ + λI) x = Yᵢᵀ Cᵢ 1, the implicit-feedback least squares,
        with Cᵢ scaled so that one purchase weighs like a typical training interaction.
        ``signals``: against the ``als_signals`` item factors instead (the model must have them).
        """
        m = self.model
        factors, gram = m.scorer.item_factors, m.gram
        if signals:
            if m.scorer.signal_item_factors is None or m.signal_gram is None:
                raise ValueError("this model has no als_signals factors to fold in against")
            factors, gram = m.scorer.signal_item_factors, m.signal_gram
        y = np.asarray(factors[item_idx], dtype=np.float64)
        c = np.asarray(confidence, dtype=np.float64) * m.fold_in_scale
        a = gram + (y.T * (c - 1.0)) @ y + m.regularization * np.eye(y.shape[1])
        b = y.T @ c
        try:
            return np.linalg.solve(a, b).astype(np.float32)
        except np.linalg.LinAlgError:
            return np.zeros(y.shape[1], dtype=np.float32)

    def _replenish(
        self,
        query: Query,
        user_idx: int | None,
        recent: Sequence[Activity],
        banned: set[int],
        now: datetime | None,
    ) -> Result:
        """Items the user bought within the last N days, ranked by the ``all`` recipe."""
        m = self.model
        now = now or m.reference_time
        days = float(query.purchased_within_days or 0)
        since_training = max(0.0, (now - m.reference_time).total_seconds() / SECONDS_PER_DAY)
        bought: set[int] = set()
        if user_idx is not None:
            start, end = m.scorer.history_counts.indptr[user_idx : user_idx + 2]
            ages = m.scorer.history_age_days.data[start:end] + since_training
            bought |= {
                int(i)
                for i, a in zip(m.scorer.history_counts.indices[start:end], ages, strict=True)
                if a <= days
            }
        for a in recent:
            if a.type == "purchase" and (now - a.ts).total_seconds() <= days * SECONDS_PER_DAY:
                bought.add(m.item_index[a.item_id])
        bought -= banned
        if not bought:
            return Result(items=[], source="model" if user_idx is not None else "popular")
        if user_idx is not None:
            scores = m.scorer.score_users(np.array([user_idx]), m.recipes["all"])[0]
        else:
            scores = m.scorer.popularity_z.copy()
        ranked = sorted(bought, key=lambda i: -float(scores[i]))[: query.limit]
        return Result(
            items=[
                Recommendation(str(m.item_ids[i]), float(scores[i]), "time to buy again", "model")
                for i in ranked
            ],
            source="model",
        )

    # --- filters, reasons, fallbacks ------------------------------------------------------

    def _banned(
        self, query: Query, recent: Sequence[Activity], catalogue: Mapping[str, CatalogueEntry]
    ) -> set[int]:
        m = self.model
        banned = {m.item_index[i] for i in query.exclude if i in m.item_index}
        if query.exclude_purchased:
            banned |= {m.item_index[a.item_id] for a in recent if a.type == "purchase"}
        if query.in_stock:  # only what the catalogue says is in stock (out of stock: never)
            confirmed = np.zeros(m.n_items, dtype=bool)
            for item_id, entry in catalogue.items():
                idx = m.item_index.get(item_id)
                if idx is not None and entry.in_stock is True:
                    confirmed[idx] = True
            banned |= set(np.flatnonzero(~confirmed).tolist())
        if query.category is not None:
            banned |= self._outside_category(query.category, catalogue)
        return banned

    def _outside_category(self, category: str, catalogue: Mapping[str, CatalogueEntry]) -> set[int]:
        m = self.model
        if m.categories is None:
            inside = np.zeros(m.n_items, dtype=bool)
        else:
            inside = m.categories == category
        for item_id, entry in catalogue.items():
            idx = m.item_index.get(item_id)
            if idx is not None and entry.category is not None:
                inside[idx] = entry.category == category
        return set(np.flatnonzero(~inside).tolist())

    def _history(self, user_idx: int) -> History:
        hist = self.model.scorer.history_counts
        start, end = hist.indptr[user_idx], hist.indptr[user_idx + 1]
        return History(hist.indices[start:end].astype(np.int64), hist.data[start:end])

    def _reasons(
        self,
        items: list[int],
        source: str,
        history: History,
        recent: Sequence[Activity],
    ) -> list[str]:
        """A short reason per item: bought before, or the most similar item behind it."""
        m = self.model
        if not items:
            return []
        if source == "model" and len(history.item_idx):
            anchors = history.anchors(MAX_REASON_ANCHORS)
            verbs = ["bought"] * len(anchors)
        elif source == "session" and recent:
            anchors = np.array([m.item_index[a.item_id] for a in recent], dtype=np.int64)
            verbs = [
                {"purchase": "bought", "add_to_cart": "added"}.get(a.type, "viewed") for a in recent
            ]
        else:
            return ["popular"] * len(items)
        # one matrix product: similarity of every anchor to every recommended item
        similarity = m.unit_factors[anchors] @ m.unit_factors[items].T
        if m.bought is not None and m.unit_signal_factors is not None:
            # an item nobody bought has no purchase vector: explain it by its views' vector
            viewed_only = ~m.bought[items]
            if viewed_only.any():
                cols = np.asarray(items)[viewed_only]
                signal = m.unit_signal_factors
                similarity[:, viewed_only] = signal[anchors] @ signal[cols].T
        best = np.argmax(similarity, axis=0).tolist()
        times = history.counts_of(items).tolist()
        out = []
        for pos, n in zip(best, times, strict=True):
            if n == 1:
                out.append("you bought this before")
            elif n > 1:
                out.append(f"you bought this {int(n)} times")
            else:
                out.append(f"because you {verbs[pos]} {m.name_of(int(anchors[pos]))}")
        return out

    def _popular_fill(self, query: Query, taken: set[int]) -> list[Recommendation]:
        m = self.model
        out: list[Recommendation] = []
        need = query.limit
        for rank, item_idx in enumerate(m.popular_list):
            if len(out) >= need:
                break
            if item_idx in taken:
                continue
            reason = f"popular in {query.category}" if query.category else "popular right now"
            out.append(Recommendation(str(m.item_ids[item_idx]), float(-rank), reason, "popular"))
        return out


def _place(items: list[Recommendation], picks: list[Recommendation]) -> list[Recommendation]:
    """``picks`` spread through ``items``: the k-th of n at position ⌊(k+1)·L/(n+1)⌋ of the
    list of length L, never position 0 (10 items, 2 picks: positions 3 and 6)."""
    out = list(items)
    total = len(items) + len(picks)
    for k, pick in enumerate(picks):
        out.insert(min(len(out), max(1, (k + 1) * total // (len(picks) + 1))), pick)
    return out


def _pick(scores: npt.NDArray[np.float32], limit: int, banned: set[int]) -> list[tuple[int, float]]:
    if banned:
        scores = scores.copy()
        scores[list(banned)] = -np.inf
    top = _top(scores, limit)
    return [(int(i), float(scores[i])) for i in top if np.isfinite(scores[i])]


def _top(scores: npt.NDArray[Any], k: int) -> IntArray:
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    top = np.argpartition(scores, -k)[-k:]
    return top[np.argsort(-scores[top], kind="stable")].astype(np.int64)
