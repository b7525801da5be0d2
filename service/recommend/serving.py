"""A loaded artifact prepared for serving: indexes, precomputed candidates, fold-in constants.

Done once per model version, off the event loop (seconds on big models); query time is in
``service.recommend.recommender``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from service.artifact import Artifact
from service.errors import ArtifactError
from service.scoring import PROTOCOLS, Recipe, Scorer

log = logging.getLogger(__name__)

PRECOMPUTE_BATCH_CELLS = 8_000_000


@dataclass
class ServingModel:
    """An artifact prepared for serving: indexes, candidates and fold-in constants."""

    artifact: Artifact
    scorer: Scorer
    user_index: dict[str, int]
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
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

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
) -> ServingModel:
    """Build the serving structures for ``artifact``; seconds on big models, so call off-loop.

    ``recipes``: protocol -> the recipe to serve instead of the manifest's (an experiment's
    candidate recipe of the same version, issue 14).
    """
    manifest = artifact.manifest
    served = manifest.recipes if recipes is None else recipes
    arrays = artifact.arrays
    for array in arrays.values():
        if isinstance(array, np.memmap) and array.size:
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
    user_index = {str(u): i for i, u in enumerate(user_ids.tolist())}
    item_index = {str(v): i for i, v in enumerate(item_ids.tolist())}
    for name, index, ids in (
        ("user_ids", user_index, user_ids),
        ("item_ids", item_index, item_ids),
    ):
        if len(index) != len(ids):
            raise ArtifactError(
                f"artifact {artifact.path}: {name} holds {len(ids) - len(index)} repeated id(s)"
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
    )
    if len(user_ids) * len(item_ids) <= precompute_max_cells:
        started = time.perf_counter()
        for protocol in PROTOCOLS:
            model.candidates[protocol] = _precompute(model, protocol, candidates_per_user)
        log.info(
            "candidates_precomputed",
            extra={"version": artifact.version, "seconds": time.perf_counter() - started},
        )
    return model


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
    model: ServingModel, protocol: str, k: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
    n_users, n_items = len(model.user_index), model.n_items
    k = min(k, n_items)
    items = np.empty((n_users, k), dtype=np.int32)
    scores = np.empty((n_users, k), dtype=np.float32)
    batch = max(1, PRECOMPUTE_BATCH_CELLS // n_items)
    recipe = model.recipes[protocol]
    for start in range(0, n_users, batch):
        users = np.arange(start, min(n_users, start + batch))
        block = model.scorer.score_users(users, recipe)
        if protocol == "novel":
            hist = model.scorer.history_counts[users]
            rows = np.repeat(np.arange(len(users)), np.diff(hist.indptr))
            block[rows, hist.indices] = -np.inf
        top = np.argpartition(block, -k, axis=1)[:, -k:]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        items[users] = np.take_along_axis(top, order, axis=1)
        scores[users] = np.take_along_axis(top_scores, order, axis=1)
    return items, scores
