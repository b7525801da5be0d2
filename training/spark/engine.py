"""One training run on the Spark engine: the pandas engine's flow (``training.pipeline``) with
the purchases read, cleaned and aggregated in Spark.

load + clean (Spark) -> codes (Spark) -> three temporal stages, each aggregated in Spark
(pairs, popularity, trending, ALS weights) and fitted (MLlib on the cluster, or implicit on the
driver) -> evaluation on a seeded sample of test users, choice, gate (the current model refitted
with its own engine) -> the same artifact as the pandas engine, with ``EngineInfo``.

Left out of this engine, each with a one-line notice: EASE (an items x items inverse on one
machine), the weaker signals (views and add-to-carts) and tuning (it refits every variant from
the purchase lines on the driver).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from service.artifact import Manifest, ModelStore, new_version_name, read_manifest
from service.artifact.manifest import DataInfo, EngineInfo, Figures, GateInfo, SplitInfo
from service.errors import DataError, SplitError
from training.data.formats import CleaningReport
from training.encode import IdMaps
from training.evaluate import DEFAULT_EVAL_USERS, EvalSet, Split
from training.gate import GateDecision, gate_new_model
from training.lock import trainer_lock
from training.models import Candidates, ModelParams, Stage, _warm_init, default_candidates, fit_ease
from training.publish import library_versions, manifest_body, publish, stage_arrays
from training.spark import aggregate, fit
from training.spark.fit import AUTO_MAX_PAIRS
from training.spark.session import (
    DEFAULT_MASTER,
    POSTGRES_JDBC_JAR,
    check_engine,
    start_session,
    to_pandas,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from training.pipeline import TrainConfig, TrainResult

Progress = Callable[[str], None]

LEFT_OUT = {
    "ease": "an items x items matrix inverted on one machine does not scale out",
    "als_signals": "views and add-to-carts are read by the pandas engine only",
    "tuning": "tuning refits every variant from the purchase lines on one machine",
}


@dataclass(frozen=True)
class SparkOptions:
    """How the Spark engine runs: the master URL, the fit and the ``auto`` threshold."""

    master: str = DEFAULT_MASTER
    fit: str = "auto"  # auto | mllib | implicit
    auto_max_pairs: int = AUTO_MAX_PAIRS
    shuffle_partitions: int | None = None
    driver_memory: str | None = None

    def __post_init__(self) -> None:
        if self.fit not in ("auto", "mllib", "implicit"):
            raise DataError(f"--spark-fit must be auto, mllib or implicit, not {self.fit!r}")
        if self.auto_max_pairs < 0:
            raise DataError("--spark-auto-max-pairs must be >= 0")


@dataclass
class _Run:
    """What every stage of one run shares."""

    spark: SparkSession
    coded: DataFrame
    ids: IdMaps
    params: ModelParams
    options: SparkOptions
    fit_used: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def train(config: TrainConfig, options: SparkOptions, progress: Progress) -> TrainResult:
    """Train, evaluate, gate and publish one version with the Spark engine."""
    from training.pipeline import TrainResult, choose, evaluate_candidates

    version_of_spark = check_engine()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    store = ModelStore(config.model_dir)
    with trainer_lock(store.root):
        store.cleanup_temporaries()
        spark = start_session(
            options.master,
            shuffle_partitions=options.shuffle_partitions,
            driver_memory=options.driver_memory,
            jars=[POSTGRES_JDBC_JAR] if config.database_url else None,
        )
        for component, reason in LEFT_OUT.items():
            progress(f"spark engine: {component} left out ({reason})")
        t0 = time.perf_counter()
        purchases = _load(spark, config)
        timings["load"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        coded, ids = aggregate.encode(purchases.frame)
        from pyspark import StorageLevel

        coded = coded.persist(StorageLevel.MEMORY_AND_DISK)
        fingerprint = _fingerprint(coded, ids)
        purchases.frame.unpersist()
        timings["encode"] = time.perf_counter() - t0
        run = _Run(spark, coded, ids, config.params, options)
        report = purchases.report
        end = pd.Timestamp(report.end)
        test_cut = _cutoff(end, config.test_days, report)
        # as ``temporal_split`` of the test split's training part: its newest purchase
        val_end = _newest(coded, test_cut)
        val_cut = _cutoff(val_end, config.test_days, report, end=end)
        candidates = default_candidates(with_ease=False, with_signals=False)
        max_users = config.eval_users if config.eval_users is not None else DEFAULT_EVAL_USERS

        progress(f"fitting on purchases up to {val_cut:%Y-%m-%d} (validation stage)")
        with _timed(timings, "fit_validation"):
            val_stage = fit_spark_stage(run, val_cut)
            val_test = _test_pairs(coded, val_cut, val_end)
            val_eval = val_stage.evalset(val_test, max_users=max_users)
            scorer = val_stage.scorer()
            candidates = {
                name: recipes
                for name, recipes in candidates.items()
                if all(scorer.can_use(r) for r in recipes.values())
            }
            validation = evaluate_candidates(val_eval, candidates)
        served = choose(validation)
        progress("chosen on validation: " + ", ".join(f"{p}={n}" for p, n in served.items()))
        del val_eval
        progress(f"fitting on purchases up to {test_cut:%Y-%m-%d} (test stage)")
        with _timed(timings, "fit_test"):
            test_stage = fit_spark_stage(run, test_cut, warm_from=val_stage)
            test_pairs = _test_pairs(coded, test_cut, end)
            test_eval = test_stage.evalset(test_pairs, max_users=max_users)
            metrics = evaluate_candidates(test_eval, candidates)
        engine = EngineInfo(
            name="spark",
            fit=run.fit_used,
            version=version_of_spark,
            master=options.master,
            left_out=dict(LEFT_OUT),
        )
        with _timed(timings, "gate"):
            gate = _gate(
                store,
                run,
                served,
                candidates,
                test_eval,
                test_stage,
                engine,
                (val_cut, val_end, test_cut, end),
                val_test,
                test_pairs,
            )
        if gate.fallback:
            served = {**served, **gate.fallback}
        progress("fitting on every purchase (serving stage)")
        with _timed(timings, "fit_serving"):
            serving = fit_spark_stage(run, end, warm_from=test_stage)
        del test_stage, test_eval, val_stage
        version = new_version_name()
        promote = gate.passed or config.force
        body = manifest_body(
            serving,
            config.params,
            data=DataInfo(source=report.source, fingerprint=fingerprint, cleaning=report.as_dict()),
            purchase_lines=report.rows_kept,
            signals=None,
            served=served,
            candidates=candidates,
            metrics=Figures(test=metrics, validation=validation),
            split=SplitInfo(
                test_days=config.test_days,
                validation_cutoff=val_cut.to_pydatetime(),
                test_cutoff=test_cut.to_pydatetime(),
                end=end.to_pydatetime(),
            ),
            tuning={"seconds_budget": 0.0, "left_out": LEFT_OUT["tuning"]},
            gate=GateInfo.model_validate(
                dict(gate.to_dict(), forced=config.force and not gate.passed)
            ),
            engine=engine,
            libraries={**library_versions(), "pyspark": version_of_spark},
        )
        arrays = stage_arrays(serving, purchases.items)
        path = publish(store, version, arrays, body, promote=promote)
        manifest = read_manifest(path)
        pruned = store.prune(config.keep_versions)
        coded.unpersist()
        timings.update({f"spark_{k}": v for k, v in run.timings.items()})
        timings["total"] = time.perf_counter() - started
        return TrainResult(
            version=version,
            promoted=promote,
            served=served,
            metrics=metrics,
            validation=validation,
            gate=gate,
            report=report,
            path=path,
            timings={k: round(v, 3) for k, v in timings.items()},
            manifest=manifest,
            pruned=pruned,
        )


class _timed:
    def __init__(self, timings: dict[str, float], key: str) -> None:
        self.timings, self.key = timings, key

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self.timings[self.key] = time.perf_counter() - self.t0


def _load(spark: SparkSession, config: TrainConfig) -> Any:
    """The purchase file or the service's purchase events (not both: one source a run)."""
    from training.spark.load import read_purchases

    if config.data is None and config.database_url is None:
        raise DataError("nothing to train on: give a purchase file, a database URL, or both")
    if config.data is not None and config.database_url is not None:
        raise DataError("the spark engine trains on one source: --data or --database-url, not both")
    if config.data is not None:
        purchases = read_purchases(
            spark, data_uri(config.data), config.fmt, config.columns, config.read_options
        )
        return purchases
    from training.spark.database import read_database_purchases

    return read_database_purchases(spark, config.database_url or "")


def data_uri(data: Any) -> str:
    """``--data`` as the URI it was given: a ``pathlib.Path`` (what the option parses to)
    folds ``s3a://bucket/x`` into ``s3a:/bucket/x``; the scheme's two slashes are put back
    (three for ``file:``)."""
    text = str(data)
    found = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)", text)
    if found is None:
        return text
    scheme, rest = found.group(1), text[found.end() :]
    return f"{scheme}:///{rest}" if scheme == "file" else f"{scheme}://{rest}"


def _cutoff(
    moment: pd.Timestamp, days: float, report: CleaningReport, *, end: pd.Timestamp | None = None
) -> pd.Timestamp:
    """``moment`` less ``days``; SplitError (the pandas path's words) when nothing is left
    before it."""
    if days <= 0:
        raise SplitError(f"test window must be positive, got {days} days")
    cut = moment - pd.Timedelta(days=days)
    start = pd.Timestamp(report.start)
    if cut < start:
        last = end if end is not None else moment
        raise SplitError(
            f"a {days:g}-day test window over data from {start:%Y-%m-%d} to {last:%Y-%m-%d} "
            f"leaves no training rows; choose fewer test days"
        )
    return cut


def _newest(coded: DataFrame, until: pd.Timestamp) -> pd.Timestamp:
    """The newest purchase time up to ``until``."""
    from pyspark.sql import functions as F

    row = (
        coded.where(F.unix_micros("timestamp") <= F.lit(aggregate.micros(until)))
        .agg(F.max(F.unix_micros("timestamp")))
        .first()
    )
    assert row is not None
    return pd.Timestamp(int(row[0]) * 1000)


def _test_pairs(coded: DataFrame, after: pd.Timestamp, until: pd.Timestamp) -> pd.DataFrame:
    """The distinct (user, item) codes bought in (after, until]: a split's truth."""
    from pyspark.sql import functions as F

    window = coded.where(
        (F.unix_micros("timestamp") > F.lit(aggregate.micros(after)))
        & (F.unix_micros("timestamp") <= F.lit(aggregate.micros(until)))
    )
    frame = to_pandas(window.select("user", "item").distinct())
    if frame.empty:
        raise SplitError(
            f"no purchase between {after:%Y-%m-%d} and {until:%Y-%m-%d}; choose more test days"
        )
    return pd.DataFrame(
        {
            "user": frame["user"].to_numpy(dtype=np.int64),
            "item": frame["item"].to_numpy(dtype=np.int64),
        }
    )


def fit_spark_stage(
    run: _Run,
    reference_time: pd.Timestamp,
    *,
    params: ModelParams | None = None,
    warm_from: Stage | None = None,
    fit_with: str | None = None,
    with_ease: bool = False,
) -> Stage:
    """A ``Stage`` of the purchases up to ``reference_time``: aggregated in Spark, fitted
    with ``fit_with`` (default: the run's choice) and, when ``with_ease`` (a pandas-built
    model refitted the pandas way), EASE on the driver."""
    from pyspark import StorageLevel

    params = run.params if params is None else params
    t0 = time.perf_counter()
    stage_pairs = aggregate.pairs(run.coded, reference_time, params).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    items = aggregate.item_counts(stage_pairs, params.trending_days)
    history = aggregate.collect_history(stage_pairs, items)
    _add(run.timings, "aggregate", time.perf_counter() - t0)
    how = fit_with or fit.chosen_fit(run.options.fit, history.pairs, run.options.auto_max_pairs)
    if not run.fit_used and fit_with is None:
        run.fit_used = how
    t0 = time.perf_counter()
    if how == "mllib":
        weights = aggregate.als_weights(stage_pairs, params)
        user_factors, item_factors = fit.fit_mllib(weights, history, params)
    else:
        init = None
        if warm_from is not None:
            init = _warm_init(
                warm_from,
                warm_from.user_factors,
                warm_from.item_factors,
                history.user_codes,
                history.item_codes,
                params,
            )
        user_factors, item_factors = fit.fit_implicit(history, params, init)
    _add(run.timings, f"fit_{how}", time.perf_counter() - t0)
    stage_pairs.unpersist()
    ease_b = fit_ease(history.counts, params.ease_lambda) if with_ease else None
    return Stage(
        user_codes=history.user_codes,
        item_codes=history.item_codes,
        user_ids=run.ids.users[history.user_codes],
        item_ids=run.ids.items[history.item_codes],
        counts=history.counts,
        age_days=history.age_days,
        reference_time=pd.Timestamp(reference_time),
        user_factors=user_factors,
        item_factors=item_factors,
        popularity=history.popularity,
        trending=history.trending,
        ease_b=ease_b,
        timings={"als": time.perf_counter() - t0},
        strength=history.strength,
    )


def _add(timings: dict[str, float], key: str, seconds: float) -> None:
    timings[key] = timings.get(key, 0.0) + seconds


def _gate(
    store: ModelStore,
    run: _Run,
    served: dict[str, str],
    candidates: Candidates,
    evalset: EvalSet,
    stage: Stage,
    engine: EngineInfo,
    cuts: tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp, pd.Timestamp],
    val_test: pd.DataFrame,
    test_pairs: pd.DataFrame,
) -> GateDecision:
    """``gate_new_model`` with a refit of the current model by its own engine; ``cuts``:
    the validation cut-off and end, the test cut-off and end."""
    val_cut, val_end, test_cut, end = cuts

    def refit(current: Manifest, params: ModelParams) -> Stage:
        own = current.engine
        how = "mllib" if own.fit == "mllib" else "implicit"
        # a pandas-built model is refitted the pandas way: implicit, and EASE when its
        # recipes use it and the catalogue allows it (``ModelParams.ease_max_items``)
        uses_ease = any(r.weight("ease") for r in current.recipes.values())
        with_ease = (
            own.name == "pandas" and uses_ease and len(run.ids.items) <= params.ease_max_items
        )
        first = fit_spark_stage(run, val_cut, params=params, fit_with=how, with_ease=with_ease)
        return fit_spark_stage(
            run, test_cut, params=params, warm_from=first, fit_with=how, with_ease=with_ease
        )

    empty = pd.DataFrame({"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64)})
    # the lines stay in Spark: the splits carry their cut-offs and truths, and ``refit``
    # aggregates from the cut-offs
    validation = Split(train=empty, test=val_test, cutoff=val_cut, end=val_end)
    test = Split(train=empty, test=test_pairs, cutoff=test_cut, end=end)
    return gate_new_model(
        store,
        served=served,
        candidates=candidates,
        evalset=evalset,
        stage=stage,
        params=run.params,
        validation=validation,
        test=test,
        ids=run.ids,
        signals=None,
        engine=engine,
        refit=refit,
    )


def _fingerprint(coded: DataFrame, ids: IdMaps) -> str:
    """sha256 of the cleaned purchases, computed in Spark: the order-independent sum of each
    line's 64-bit hash (user, item, order, time), the line count and the id lists. Another
    value than the pandas engine's ``data_fingerprint`` for the same data (documented)."""
    from pyspark.sql import functions as F

    line = F.xxhash64("user", "item", "order_id", F.unix_micros("timestamp"))
    row = coded.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(line.cast("decimal(38,0)")).alias("sum"),
    ).first()
    assert row is not None
    digest = hashlib.sha256()
    digest.update(f"{row['n']}:{row['sum']}".encode())
    for index in (ids.users, ids.items):
        digest.update("\x1f".join(map(str, index)).encode())
    return digest.hexdigest()
