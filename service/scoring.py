"""Scoring recipes: how the served model turns a user's history into item scores.

The trainer evaluates exactly this code and the service serves exactly this code, so a figure in
a manifest describes what users get. Plain numpy/scipy; no pandas, no implicit.

A recipe is a weighted sum of components, each scaled so weights are comparable:

- ``als``: dot product of the user's ALS vector with every item vector, standardised per user;
- ``als_signals``: the same for a second ALS fitted on purchases plus the weaker signals (views
  and add-to-carts), present when the model was trained with them;
- ``ease``: the user's recency-weighted history times EASE's item-item matrix, standardised;
- ``repeat``: "buy again": ``log1p(orders) * exp(-age / repeat_half_life_days)`` on the
  user's own items, divided by the user's largest such value, plus ``repeat_bonus`` per bought
  item;
- ``popularity`` / ``trending``: log of distinct buyers, all time / in the last weeks,
  standardised over the catalogue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

COMPONENTS = ("als", "als_signals", "ease", "repeat", "popularity", "trending")
PROTOCOLS = ("all", "novel")

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recipe:
    """Weights of the components plus the repeat and recency constants."""

    weights: Mapping[str, float] = field(default_factory=dict)
    repeat_half_life_days: float = 180.0
    repeat_bonus: float = 0.0
    input_half_life_days: float = 60.0

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown recipe components {sorted(unknown)}; known: {COMPONENTS}")
        if self.repeat_half_life_days <= 0 or self.input_half_life_days <= 0:
            raise ValueError("half-lives must be positive")

    def weight(self, component: str) -> float:
        return float(self.weights.get(component, 0.0))

    def uses(self, component: str) -> bool:
        return self.weight(component) != 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["weights"] = {k: float(v) for k, v in self.weights.items() if v}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        return cls(
            weights={str(k): float(v) for k, v in dict(data.get("weights", {})).items()},
            repeat_half_life_days=float(data.get("repeat_half_life_days", 180.0)),
            repeat_bonus=float(data.get("repeat_bonus", 0.0)),
            input_half_life_days=float(data.get("input_half_life_days", 60.0)),
        )


def _standardise_rows(scores: FloatArray, n_scored: int) -> FloatArray:
    """Each row minus its mean, over its spread, both taken on the first ``n_scored`` columns."""
    mean = scores[:, :n_scored].mean(axis=1, keepdims=True)
    std = scores[:, :n_scored].std(axis=1, keepdims=True)
    std[std == 0] = 1.0
    scores -= mean
    scores /= std
    return scores


def _repeat_strength(
    counts: npt.ArrayLike, age_days: npt.ArrayLike, recipe: Recipe
) -> npt.NDArray[np.float64]:
    """ "Buy again" strength of bought items: log1p(orders) * exp(-age / half-life)."""
    return np.log1p(np.asarray(counts, dtype=np.float64)) * np.exp(
        -np.asarray(age_days, dtype=np.float64) / recipe.repeat_half_life_days
    )


def _standardise_row(row: FloatArray, n_scored: int) -> FloatArray:
    head = row[:n_scored]
    std = float(head.std())
    return np.asarray((row - head.mean()) / (std if std > 0 else 1.0), dtype=np.float32)


def _standardise(values: npt.NDArray[Any], n_scored: int) -> FloatArray:
    """log1p of a catalogue-wide count, standardised over the first ``n_scored`` items; the
    items after them (never bought: a count of 0, far below the range of the items bought) are
    held within the range of the first ones, so none sinks by an amount no evaluation saw."""
    out = np.log1p(np.asarray(values, dtype=np.float64))
    std = out[:n_scored].std()
    out = (out - out[:n_scored].mean()) / (std if std > 0 else 1.0)
    if 0 < n_scored < len(out):
        out[n_scored:] = np.clip(out[n_scored:], out[:n_scored].min(), out[:n_scored].max())
    return np.asarray(out, dtype=np.float32)


class Scorer:
    """Scores users of one fitted model (history in the model's own item space).

    ``n_scored``: the components are standardised with the mean and spread of the first
    ``n_scored`` items only (None: all items). A served model lists the purchase items first,
    then the items only viewed or carted (zero purchase-ALS vector, popularity, trending and
    EASE weight); the trainer evaluates, tunes and gates its recipes on the purchase items alone.
    Taking the statistics over the purchase items makes the served scores of those items equal
    to the evaluated ones, so the weights chosen on validation mean the same when served (with
    the padding in the statistics, 1,500 view-only items beside 300 bought ones moved the
    spreads and changed about a third of the top 10s). The padded items get scores on the same
    scale. We keep the evaluation on the purchase items, rather than evaluating the padded
    scorer, because the held-out truth is purchases and every figure (manifest, gate, old
    artifacts' rescoring) is defined on them.

    ``ease_b`` may cover only the first ``ease_b.shape[0]`` items (the purchase items, the only
    ones EASE is fitted on): the other items' EASE scores are 0 and their history is ignored.
    """

    def __init__(
        self,
        *,
        item_factors: FloatArray,
        user_factors: FloatArray,
        history_counts: sp.csr_matrix,
        history_age_days: sp.csr_matrix,
        popularity: npt.NDArray[Any],
        trending: npt.NDArray[Any],
        ease_b: FloatArray | None = None,
        signal_item_factors: FloatArray | None = None,
        signal_user_factors: FloatArray | None = None,
        n_scored: int | None = None,
    ) -> None:
        n_items = int(item_factors.shape[0])
        self.n_scored = n_items if n_scored is None else int(n_scored)
        if n_items and not 0 < self.n_scored <= n_items:
            raise ValueError(f"n_scored {self.n_scored} is not in 1..{n_items}")
        if ease_b is not None and (
            ease_b.ndim != 2 or ease_b.shape[0] != ease_b.shape[1] or ease_b.shape[0] > n_items
        ):
            raise ValueError(f"ease_b {ease_b.shape} is not square within {n_items} items")
        self.item_factors = item_factors
        self.user_factors = user_factors
        self.signal_item_factors = signal_item_factors
        self.signal_user_factors = signal_user_factors
        self.history_counts = history_counts
        self.history_age_days = history_age_days
        self.ease_b = ease_b
        self.popularity = np.asarray(popularity, dtype=np.float32)
        self.trending = np.asarray(trending, dtype=np.float32)
        self.popularity_z = _standardise(popularity, self.n_scored)
        self.trending_z = _standardise(trending, self.n_scored)
        self._moments: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = {}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> Scorer:
        """A Scorer over an artifact's arrays (see service.artifact for their names)."""
        shape = (int(arrays["user_ids"].shape[0]), int(arrays["item_ids"].shape[0]))
        indptr = np.asarray(arrays["history_indptr"])
        indices = np.asarray(arrays["history_indices"])
        return cls(
            item_factors=np.asarray(arrays["item_factors"]),
            user_factors=np.asarray(arrays["user_factors"]),
            history_counts=sp.csr_matrix(
                (np.asarray(arrays["history_counts"]), indices, indptr), shape
            ),
            history_age_days=sp.csr_matrix(
                (np.asarray(arrays["history_age_days"]), indices, indptr), shape
            ),
            popularity=np.asarray(arrays["popularity"]),
            trending=np.asarray(arrays["trending"]),
            ease_b=np.asarray(arrays["ease_b"]) if "ease_b" in arrays else None,
            signal_item_factors=_optional(arrays, "signal_item_factors"),
            signal_user_factors=_optional(arrays, "signal_user_factors"),
            n_scored=int(arrays["scored_items"][0]) if "scored_items" in arrays else None,
        )

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    @property
    def has_signals(self) -> bool:
        return self.signal_item_factors is not None and self.signal_user_factors is not None

    def can_use(self, recipe: Recipe) -> bool:
        """False when the recipe needs a component this model lacks (EASE on a big catalogue,
        ``als_signals`` in a model trained without signals)."""
        if recipe.uses("ease") and self.ease_b is None:
            return False
        return not (recipe.uses("als_signals") and not self.has_signals)

    def score_users(self, user_idx: npt.NDArray[np.integer[Any]], recipe: Recipe) -> FloatArray:
        """Scores (len(user_idx) x items) of users known to the model, by their rows."""
        user_idx = np.asarray(user_idx)
        signal_vectors = None
        if recipe.uses("als_signals") and self.signal_user_factors is not None:
            signal_vectors = self.signal_user_factors[user_idx]
        return self.score_histories(
            self.history_counts[user_idx],
            self.history_age_days[user_idx],
            self.user_factors[user_idx] if recipe.uses("als") else None,
            recipe,
            signal_vectors=signal_vectors,
        )

    def score_histories(
        self,
        counts: sp.csr_matrix,
        age_days: sp.csr_matrix,
        user_vectors: FloatArray | None,
        recipe: Recipe,
        *,
        signal_vectors: FloatArray | None = None,
    ) -> FloatArray:
        """Scores for arbitrary histories (rows of counts and ages in the item space).

        ``user_vectors`` (rows x factors) is needed only when the recipe uses ``als``, and
        ``signal_vectors`` only when it uses ``als_signals``; for a user the model has never
        seen, pass folded-in vectors.
        """
        n_rows = counts.shape[0]
        scores = np.zeros((n_rows, self.n_items), dtype=np.float32)
        for name, vectors, items in (
            ("als", user_vectors, self.item_factors),
            ("als_signals", signal_vectors, self.signal_item_factors),
        ):
            w = recipe.weight(name)
            if w:
                if vectors is None or items is None:
                    raise ValueError(f"recipe uses {name} but no user vectors were given")
                part = np.asarray(vectors, dtype=np.float32) @ items.T
                scores += w * _standardise_rows(part, self.n_scored)
        w = recipe.weight("ease")
        if w:
            if self.ease_b is None:
                raise ValueError("recipe uses ease but this model has no EASE matrix")
            n_ease = self.ease_b.shape[0]
            weighted = sp.csr_matrix(age_days)[:, :n_ease]
            weighted.data = np.exp(-weighted.data / recipe.input_half_life_days).astype(np.float32)
            part = np.zeros((n_rows, self.n_items), dtype=np.float32)
            part[:, :n_ease] = np.asarray(weighted @ self.ease_b, dtype=np.float32)
            scores += w * _standardise_rows(part, self.n_scored)
        self._add_catalogue_wide(scores, recipe)
        w = recipe.weight("repeat")
        if w and counts.nnz:
            self._add_repeat(scores, counts, age_days, recipe, w)
        return scores

    def score_row(
        self,
        item_idx: npt.NDArray[np.integer[Any]],
        counts: npt.NDArray[np.floating[Any]],
        age_days: npt.NDArray[np.floating[Any]],
        user_vector: npt.NDArray[np.float32] | None,
        recipe: Recipe,
        *,
        signal_vector: npt.NDArray[np.float32] | None = None,
    ) -> FloatArray:
        """``score_histories`` for one user given as arrays, in plain numpy (the request path).

        ``item_idx`` are distinct item rows with their ``counts`` and ``age_days``.
        """
        scores = np.zeros(self.n_items, dtype=np.float32)
        for name, vector, factors in (
            ("als", user_vector, self.item_factors),
            ("als_signals", signal_vector, self.signal_item_factors),
        ):
            w = recipe.weight(name)
            if w:
                if vector is None or factors is None:
                    raise ValueError(f"recipe uses {name} but no user vector was given")
                scores += w * _standardise_row(factors @ vector.astype(np.float32), self.n_scored)
        w = recipe.weight("ease")
        if w and len(item_idx):
            if self.ease_b is None:
                raise ValueError("recipe uses ease but this model has no EASE matrix")
            n_ease = self.ease_b.shape[0]
            inside = np.asarray(item_idx) < n_ease  # an item EASE never saw weighs nothing
            weights = np.exp(-np.asarray(age_days)[inside] / recipe.input_half_life_days)
            part = np.zeros(self.n_items, dtype=np.float32)
            part[:n_ease] = weights.astype(np.float32) @ self.ease_b[np.asarray(item_idx)[inside]]
            scores += w * _standardise_row(part, self.n_scored)
        self._add_catalogue_wide(scores, recipe)
        w = recipe.weight("repeat")
        if w and len(item_idx):
            value = _repeat_strength(counts, age_days, recipe)
            top = value.max()
            value = value / (top if top > 0 else 1.0) + recipe.repeat_bonus
            scores[np.asarray(item_idx)] += (w * value).astype(np.float32)
        return scores

    def moments(
        self, signals: bool = False
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Mean item vector and second moment (YᵀY / n) of the first ``n_scored`` items of the
        ALS factors (``signals``: the als_signals ones), so a user's mean and spread of scores
        over those items come without scoring them: u·mean and uᵀMu - (u·mean)²."""
        key = "signals" if signals else "als"
        cached = self._moments.get(key)
        if cached is None:
            factors = self.signal_item_factors if signals else self.item_factors
            if factors is None:
                raise ValueError("this model has no als_signals factors")
            head = np.asarray(factors[: self.n_scored], dtype=np.float64)
            cached = (head.mean(axis=0), head.T @ head / max(1, len(head)))
            self._moments[key] = cached
        return cached

    def spread(self, vector: npt.NDArray[np.float32], signals: bool = False) -> tuple[float, float]:
        """Mean and standard deviation of ``factors[:n_scored] @ vector`` (1 for none)."""
        mean_vector, second = self.moments(signals)
        v = np.asarray(vector, dtype=np.float64)
        mean = float(v @ mean_vector)
        var = float(v @ second @ v) - mean * mean
        return mean, (float(np.sqrt(var)) if var > 1e-24 else 1.0)

    def score_candidates(
        self,
        candidates: npt.NDArray[np.integer[Any]],
        item_idx: npt.NDArray[np.integer[Any]],
        counts: npt.NDArray[np.floating[Any]],
        age_days: npt.NDArray[np.floating[Any]],
        user_vector: npt.NDArray[np.float32] | None,
        recipe: Recipe,
        *,
        signal_vector: npt.NDArray[np.float32] | None = None,
    ) -> FloatArray:
        """``score_row(...)[candidates]`` without scoring the rest of the catalogue: each ALS
        part standardised with the user's mean and spread over the first ``n_scored`` items
        (``spread``), the catalogue-wide parts and "buy again" as in ``score_row``. Not for a
        recipe using EASE (its spread needs every item's score)."""
        if recipe.uses("ease"):
            raise ValueError("score_candidates does not score EASE; use score_row")
        candidates = np.asarray(candidates, dtype=np.int64)
        scores = np.zeros(len(candidates), dtype=np.float32)
        for name, vector, factors, signals in (
            ("als", user_vector, self.item_factors, False),
            ("als_signals", signal_vector, self.signal_item_factors, True),
        ):
            w = recipe.weight(name)
            if w:
                if vector is None or factors is None:
                    raise ValueError(f"recipe uses {name} but no user vector was given")
                mean, std = self.spread(vector, signals)
                raw = np.asarray(factors[candidates], dtype=np.float32) @ vector.astype(np.float32)
                scores += (w * (raw - mean) / std).astype(np.float32)
        w = recipe.weight("popularity")
        if w:
            scores += w * self.popularity_z[candidates]
        w = recipe.weight("trending")
        if w:
            scores += w * self.trending_z[candidates]
        w = recipe.weight("repeat")
        if w and len(item_idx):
            value = _repeat_strength(counts, age_days, recipe)
            top = value.max()
            value = value / (top if top > 0 else 1.0) + recipe.repeat_bonus
            items = np.asarray(item_idx, dtype=np.int64)
            order = np.argsort(items, kind="stable")
            pos = np.minimum(np.searchsorted(items[order], candidates), len(items) - 1)
            hit = items[order][pos] == candidates
            scores[hit] += (w * value[order][pos[hit]]).astype(np.float32)
        return scores

    def _add_catalogue_wide(self, scores: FloatArray, recipe: Recipe) -> None:
        """Popularity and trending: the same row for every user (broadcast over rows)."""
        w = recipe.weight("popularity")
        if w:
            scores += w * self.popularity_z
        w = recipe.weight("trending")
        if w:
            scores += w * self.trending_z

    @staticmethod
    def _add_repeat(
        scores: FloatArray,
        counts: sp.csr_matrix,
        age_days: sp.csr_matrix,
        recipe: Recipe,
        weight: float,
    ) -> None:
        counts = counts.tocsr()
        age_days = age_days.tocsr()
        value = _repeat_strength(counts.data, age_days.data, recipe)
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        row_max = np.zeros(counts.shape[0], dtype=np.float64)
        np.maximum.at(row_max, rows, value)
        row_max[row_max == 0] = 1.0
        value = value / row_max[rows] + recipe.repeat_bonus
        scores[rows, counts.indices] += (weight * value).astype(np.float32)


def _optional(arrays: Mapping[str, npt.NDArray[Any]], name: str) -> FloatArray | None:
    return np.asarray(arrays[name]) if name in arrays else None
