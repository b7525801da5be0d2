"""What a trained version is written as: its arrays, the facts it records about itself, and its
publication in the model store (``service.artifact`` owns the format; this module fills it)."""

from __future__ import annotations

import hashlib
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.artifact import ManifestBody, ModelStore, write_artifact
from service.artifact.manifest import (
    Counts,
    DataInfo,
    EngineInfo,
    Figures,
    FoldIn,
    GateInfo,
    SignalsInfo,
    SplitInfo,
)
from service.scoring import PROTOCOLS
from training.data.formats import Purchases
from training.encode import IdMaps
from training.models import Candidates, ModelParams, Stage, als_weights, served_components
from training.signals import SIGNAL_TYPES, Signals


def data_fingerprint(coded: pd.DataFrame, ids: IdMaps) -> str:
    """sha256 of the cleaned purchases: user and item ids, timestamps, order grouping.

    Hashes the integer codes and the id lists rather than every string cell (10x cheaper).
    """
    digest = hashlib.sha256()
    for column in ("user", "item", "order"):
        digest.update(np.ascontiguousarray(coded[column].to_numpy()).tobytes())
    digest.update(coded["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64).tobytes())
    for index in (ids.users, ids.items):
        digest.update("\x1f".join(map(str, index)).encode())
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Python's and the numerical libraries' versions, for the manifest."""
    out = {"python": platform.python_version()}
    for name in ("implicit", "numpy", "scipy", "pandas", "pyarrow", "recoffer"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def artifact_arrays(stage: Stage, purchases: Purchases) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of a serving ``stage``, with the item names, categories and prices known
    (``stage_arrays`` with the purchases' item table)."""
    return stage_arrays(stage, purchases.items)


def stage_arrays(stage: Stage, item_table: pd.DataFrame) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of a serving ``stage``, with the item names, categories and prices of
    ``item_table`` (``Purchases.items``' columns; any engine's).

    The items are the stage's served items (``Stage.served_item_codes``): those bought, then
    those only viewed or carted, which the ``als_signals`` vectors alone describe (popularity 0,
    no purchase-ALS vector, no EASE weight: ``ease_b`` covers the purchase items only). The
    components are standardised over the purchase items (``scored_items``), as evaluated. The
    users are those with purchases; a visitor who only browsed is served by the service's
    fold-in of their recent events.
    """
    served = served_components(stage)
    counts = served["history_counts"]
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "user_ids": np.asarray(stage.user_ids, dtype=str),
        "item_ids": np.asarray(stage.served_item_ids, dtype=str),
        "user_factors": stage.user_factors,
        "item_factors": served["item_factors"],
        "history_indptr": counts.indptr.astype(np.int64),
        "history_indices": counts.indices.astype(np.int32),
        "history_counts": counts.data.astype(np.float32),
        "history_age_days": served["history_age_days"].data.astype(np.float32),
        "popularity": served["popularity"],
        "trending": served["trending"],
        # the standardisation statistics are those of the purchase items (``Scorer.n_scored``)
        "scored_items": np.asarray([len(stage.item_codes)], dtype=np.int64),
    }
    if "ease_b" in served:
        arrays["ease_b"] = served["ease_b"]
    if stage.signal_user_factors is not None and stage.signal_item_factors is not None:
        arrays["signal_user_factors"] = stage.signal_user_factors[: len(stage.user_codes)]
        arrays["signal_item_factors"] = stage.signal_item_factors
    items = item_table.set_index("item_id").reindex(stage.served_item_ids)
    if items["name"].notna().any():
        arrays["item_names"] = items["name"].fillna("").astype(str).to_numpy(dtype=str)
    if items["category"].notna().any():
        arrays["item_categories"] = items["category"].fillna("").astype(str).to_numpy(dtype=str)
    if items["price"].notna().any():
        arrays["item_prices"] = items["price"].to_numpy(dtype=np.float32)
    return arrays


def describe(
    serving: Stage,
    params: ModelParams,
    *,
    purchases: Purchases,
    coded: pd.DataFrame,
    ids: IdMaps,
    signals: Signals | None,
    served: dict[str, str],
    candidates: Candidates,
    metrics: Figures,
    split: SplitInfo,
    tuning: dict[str, Any],
    gate: GateInfo,
) -> ManifestBody:
    """What a version records about itself: its ``serving`` stage, fitted with ``params``.

    ``coded`` and ``ids`` encode every purchase trained on (``training.encode``); ``signals``
    are the weaker signals it learnt from (None: purchases only). The rest are the run's
    decisions: candidates, the one served per protocol, figures, splits, tuning and the gate.
    """
    return manifest_body(
        serving,
        params,
        data=DataInfo(
            source=purchases.report.source,
            fingerprint=data_fingerprint(coded, ids),
            cleaning=purchases.report.as_dict(),
        ),
        purchase_lines=len(purchases.frame),
        signals=signals,
        served=served,
        candidates=candidates,
        metrics=metrics,
        split=split,
        tuning=tuning,
        gate=gate,
    )


def manifest_body(
    serving: Stage,
    params: ModelParams,
    *,
    data: DataInfo,
    purchase_lines: int,
    signals: Signals | None,
    served: dict[str, str],
    candidates: Candidates,
    metrics: Figures,
    split: SplitInfo,
    tuning: dict[str, Any],
    gate: GateInfo,
    engine: EngineInfo | None = None,
    libraries: dict[str, str] | None = None,
) -> ManifestBody:
    """``describe``'s manifest from what any engine knows: ``data`` (source, fingerprint,
    cleaning report) and the number of purchase lines trained on, instead of the lines."""
    return ManifestBody(
        created_at=datetime.now(UTC),
        reference_time=split.end,
        data=data,
        counts=Counts(
            users=len(serving.user_ids),
            items=len(serving.served_item_ids),
            interactions=int(serving.counts.nnz),
            purchases=purchase_lines,
            factors=params.factors,
        ),
        params=params.to_dict(),
        signals=None
        if signals is None
        else SignalsInfo.model_validate(
            {
                "weights": dict(zip(SIGNAL_TYPES, params.signal_weights, strict=True)),
                **signals.summary(),
                "pairs": serving.signal_pairs,
                "every_visitor": params.every_visitor,
            }
        ),
        # the service scales a new user's events so one purchase weighs like this
        fold_in=FoldIn(
            confidence_scale=float(
                np.median(
                    als_weights(
                        serving.counts if serving.strength is None else serving.strength,
                        serving.age_days,
                        params,
                    ).data
                )
            )
        ),
        recipes={p: candidates[served[p]][p] for p in PROTOCOLS},
        served=served,
        candidates=candidates,
        metrics=metrics,
        split=split,
        tuning=tuning,
        gate=gate,
        libraries=library_versions() if libraries is None else libraries,
        engine=EngineInfo() if engine is None else engine,
    )


def with_ann_index(
    body: ManifestBody,
    arrays: dict[str, np.ndarray[Any, Any]],
    params: ModelParams,
    workdir: Path,
) -> tuple[ManifestBody, dict[str, Path]]:
    """``body`` with the ANN index the catalogue gets past ``params.ann_min_items`` (built
    into ``workdir``), and its files; unchanged and none below that size."""
    from training import ann

    n_items = int(arrays["item_ids"].shape[0])
    if not ann.wanted(n_items, params.ann_min_items):
        return body, {}
    built = ann.build_index(
        arrays, body.recipes, workdir, min_items=params.ann_min_items, threads=params.threads
    )
    if built is None:
        return body, {}
    info, files = built
    return body.model_copy(update={"ann": info}), files


def publish(
    store: ModelStore,
    version: str,
    arrays: dict[str, np.ndarray[Any, Any]],
    body: ManifestBody,
    *,
    promote: bool,
    files: dict[str, Path] | None = None,
) -> Path:
    """Write ``version`` atomically into ``store`` and, when ``promote``, make it current.

    ``files``: other files of the version (its ANN index). Returns the version's directory.
    """
    path = write_artifact(store.root, version, arrays, body, files)
    if promote:
        store.promote(version)
    return path
