"""The whole training flow: load -> split -> fit -> tune -> evaluate -> gate -> publish.

Three nested temporal stages share one set of hyper-parameters:

- validation: fit on purchases up to ``end - 2 x test_days``, tune and choose candidates on the
  next ``test_days``;
- test: warm-started from the validation factors, fit up to ``end - test_days``, and score every
  candidate on the last ``test_days`` (the figures reported and gated);
- serving: warm-started again on every purchase, written as the artifact.

Warm starts make the three stages cost little more than one cold ALS fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.artifact import (
    Manifest,
    ManifestBody,
    ModelStore,
    new_version_name,
    read_manifest,
    write_artifact,
)
from service.artifact.manifest import (
    Counts,
    DataInfo,
    Figures,
    FoldIn,
    GateInfo,
    SignalsInfo,
    SplitInfo,
)
from service.errors import ArtifactError, DataError
from service.scoring import PROTOCOLS, Recipe
from training.data.database import (
    combine_purchases,
    load_database_purchases,
    load_database_signals,
)
from training.data.formats import CleaningReport, ColumnMapping, Purchases, load_purchases
from training.encode import IdMaps, encode
from training.evaluate import EvalSet, Split, metric_key, temporal_split
from training.gate import (
    GateDecision,
    current_artifact,
    current_model_params,
    decide,
    rescore_current,
)
from training.lock import trainer_lock
from training.models import (
    Candidates,
    ModelParams,
    Stage,
    als_weights,
    default_candidates,
    fit_stage,
)
from training.signals import SIGNAL_TYPES, Signals, encode_signals
from training.tune import tune

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MetricTable = dict[str, dict[str, dict[str, float]]]  # protocol -> candidate -> metric -> value


@dataclass
class TrainConfig:
    model_dir: Path
    data: Path | None = None
    # also train on the purchase events the API ingested, and on its views and add-to-carts as
    # weaker signals (weights in params)
    database_url: str | None = None
    fmt: str = "generic"
    columns: ColumnMapping | None = None
    test_days: float = 30.0
    tune_seconds: float = 0.0
    force: bool = False
    params: ModelParams = field(default_factory=ModelParams)
    eval_users: int | None = None


@dataclass
class TrainResult:
    version: str
    promoted: bool
    served: dict[str, str]
    metrics: MetricTable
    validation: MetricTable
    gate: GateDecision
    report: CleaningReport
    path: Path
    timings: dict[str, float]
    manifest: Manifest

    @property
    def served_name(self) -> str:
        names = set(self.served.values())
        if len(names) == 1:
            return names.pop()
        return ",".join(f"{p}:{n}" for p, n in self.served.items())

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: version, promoted, served and metrics[protocol][candidate]."""
        metrics: dict[str, dict[str, dict[str, float]]] = {}
        for protocol, table in self.metrics.items():
            metrics[protocol] = dict(table)
            metrics[protocol]["served"] = table[self.served[protocol]]
        return {
            "version": self.version,
            "promoted": self.promoted,
            "served": self.served_name,
            "served_by_protocol": self.served,
            "metrics": metrics,
            "validation": self.validation,
            "gate": self.gate.to_dict(),
            "cleaning": self.report.as_dict(),
            "model_path": str(self.path),
            "timings": self.timings,
        }


def _noop(_: str) -> None:
    return None


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


def evaluate_candidates(evalset: EvalSet, candidates: Candidates, k: int = 10) -> MetricTable:
    """Every candidate under every protocol it applies to."""
    table: MetricTable = {p: {} for p in PROTOCOLS}
    for name, recipes in candidates.items():
        for protocol, recipe in recipes.items():
            if not evalset.scorer.can_use(recipe):
                continue
            values = evalset.evaluate(recipe, protocol, k)
            table[protocol][name] = {
                metric_key(m, k) if m != "users" else m: v for m, v in values.items()
            }
    return table


def choose(validation: MetricTable) -> dict[str, str]:
    """Per protocol, the candidate with the best validation NDCG@10 (ties: recall@10)."""
    ndcg, recall = metric_key("ndcg"), metric_key("recall")

    def best(table: dict[str, dict[str, float]]) -> str:
        return max(table, key=lambda name: (table[name][ndcg], table[name][recall]))

    return {protocol: best(table) for protocol, table in validation.items()}


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("implicit", "numpy", "scipy", "pandas", "pyarrow", "recoffer"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _artifact_arrays(stage: Stage, purchases: Purchases) -> dict[str, np.ndarray[Any, Any]]:
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "user_ids": np.asarray(stage.user_ids, dtype=str),
        "item_ids": np.asarray(stage.item_ids, dtype=str),
        "user_factors": stage.user_factors,
        "item_factors": stage.item_factors,
        "history_indptr": stage.counts.indptr.astype(np.int64),
        "history_indices": stage.counts.indices.astype(np.int32),
        "history_counts": stage.counts.data.astype(np.float32),
        "history_age_days": stage.age_days.data.astype(np.float32),
        "popularity": stage.popularity,
        "trending": stage.trending,
    }
    if stage.ease_b is not None:
        arrays["ease_b"] = stage.ease_b
    if stage.signal_user_factors is not None and stage.signal_item_factors is not None:
        arrays["signal_user_factors"] = stage.signal_user_factors
        arrays["signal_item_factors"] = stage.signal_item_factors
    items = purchases.items.set_index("item_id").reindex(stage.item_ids)
    if items["name"].notna().any():
        arrays["item_names"] = items["name"].fillna("").astype(str).to_numpy(dtype=str)
    if items["category"].notna().any():
        arrays["item_categories"] = items["category"].fillna("").astype(str).to_numpy(dtype=str)
    if items["price"].notna().any():
        arrays["item_prices"] = items["price"].to_numpy(dtype=np.float32)
    return arrays


def _load(config: TrainConfig) -> Purchases:
    """The purchase file, the service's purchase events, or both combined."""
    if config.data is None and config.database_url is None:
        raise DataError("nothing to train on: give a purchase file, a database URL, or both")
    from_file = load_purchases(config.data, config.fmt, config.columns) if config.data else None
    if config.database_url is None:
        assert from_file is not None
        return from_file
    from_database = load_database_purchases(config.database_url)
    source = " + ".join([*([str(config.data)] if config.data else []), "database purchase events"])
    return combine_purchases(from_file, from_database, source)


def _signal_source(config: TrainConfig, store: ModelStore) -> Iterator[pd.DataFrame] | None:
    """The service's views and add-to-carts (streamed), or None.

    The types read are those with a weight here or in the current model, whose refit for the
    quality gate needs the signals it learnt from.
    """
    if config.database_url is None:
        return None
    weights = [config.params.signal_weights]
    path = store.current_path()
    if path is not None:
        # unreadable: the gate treats it as absent
        with contextlib.suppress(ArtifactError, KeyError, TypeError, ValueError):
            weights.append(current_model_params(read_manifest(path)).signal_weights)
    types = [t for k, t in enumerate(SIGNAL_TYPES) if any(w[k] > 0 for w in weights)]
    if not types:
        return None
    return load_database_signals(config.database_url, types)


def run(
    config: TrainConfig,
    purchases: Purchases | None = None,
    progress: Progress = _noop,
    *,
    signal_events: pd.DataFrame | None = None,
) -> TrainResult:
    """Train, evaluate, gate and publish one model version; see the module docstring.

    ``purchases`` and ``signal_events`` (user_id, item_id, timestamp, type) replace what
    ``config`` would load.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()
    store = ModelStore(config.model_dir)
    with trainer_lock(store.root):
        store.cleanup_temporaries()
        if purchases is None:
            purchases = _load(config)
        frame, ids = encode(purchases.frame)
        params = config.params
        source = _signal_source(config, store) if signal_events is None else signal_events
        # every signal read (the gate may need some to refit the current model), and those this
        # model learns from: None when its weights are all 0 or there is none
        read: Signals | None = None
        if source is not None:
            read = encode_signals(source, ids.users, ids.items)
        signals = None if read is None else read.only(params.signal_weights)
        if signals is not None and not len(signals):
            if any(params.signal_weights):
                progress(
                    "weaker signals: no view or add-to-cart of a user and item with purchases; "
                    "purchases only"
                )
            signals = None
        if signals is not None:
            used = signals.summary()
            progress(
                f"weaker signals: {used['view']:,} views, {used['add_to_cart']:,} add-to-carts "
                f"({used['ignored_no_purchases']:,} more of users or items without purchases "
                "left out)"
            )
        timings["load"] = time.perf_counter() - started

        test_split = temporal_split(frame, config.test_days)
        val_split = temporal_split(test_split.train, config.test_days)
        # one decision for every stage: an artifact must have what its recipes use
        with_ease = len(ids.items) <= params.ease_max_items
        candidates = default_candidates(with_ease=with_ease, with_signals=signals is not None)

        t0 = time.perf_counter()
        progress(f"fitting on purchases up to {val_split.cutoff:%Y-%m-%d} (validation stage)")
        val_stage = fit_stage(
            val_split.train,
            val_split.cutoff,
            params,
            ids,
            with_ease=with_ease,
            signals=signals,
        )
        timings["fit_validation"] = time.perf_counter() - t0
        tuning: dict[str, Any] = {"seconds_budget": config.tune_seconds}
        if config.tune_seconds > 0:
            t0 = time.perf_counter()
            progress(f"tuning for up to {config.tune_seconds:g} s on the validation split")
            result = tune(
                val_split.train,
                val_split.test,
                val_split.cutoff,
                params,
                {p: candidates["blend"][p] for p in PROTOCOLS},
                config.tune_seconds,
                ids,
                stage=val_stage,
                max_users=config.eval_users,
                with_ease=with_ease,
                signals=signals,
            )
            params, val_stage, val_eval = result.params, result.stage, result.evalset
            candidates["blend"] = dict(result.recipes)
            tuning.update(
                seconds_used=round(result.seconds, 2),
                evaluations=result.evaluations,
                objective=result.objective,
                variants=result.variants_tried,
            )
            timings["tune"] = time.perf_counter() - t0
        else:
            val_eval = val_stage.evalset(val_split.test, max_users=config.eval_users)
        candidates = {
            name: recipes
            for name, recipes in candidates.items()
            if all(val_stage.scorer().can_use(r) for r in recipes.values())
        }
        validation = evaluate_candidates(val_eval, candidates)
        served = choose(validation)
        progress("chosen on validation: " + ", ".join(f"{p}={n}" for p, n in served.items()))

        t0 = time.perf_counter()
        progress(f"fitting on purchases up to {test_split.cutoff:%Y-%m-%d} (test stage)")
        test_stage = fit_stage(
            test_split.train,
            test_split.cutoff,
            params,
            ids,
            warm_from=val_stage,
            with_ease=with_ease,
            signals=signals,
        )
        del val_stage, val_eval
        test_eval = test_stage.evalset(test_split.test, max_users=config.eval_users)
        metrics = evaluate_candidates(test_eval, candidates)
        timings["fit_test"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        gate = _gate(
            store,
            metrics,
            served,
            test_eval,
            test_stage,
            params,
            (val_split, test_split),
            ids,
            read,
        )
        timings["gate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        progress("fitting on every purchase (serving stage)")
        full_stage = fit_stage(
            frame,
            test_split.end,
            params,
            ids,
            warm_from=test_stage,
            with_ease=with_ease,
            signals=signals,
            signals_until=None if signals is None else signals.newest,
        )
        del test_stage, test_eval
        timings["fit_serving"] = time.perf_counter() - t0

        served_recipes: dict[str, Recipe] = {p: candidates[served[p]][p] for p in PROTOCOLS}
        version = new_version_name()
        promote = gate.passed or config.force
        body = ManifestBody(
            created_at=datetime.now(UTC),
            reference_time=test_split.end.to_pydatetime(),
            data=DataInfo(
                source=purchases.report.source,
                fingerprint=data_fingerprint(frame, ids),
                cleaning=purchases.report.as_dict(),
            ),
            counts=Counts(
                users=len(full_stage.user_ids),
                items=len(full_stage.item_ids),
                interactions=int(full_stage.counts.nnz),
                purchases=len(purchases.frame),
                factors=params.factors,
            ),
            params=params.to_dict(),
            signals=None
            if signals is None
            else SignalsInfo.model_validate(
                {
                    "weights": dict(zip(SIGNAL_TYPES, params.signal_weights, strict=True)),
                    **signals.summary(),
                    "pairs": full_stage.signal_pairs,
                }
            ),
            # the service scales a new user's events so one purchase weighs like this
            fold_in=FoldIn(
                confidence_scale=float(
                    np.median(als_weights(full_stage.counts, full_stage.age_days, params).data)
                )
            ),
            recipes=served_recipes,
            served=served,
            candidates=candidates,
            metrics=Figures(test=metrics, validation=validation),
            split=SplitInfo(
                test_days=config.test_days,
                validation_cutoff=val_split.cutoff.to_pydatetime(),
                test_cutoff=test_split.cutoff.to_pydatetime(),
                end=test_split.end.to_pydatetime(),
            ),
            tuning=tuning,
            gate=GateInfo.model_validate(
                dict(gate.to_dict(), forced=config.force and not gate.passed)
            ),
            libraries=_library_versions(),
        )
        arrays = _artifact_arrays(full_stage, purchases)
        path = write_artifact(store.root, version, arrays, body)
        if promote:
            store.promote(version)
        timings["total"] = time.perf_counter() - started
        return TrainResult(
            version=version,
            promoted=promote,
            served=served,
            metrics=metrics,
            validation=validation,
            gate=gate,
            report=purchases.report,
            path=path,
            timings={k: round(v, 3) for k, v in timings.items()},
            manifest=read_manifest(path),
        )


def _gate(
    store: ModelStore,
    metrics: MetricTable,
    served: dict[str, str],
    evalset: EvalSet,
    stage: Stage,
    params: ModelParams,
    splits: tuple[Split, Split],
    ids: IdMaps,
    signals: Signals | None,
) -> GateDecision:
    key = metric_key("ndcg")
    new = {p: metrics[p][served[p]][key] for p in PROTOCOLS}
    popularity = {p: metrics[p]["popularity"][key] for p in PROTOCOLS}
    current = current_artifact(store)
    if current is None:
        return decide(new, popularity, None, method="first", current_version=None)
    try:
        learnt = current_model_params(current.manifest).signal_weights
    except (KeyError, TypeError, ValueError) as exc:
        log.warning(
            "current_params_unreadable", extra={"version": current.version, "error": str(exc)}
        )
        return decide(
            new, popularity, None, method="current_unreadable", current_version=current.version
        )
    scores, method = rescore_current(
        current,
        evalset=evalset,
        stage=stage,
        params=params,
        validation=splits[0],
        test=splits[1],
        ids=ids,
        protocols=PROTOCOLS,
        signals=signals,
    )
    decision = decide(new, popularity, scores, method=method, current_version=current.version)
    if not decision.passed and any(learnt) and stage.signal_user_factors is None:
        decision.reasons.append(
            "this run learnt from no view or add-to-cart (weights 0?), the current model did"
        )
    return decision
