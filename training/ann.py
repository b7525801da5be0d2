"""The trainer's side of the ANN index (issue 15, item 4): built past a catalogue size.

``build_index`` builds one usearch HNSW index (inner product) per factor set the served recipes
use (``service.ann.factor_sets``: the ALS item factors, and the ``als_signals`` ones when a
recipe weighs them), measures recall@10 of what the service will do (fetch from the index, add
the prior's top, re-rank exactly) against exact scoring of the served recipes on a seeded sample
of the model's own users, and returns the manifest's ``AnnInfo`` with the files to store. A
recipe using EASE is not served from an index (``service.ann.servable``): no index then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from service import ann
from service.artifact.manifest import AnnIndexInfo, AnnInfo
from service.scoring import Recipe, Scorer

log = logging.getLogger(__name__)

DEFAULT_ANN_MIN_ITEMS = 100_000  # below it, scoring the whole catalogue costs < 2 ms
RECALL_USERS = 500  # users whose exact top 10 the build-time recall is measured against
RECALL_SEED = 15


def wanted(n_items: int, min_items: int | None) -> bool:
    """Whether a catalogue of ``n_items`` gets an index (``min_items`` None: never)."""
    return min_items is not None and n_items >= min_items


def build_index(
    arrays: Mapping[str, np.ndarray[Any, Any]],
    recipes: Mapping[str, Recipe],
    workdir: Path,
    *,
    min_items: int,
    params: ann.IndexParams | None = None,
    fetch: int = 200,
    recall_users: int = RECALL_USERS,
    threads: int = 0,
) -> tuple[AnnInfo, dict[str, Path]] | None:
    """The index of ``arrays`` (an artifact's) for the served ``recipes`` into ``workdir``.

    None (with a warning) when the ``ann`` extra is not installed or a recipe uses EASE.
    """
    if not ann.available():
        log.warning(
            "ann_index_skipped: the ann extra (usearch) is not installed; the service will "
            "score the whole catalogue"
        )
        return None
    served = list(recipes.values())
    if not all(ann.servable(r) for r in served):
        log.warning("ann_index_skipped: a served recipe uses EASE, scored exactly")
        return None
    params = params or ann.IndexParams()
    scorer = Scorer.from_arrays(arrays)
    started = time.perf_counter()
    files: dict[str, Path] = {}
    infos: list[AnnIndexInfo] = []
    loaded: dict[str, ann.AnnIndex] = {}
    for factor_set in ann.factor_sets(served) or ["als"]:
        vectors = ann.factors_of(scorer, factor_set)
        name = f"ann_{factor_set}.usearch"
        path = workdir / name
        ann.build(vectors, path, params, threads=threads)
        files[name] = path
        infos.append(
            AnnIndexInfo(
                factor_set=factor_set,
                file=name,
                items=int(vectors.shape[0]),
                dims=int(vectors.shape[1]),
            )
        )
        loaded[factor_set] = ann.AnnIndex(path, params)
    build_seconds = time.perf_counter() - started
    rng = np.random.default_rng(RECALL_SEED)
    n_users = int(scorer.user_factors.shape[0])
    sample = np.sort(rng.choice(n_users, size=min(recall_users, n_users), replace=False))
    users = np.asarray(scorer.user_factors[sample], dtype=np.float32)
    signals = None
    if scorer.signal_user_factors is not None:
        signals = np.asarray(scorer.signal_user_factors[sample], dtype=np.float32)
    recall = {
        protocol: round(ann.recall_at_10(loaded, scorer, recipe, users, signals, fetch), 4)
        for protocol, recipe in recipes.items()
    }
    info = AnnInfo(
        library=ann.LIBRARY,
        library_version=ann.library_version(),
        metric=ann.METRIC,
        params={
            "connectivity": params.connectivity,
            "expansion_add": params.expansion_add,
            "expansion_search": params.expansion_search,
        },
        indexes=infos,
        fetch=fetch,
        prior_items=ann.PRIOR_ITEMS,
        recall_at_10=recall,
        recall_users=len(sample),
        build_seconds=round(build_seconds, 3),
        min_items=min_items,
    )
    log.info("ann_index_built", extra={"recall_at_10": recall, "seconds": build_seconds})
    return info, files
