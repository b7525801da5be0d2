"""A loaded artifact prepared for serving: indexes, precomputed candidates, fold-in constants.

Done once per model version, off the event loop (seconds on big models); query time is in
``service.recommend.recommender``.

What is precomputed, and what a request computes (issue 15, item 4):

- precomputed at load, per protocol: the ``candidates_per_user`` best items of at most
  ``precompute_max_users`` known users (all of them when there are no more; else those with
  the longest histories, the likeliest to come back), and only while those users x items stay
  within ``precompute_max_cells`` (the load's scoring time). Memory: about 3,200 bytes per
  precomputed user at 200 candidates, so at most ``precompute_max_users`` x 3.2 KB;
- every other known user, and every session user, is scored at request time: with an ANN
  index (``ServingOptions.use_ann`` and a version that has one, ``service.ann``) a few hundred
  candidates from the index re-ranked exactly, otherwise the whole catalogue.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from service import ann
from service.artifact import Artifact
from service.artifact.store import release_pages
from service.errors import ArtifactError
from service.scoring import PROTOCOLS, Recipe, Scorer

log = logging.getLogger(__name__)

PRECOMPUTE_BATCH_CELLS = 8_000_000
USER_DICT_MAX = 1_000_000  # more users: ids looked up in the sorted id array, not a dict
FAULT_IN_MAX_BYTES = 1 << 28  # mapped arrays up to this size are read in at load


@dataclass(frozen=True)
class ServingOptions:
    """How a version is prepared and served (``service.settings``: ``RECOFFER_...``)."""

    candidates_per_user: int = 200
    precompute_max_cells: int = 400_000_000
    precompute_max_users: int = 100_000
    use_ann: bool = True  # use the version's ANN index when it has one
    ann_candidates: int = 200  # fetched from each index per request, grown when filtered out
    ann_max_candidates: int = 5_000  # past it, a request short of items scores exactly
    mmap_min_bytes: int | None = None  # model files this large are memory-mapped (shared)


class UserIndex(Mapping[str, int]):
    """User id -> row over the artifact's id array (sorted, or with its sort order): a few
    bytes per user where a dict of ten million ids costs about a gigabyte."""

    def __init__(self, ids: npt.NDArray[Any]) -> None:
        self.ids = ids
        ordered = len(ids) < 2 or bool(np.all(ids[1:] >= ids[:-1]))
        self.sorter: npt.NDArray[np.int64] | None = (
            None if ordered else np.argsort(ids, kind="stable").astype(np.int64)
        )

    def get(self, key: str, default: Any = None) -> Any:
        n = len(self.ids)
        if not n or not isinstance(key, str):
            return default
        if self.ids.dtype.kind == "U" and len(key) > self.ids.dtype.itemsize // 4:
            return default  # longer than every id (and numpy would widen the whole array)
        probe = np.asarray(key, dtype=self.ids.dtype)
        pos = int(np.searchsorted(self.ids, probe, sorter=self.sorter))
        if pos >= n:
            return default
        row = pos if self.sorter is None else int(self.sorter[pos])
        return row if str(self.ids[row]) == key else default

    def __getitem__(self, key: str) -> int:
        row = self.get(key)
        if row is None:
            raise KeyError(key)
        return int(row)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return (str(u) for u in self.ids)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ServingModel:
    """An artifact prepared for serving: indexes, candidates and fold-in constants."""

    artifact: Artifact
    scorer: Scorer
    user_index: Mapping[str, int]
    item_ids: npt.NDArray[np.str_]
    item_index: dict[str, int]
    item_labels: list[str]  # ids as Python strings, and names (the id when unknown)
    item_names: list[str]
    recipes: dict[str, Recipe]
    reference_time: datetime
    categories: npt.NDArray[np.str_] | None
    popular_list: list[int]  # item rows, most bought recently first
    unit_factors: npt.NDArray[np.float32]
    gram: npt.NDArray[np.float64]
    regularization: float
    fold_in_scale: float
    signal_gram: npt.NDArray[np.float64] | None = None  # YᵀY of the als_signals item factors
    # items with a purchase-ALS vector (bought by someone), and the als_signals item factors
    # scaled to length 1 (None: a model without signals)
    bought: npt.NDArray[np.bool_] | None = None
    unit_signal_factors: npt.NDArray[np.float32] | None = None
    candidates: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]] = field(
        default_factory=dict
    )
    # the user rows of ``candidates``' rows, sorted (None: every user, row for row)
    precomputed_users: npt.NDArray[np.int64] | None = None
    # factor set -> its ANN index (empty: none, every request scores the whole catalogue)
    ann_indexes: dict[str, ann.AnnIndex] = field(default_factory=dict)
    options: ServingOptions = field(default_factory=ServingOptions)
    loaded_at: float = field(default_factory=time.time)
    _prior: dict[tuple[float, float], npt.NDArray[np.int64]] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def precomputed_row(self, user_idx: int) -> int | None:
        """The row of ``user_idx`` in ``candidates`` (None: not precomputed)."""
        if not self.candidates:
            return None
        if self.precomputed_users is None:
            return user_idx
        pos = int(np.searchsorted(self.precomputed_users, user_idx))
        if pos < len(self.precomputed_users) and self.precomputed_users[pos] == user_idx:
            return pos
        return None

    def prior_top(self, recipe: Recipe) -> npt.NDArray[np.int64]:
        """The recipe's most popular/trending items, every user's candidates (remembered)."""
        key = (recipe.weight("popularity"), recipe.weight("trending"))
        top = self._prior.get(key)
        if top is None:
            top = ann.prior_top(self.scorer, recipe, ann.PRIOR_ITEMS)
            self._prior[key] = top
        return top

    def name_of(self, item_idx: int) -> str:
        return self.item_names[item_idx]

    def similarity(self, item_idx: int) -> tuple[npt.NDArray[np.float32], str]:
        """Cosine of every item to ``item_idx`` and the verb of the reason.

        An item someone bought: its purchase-ALS vector against the other bought items ("bought
        with"); the items nobody bought have no such vector and are left out (-inf). An item
        only viewed or carted: its ``als_signals`` vector against every item's ("viewed
        with"), or nothing (all -inf) in a model without signals.
        """
        if self.bought is None or self.bought[item_idx]:
            scores = self.unit_factors @ self.unit_factors[item_idx]
            if self.bought is not None:
                scores[~self.bought] = -np.inf
            return scores, "bought with"
        if self.unit_signal_factors is None:
            return np.full(self.n_items, -np.inf, dtype=np.float32), "viewed with"
        return self.unit_signal_factors @ self.unit_signal_factors[item_idx], "viewed with"

    def category_of(self, item_idx: int) -> str | None:
        if self.categories is not None and self.categories[item_idx]:
            return str(self.categories[item_idx])
        return None


def prepare(
    artifact: Artifact,
    *,
    candidates_per_user: int = 200,
    precompute_max_cells: int = 400_000_000,
    recipes: Mapping[str, Recipe] | None = None,
    options: ServingOptions | None = None,
) -> ServingModel:
    """Build the serving structures for ``artifact``; seconds on big models, so call off-loop.

    ``recipes``: protocol -> the recipe to serve instead of the manifest's (an experiment's
    candidate recipe of the same version, issue 14). ``options`` (when given) replaces
    ``candidates_per_user`` and ``precompute_max_cells``.
    """
    if options is None:
        options = ServingOptions(
            candidates_per_user=candidates_per_user, precompute_max_cells=precompute_max_cells
        )
    manifest = artifact.manifest
    served = manifest.recipes if recipes is None else recipes
    arrays = artifact.arrays
    for array in arrays.values():
        shared = options.mmap_min_bytes is not None and array.nbytes >= FAULT_IN_MAX_BYTES
        if isinstance(array, np.memmap) and array.size and not shared:
            # fault every page in now (one byte a page), not on the first requests
            int(array.reshape(-1).view(np.uint8)[::4096].sum())
    scorer = Scorer.from_arrays(arrays)
    item_ids = np.asarray(arrays["item_ids"])
    user_ids = np.asarray(arrays["user_ids"])
    factors = np.asarray(arrays["item_factors"], dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    bought = norms[:, 0] > 0
    norms[norms == 0] = 1.0
    unit_signal_factors = None
    if scorer.signal_item_factors is not None:
        signal_factors = np.asarray(scorer.signal_item_factors, dtype=np.float32)
        signal_norms = np.linalg.norm(signal_factors, axis=1, keepdims=True)
        signal_norms[signal_norms == 0] = 1.0
        unit_signal_factors = (signal_factors / signal_norms).astype(np.float32)
    user_index: Mapping[str, int]
    if len(user_ids) > USER_DICT_MAX:  # no dict of every user id (about 1 GB at 10M)
        user_index = UserIndex(user_ids)
        distinct_users = len(np.unique(user_ids))
    else:
        user_index = {str(u): i for i, u in enumerate(user_ids.tolist())}
        distinct_users = len(user_index)
    item_index = {str(v): i for i, v in enumerate(item_ids.tolist())}
    for name, distinct, ids in (
        ("user_ids", distinct_users, user_ids),
        ("item_ids", len(item_index), item_ids),
    ):
        if distinct != len(ids):
            raise ArtifactError(
                f"artifact {artifact.path}: {name} holds {len(ids) - distinct} repeated id(s)"
            )
    model = ServingModel(
        artifact=artifact,
        scorer=scorer,
        user_index=user_index,
        item_ids=item_ids,
        item_index=item_index,
        item_labels=[str(v) for v in item_ids.tolist()],
        item_names=[
            str(n) or str(i)
            for i, n in zip(
                item_ids.tolist(),
                arrays.get("item_names", item_ids).tolist(),
                strict=True,
            )
        ],
        recipes={p: _servable(served[p], scorer) for p in PROTOCOLS},
        reference_time=manifest.data_until,
        categories=np.asarray(arrays["item_categories"]) if "item_categories" in arrays else None,
        popular_list=np.argsort(
            -scorer.trending_z - 1e-3 * scorer.popularity_z, kind="stable"
        ).tolist(),
        unit_factors=(factors / norms).astype(np.float32),
        gram=_gram(factors),
        regularization=manifest.regularization,
        fold_in_scale=manifest.fold_in.confidence_scale,
        signal_gram=None
        if scorer.signal_item_factors is None
        else _gram(np.asarray(scorer.signal_item_factors, dtype=np.float32)),
        bought=bought,
        unit_signal_factors=unit_signal_factors,
        options=options,
    )
    model.ann_indexes = _ann_indexes(artifact, options)
    if options.mmap_min_bytes is not None:
        for array in arrays.values():  # what the load's scans read of the large mapped files
            if array.nbytes >= FAULT_IN_MAX_BYTES:
                release_pages(array)
    chosen = _precomputed_users(scorer, options)
    n_chosen = len(user_ids) if chosen is None else len(chosen)
    if n_chosen and n_chosen * len(item_ids) <= options.precompute_max_cells:
        started = time.perf_counter()
        model.precomputed_users = chosen
        users = np.arange(len(user_ids)) if chosen is None else chosen
        for protocol in PROTOCOLS:
            model.candidates[protocol] = _precompute(
                model, protocol, options.candidates_per_user, users
            )
        log.info(
            "candidates_precomputed",
            extra={
                "version": artifact.version,
                "users": n_chosen,
                "seconds": time.perf_counter() - started,
            },
        )
    return model


def _precomputed_users(scorer: Scorer, options: ServingOptions) -> npt.NDArray[np.int64] | None:
    """The users whose candidates are precomputed, sorted: None for all (no more than
    ``precompute_max_users``), else that many with the longest histories."""
    n_users = int(scorer.user_factors.shape[0])
    cap = options.precompute_max_users
    if n_users <= cap:
        return None
    if cap <= 0:
        return np.empty(0, dtype=np.int64)
    lengths = np.diff(scorer.history_counts.indptr)
    return np.sort(np.argpartition(-lengths, cap - 1)[:cap]).astype(np.int64)


def _ann_indexes(artifact: Artifact, options: ServingOptions) -> dict[str, ann.AnnIndex]:
    """The version's ANN indexes, memory-mapped; none when it has none, when switched off, or
    (with a warning: every request then scores the whole catalogue) without the library."""
    info = artifact.manifest.ann
    if info is None or not options.use_ann:
        return {}
    if not ann.available():
        log.warning(
            "ann_index_unused",
            extra={
                "version": artifact.version,
                "why": "the ann extra (usearch) is not installed: scoring the whole catalogue",
            },
        )
        return {}
    params = ann.IndexParams(
        connectivity=info.params.get("connectivity", ann.IndexParams.connectivity),
        expansion_add=info.params.get("expansion_add", ann.IndexParams.expansion_add),
        expansion_search=info.params.get("expansion_search", ann.IndexParams.expansion_search),
    )
    return {
        index.factor_set: ann.AnnIndex(artifact.files[index.file], params) for index in info.indexes
    }


def _gram(factors: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    wide = factors.astype(np.float64)
    return wide.T @ wide


def _servable(recipe: Recipe, scorer: Scorer) -> Recipe:
    """The recipe, without the components the artifact lacks (EASE, als_signals): never a 500."""
    if scorer.can_use(recipe):
        return recipe
    log.warning("recipe_without_missing_components", extra={"weights": dict(recipe.weights)})
    missing = {"ease"} if scorer.ease_b is None else set()
    if not scorer.has_signals:
        missing.add("als_signals")
    weights = {k: v for k, v in recipe.weights.items() if k not in missing and v}
    return dataclasses.replace(recipe, weights=weights or {"popularity": 1.0})


def _precompute(
    model: ServingModel, protocol: str, k: int, chosen: npt.NDArray[Any]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    n_users, n_items = len(chosen), model.n_items
    k = min(k, n_items)
    items = np.empty((n_users, k), dtype=np.int32)
    scores = np.empty((n_users, k), dtype=np.float32)
    batch = max(1, PRECOMPUTE_BATCH_CELLS // n_items)
    recipe = model.recipes[protocol]
    for start in range(0, n_users, batch):
        out = np.arange(start, min(n_users, start + batch))
        users = np.asarray(chosen[out])
        block = model.scorer.score_users(users, recipe)
        if protocol == "novel":
            hist = model.scorer.history_counts[users]
            rows = np.repeat(np.arange(len(users)), np.diff(hist.indptr))
            block[rows, hist.indices] = -np.inf
        top = np.argpartition(block, -k, axis=1)[:, -k:]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        items[out] = np.take_along_axis(top, order, axis=1)
        scores[out] = np.take_along_axis(top_scores, order, axis=1)
    return items, scores
