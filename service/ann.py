"""The approximate nearest-neighbour index of a large catalogue (issue 15, item 4).

A served recipe is, up to a per-user constant, ``w_als / σ_u · (u · y_i)`` (plus the same for
``als_signals``) plus a part every user shares, ``w_pop · pop_z_i + w_trend · trend_z_i`` (the
prior), plus "buy again" on the user's own items; σ_u is the user's spread of ALS scores over
the scored items (``Scorer.spread``, from the factors' second moment). So a user's exact top is
found among: the items of largest inner product with their ALS vector (the index: one per
factor set the served recipes use, item factors and, for ``als_signals``, its item factors),
the prior's top items (``prior_top``, the same for every user of a recipe) and their own items.
The service fetches a few hundred from the index, adds those, and re-ranks them exactly with
the served recipe (``Scorer.score_candidates``); ``benchmarks/ann_libraries.py`` measures
recall@10 of this against the exact top 10. An index over the whole recipe's vector
(``[y, pop_z, trend_z]``, one inner product) was tried too: HNSW over inner products of
vectors whose lengths differ that much (the popularity column) lost much of the recall. A
recipe using EASE is never served from the index (EASE is fitted only on small catalogues).

The library is usearch (the ``ann`` extra), imported only when an index is built or loaded;
``benchmarks/ann_libraries.py`` measured it against faiss-cpu and hnswlib. The index file is
loaded as a memory-mapped view: its pages are shared by every worker on the machine.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.scoring import Recipe, Scorer

log = logging.getLogger(__name__)

LIBRARY = "usearch"
METRIC = "ip"
PRIOR_ITEMS = 200  # the prior's top items added to every user's candidates
FACTOR_SETS = ("als", "als_signals")
F32 = npt.NDArray[np.float32]


def available() -> bool:
    """Whether the index library (the ``ann`` extra) is installed."""
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return False
    return True


def library_version() -> str:
    import usearch

    return str(usearch.__version__)


def factors_of(scorer: Scorer, factor_set: str) -> F32:
    """The item factors an index of ``factor_set`` is built over."""
    factors = scorer.item_factors if factor_set == "als" else scorer.signal_item_factors
    if factors is None:
        raise ValueError(f"this model has no {factor_set} factors")
    return np.ascontiguousarray(factors, dtype=np.float32)


def prior(scorer: Scorer, recipe: Recipe) -> F32:
    """The part of ``recipe``'s score every user shares: popularity and trending."""
    return (
        recipe.weight("popularity") * scorer.popularity_z
        + recipe.weight("trending") * scorer.trending_z
    ).astype(np.float32)


def prior_top(scorer: Scorer, recipe: Recipe, k: int) -> npt.NDArray[np.int64]:
    """The ``k`` items of highest prior (none when the recipe has no prior)."""
    if not (recipe.uses("popularity") or recipe.uses("trending")):
        return np.empty(0, dtype=np.int64)
    values = prior(scorer, recipe)
    k = min(k, len(values))
    if not k:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.argpartition(-values, k - 1)[:k]).astype(np.int64)


def servable(recipe: Recipe) -> bool:
    """Whether the index can serve ``recipe`` (not with EASE)."""
    return not recipe.uses("ease")


def factor_sets(recipes: list[Recipe]) -> list[str]:
    """The factor sets ``recipes`` use (an index for each)."""
    return [f for f in FACTOR_SETS if any(r.uses(f) for r in recipes)]


@dataclass(frozen=True)
class IndexParams:
    """HNSW parameters: graph connectivity, candidates kept while building and searching."""

    connectivity: int = 16
    expansion_add: int = 64
    expansion_search: int = 200


def build(vectors: F32, path: Path, params: IndexParams, *, threads: int = 0) -> None:
    """Build the HNSW inner-product index over ``vectors`` (key = item row) into ``path``."""
    from usearch.index import Index

    index: Any = Index(
        ndim=int(vectors.shape[1]),
        metric=METRIC,
        dtype="f32",
        connectivity=params.connectivity,
        expansion_add=params.expansion_add,
        expansion_search=params.expansion_search,
    )
    index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)
    index.save(str(path))


class AnnIndex:
    """A loaded index: ``search`` gives the item rows of the best inner products, best first."""

    def __init__(self, path: Path, params: IndexParams, *, view: bool = True) -> None:
        from usearch.index import Index

        self.path = path
        self.params = params
        restored: Any = Index.restore(str(path), view=view)
        if restored is None:
            raise ValueError(f"{path} is not a usearch index")
        restored.expansion_search = params.expansion_search
        self._index: Any = restored
        # one search at a time: the binding's per-thread search context is not ours to share
        self._lock = threading.Lock()
        self.size = len(self._index)
        self.ndim = int(self._index.ndim)

    def search(self, query: F32, k: int) -> npt.NDArray[np.int64]:
        k = min(int(k), self.size)
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        expansion = max(self.params.expansion_search, k)
        with self._lock:
            if self._index.expansion_search != expansion:
                self._index.expansion_search = expansion
            found = self._index.search(np.asarray(query, dtype=np.float32), k, threads=1)
        return np.asarray(found.keys, dtype=np.int64)


def exact_top(
    scorer: Scorer, recipe: Recipe, user_vectors: F32, signal_vectors: F32 | None, k: int
) -> npt.NDArray[np.int64]:
    """The exact top ``k`` of each row's recipe score (no history): the truth of recall."""
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float32)
    out = np.empty((len(user_vectors), k), dtype=np.int64)
    for row, vector in enumerate(user_vectors):
        signal = None if signal_vectors is None else signal_vectors[row]
        scores = scorer.score_row(empty_i, empty_f, empty_f, vector, recipe, signal_vector=signal)
        top = np.argpartition(-scores, k)[:k]
        out[row] = top[np.argsort(-scores[top], kind="stable")]
    return out


def candidates(
    indexes: dict[str, AnnIndex],
    scorer: Scorer,
    recipe: Recipe,
    user_vector: F32 | None,
    signal_vector: F32 | None,
    fetch: int,
    prior_items: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """The index's ``fetch`` best items of each factor set the recipe uses, plus ``prior_items``
    (sorted, distinct item rows)."""
    parts = [prior_items]
    for factor_set, vector in (("als", user_vector), ("als_signals", signal_vector)):
        index = indexes.get(factor_set)
        if recipe.uses(factor_set) and index is not None and vector is not None:
            parts.append(index.search(vector, fetch))
    return np.unique(np.concatenate(parts))


def recall_at_10(
    indexes: dict[str, AnnIndex],
    scorer: Scorer,
    recipe: Recipe,
    user_vectors: F32,
    signal_vectors: F32 | None,
    fetch: int,
) -> float:
    """Mean share of each user's exact top 10 that the index's candidates (``fetch`` from each
    index, the prior's top), re-ranked exactly, put in their top 10 (no history either side)."""
    truth = exact_top(scorer, recipe, user_vectors, signal_vectors, 10)
    top_prior = prior_top(scorer, recipe, PRIOR_ITEMS)
    empty_i, empty_f = np.empty(0, np.int64), np.empty(0, np.float32)
    hits = 0
    for row, vector in enumerate(user_vectors):
        signal = None if signal_vectors is None else signal_vectors[row]
        found = candidates(indexes, scorer, recipe, vector, signal, fetch, top_prior)
        scores = scorer.score_candidates(
            found, empty_i, empty_f, empty_f, vector, recipe, signal_vector=signal
        )
        top = found[np.argsort(-scores, kind="stable")[:10]]
        hits += len(np.intersect1d(top, truth[row]))
    return hits / (10 * max(1, len(user_vectors)))
